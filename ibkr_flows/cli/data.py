"""`ibkr data ...`: talk to TWS / IB Gateway (connect, ingest); the catalog of stored bars is in `data_catalog`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from ibkr_flows.cli.data_catalog import export_command, history_command, ls_command, quarantine_command, show_command
from ibkr_flows.cli.json_output import strict_json
from ibkr_flows.cli.times import as_utc

data_app = typer.Typer(help="Market data: check the connection to TWS / IB Gateway, ingest historical bars into "
                       "Delta tables, and know what is stored (list, show, export, quarantine review, history).",
                       no_args_is_help=True)


@data_app.command("connect")
def connect(
    host: Annotated[str | None, typer.Option(help="TWS host [env IBKR_HOST, default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="API port [env IBKR_PORT, default 7497]")] = None,
    client_id: Annotated[int | None, typer.Option(help="API client id [env IBKR_CLIENT_ID, default 10]")] = None,
    timeout: Annotated[float | None, typer.Option(help="ib_async connect timeout, seconds")] = None,
    retry_client_id: Annotated[bool, typer.Option(
        "--retry-client-id", help="If the client id is taken, continue with the next free one (warns).")] = False,
    data_check: Annotated[bool, typer.Option(
        "--data-check/--no-data-check", help="Finish with one tiny historical request (proves the data farm).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnosis as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show ib_async's own log lines.")] = False,
) -> None:
    """Diagnose the connection to TWS / IB Gateway and say how to fix it.

    Walks the layers one by one (TCP, API handshake, session start, read-only client, historical data farm) and
    stops at the first that fails, naming the cause and the fix. Exit codes: 0 healthy or warning; 10 nothing
    listening, 11 wrong port, 12 host unreachable, 13 not a TWS, 14 handshake silent (accept dialog),
    15 connection rejected (trusted IPs / localhost only), 16 API not ready (not logged in), 17 client id in use,
    18 IB connectivity lost, 19 data farm down, 20 no market data permissions, 21 connection dropped (closed
    during the handshake or the session).
    """
    from ibkr_flows.doctor.preflight import diagnose

    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL)
    from ibkr_flows.settings import IBKRSettings  # pydantic-settings costs ~0.1 s: only commands that connect pay it

    settings = IBKRSettings.with_overrides(host=host, port=port, client_id=client_id, connect_timeout=timeout)
    diagnosis = diagnose(settings, retry_client_id=retry_client_id, check_data=data_check)
    if as_json:
        typer.echo(strict_json(diagnosis.to_json()))
    else:
        from ibkr_flows.cli.render import render_diagnosis

        render_diagnosis(diagnosis, Console())
    raise typer.Exit(diagnosis.exit_code)


@data_app.command("ingest")
def ingest(
    symbols: Annotated[list[str], typer.Argument(help="Ticker symbols, e.g. AAPL MSFT SPY.")],
    bar_size: Annotated[str, typer.Option(help="IB bar size: '1 min', '5 mins', '1 hour', '1 day', ...")] = "1 min",
    what_to_show: Annotated[str, typer.Option(help="TRADES, MIDPOINT, BID_ASK, ADJUSTED_LAST")] = "TRADES",
    rth: Annotated[bool, typer.Option("--rth/--eth", help="Regular trading hours only, or extended hours.")] = True,
    start: Annotated[datetime | None, typer.Option(help="Start (UTC) for series never stored before.")] = None,
    end: Annotated[datetime | None, typer.Option(help="End (UTC, exclusive); default now.")] = None,
    lookback_days: Annotated[int, typer.Option(help="Default start: this many days before end.")] = 7,
    quality_engine: Annotated[str, typer.Option(help="great_expectations, or polars (the same rules, faster).")
                              ] = "great_expectations",
    data_dir: Annotated[str | None, typer.Option(help="Where the Delta tables live [env IBKR_DATA_DIR, ./data]")
                        ] = None,
    host: Annotated[str | None, typer.Option(help="TWS host [env IBKR_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="API port [env IBKR_PORT]")] = None,
    client_id: Annotated[int | None, typer.Option(help="API client id [env IBKR_CLIENT_ID]")] = None,
) -> None:
    """Fetch historical bars into the Delta bars table, incrementally (the `ingest-bars` Prefect flow).

    Each series resumes from its last stored bar; new series start at --start (or --lookback-days ago).
    Requests are paced by IB's rules, bad bars go to the quarantine table, and the run ends with a per-symbol
    report. ADJUSTED_LAST is fetched whole up to now on every run and replaces the stored series (IB re-adjusts
    it as a whole and serves it with no end date). Exit code 0 when every symbol was stored, 1 when some failed
    (each with IB's reason and the fix), 2 for bad arguments, 5 when the temporary Prefect server did not start,
    and the doctor's code when TWS is unusable.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.ingest import ingest_flow
    from ibkr_flows.cli.errors import EXIT_BAD_INPUT, describe, exit_on_error, prefect_api
    from ibkr_flows.doctor.diagnosis import TWSConnectionError
    from ibkr_flows.ingest.errors import IngestIncompleteError
    from ibkr_flows.ingest.report import report_rows
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import TWSEndpoint
    from tasks.ingest import progress_listeners

    console = Console()
    with exit_on_error(console):  # the flow validates too; building the request here answers before Prefect starts
        request = IngestRequest(
            symbols=tuple(symbols), bar_size=bar_size, what_to_show=what_to_show, use_rth=rth,
            start=start and as_utc(start), end=end and as_utc(end), lookback_days=lookback_days,
            quality_engine=quality_engine)
        tws = TWSEndpoint(host=host, port=port, client_id=client_id)
    with prefect_api(Console(stderr=True)), Progress(
            TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
            TimeElapsedColumn(), console=console, transient=True) as bar:
        job = bar.add_task("ingest", total=None)
        progress_listeners.append(lambda done, planned: bar.update(job, completed=done, total=planned))
        try:
            state = ingest_flow(request=request, tws=tws, data_dir=data_dir, return_state=True)
        finally:
            progress_listeners.clear()
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, TWSConnectionError):
        from ibkr_flows.cli.render import render_diagnosis

        render_diagnosis(outcome.diagnosis, console)
        raise typer.Exit(outcome.diagnosis.exit_code)
    if isinstance(outcome, ValueError):
        console.print(f"[red]error:[/red] {describe(outcome)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    report = outcome.report if isinstance(outcome, IngestIncompleteError) else outcome
    if isinstance(report, BaseException):
        raise report
    _print_report(console, report_rows(report))
    for failed in report.failed:
        console.print(f"[red]{failed.symbol} failed[/red] ({failed.error_type}): {escape(failed.error or '')}",
                      soft_wrap=True)
    raise typer.Exit(1 if report.failed else 0)


def _print_report(console: Console, rows: list[dict[str, object]]) -> None:
    from rich.table import Table

    table = Table(*rows[0].keys()) if rows else Table()
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


data_app.command("ls")(ls_command)
data_app.command("show")(show_command)
data_app.command("export")(export_command)
data_app.command("quarantine")(quarantine_command)
data_app.command("history")(history_command)
