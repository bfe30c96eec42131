"""`ibkr data ingest`: the `ingest-bars` flow when a Prefect server is configured or running, else the same steps
without Prefect (said on stderr), so a small ad-hoc ingest takes seconds, not a temporary server's start-up."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ibkr_flows.cli.json_output import strict_json
from ibkr_flows.cli.times import as_utc

if TYPE_CHECKING:
    from ibkr_flows.doctor.diagnosis import Diagnosis
    from ibkr_flows.ingest.engine import IngestReport
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import TWSEndpoint
    from ibkr_flows.stack.discovery import PrefectServer

INGEST_LOGGER = "ibkr.ingest"
"""The ingestion's own warnings (pacing waits, retries) are shown above the progress bar, or kept for --json."""


def ingest_command(
    symbols: Annotated[list[str], typer.Argument(
        help="Instrument ids: AAPL (a US stock), STK:SAP@IBIS:EUR, FUT:ES@CME:202503, CASH:EUR.USD@IDEALPRO, "
             "IND:SPX@CBOE, CONID:265598.")],
    bar_size: Annotated[str, typer.Option(help="IB bar size: '1 min', '5 mins', '1 hour', '1 day', ...")] = "1 min",
    what_to_show: Annotated[str | None, typer.Option(
        help="TRADES, MIDPOINT, BID, ASK, BID_ASK, ADJUSTED_LAST [default: MIDPOINT for CASH pairs, else TRADES]")
    ] = None,
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
    prefect: Annotated[bool | None, typer.Option(
        "--prefect/--no-prefect",
        help="Run as the `ingest-bars` Prefect flow (--prefect: in the configured server, or a temporary one), or "
             "the same steps without Prefect. Default: the flow when PREFECT_API_URL (environment or profile) is "
             "set or an `ibkr up` server answers, else without Prefect.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as strict JSON (no progress bar).")
                       ] = False,
) -> None:
    """Fetch historical bars into the Delta bars table, incrementally.

    Each series resumes from its last stored bar; new series start at --start (or --lookback-days ago). Ids are
    checked before connecting; TWS then resolves each to one contract (an ambiguous id fails with its candidates),
    recorded in the instruments table (`ibkr data instruments`).
    Requests are paced by IB's rules, bad bars go to the quarantine table, and the run ends with a per-symbol
    report; a terminal shows progress (requests done of planned, pacing waits, time left). ADJUSTED_LAST is
    fetched whole up to now on every run and replaces the stored series (IB re-adjusts it as a whole and serves it
    with no end date). Exit code 0 when every symbol was stored, 1 when some failed (each with IB's reason and the
    fix), 2 for bad arguments, 5 when a temporary Prefect server did not start, and the doctor's code when TWS is
    unusable.
    """
    from ibkr_flows.cli.errors import exit_on_error
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import TWSEndpoint
    from ibkr_flows.stack.discovery import configured_server

    console = Console(stderr=as_json)
    with exit_on_error(console):  # answers bad arguments before connecting or starting anything
        request = IngestRequest(
            symbols=tuple(symbols), bar_size=bar_size, what_to_show=what_to_show, use_rth=rth,
            start=start and as_utc(start), end=end and as_utc(end), lookback_days=lookback_days,
            quality_engine=quality_engine)
        tws = TWSEndpoint(host=host, port=port, client_id=client_id)
    server = configured_server() if prefect is not False else None
    use_prefect = prefect is True or server is not None
    notes = Console(stderr=True, soft_wrap=True)  # one line per note: readable in logs and by grep
    if server is not None:
        os.environ.setdefault("PREFECT_API_URL", server.api_url)  # before Prefect is imported, so it is used
        notes.print(f"recording the run in the Prefect server at {server.api_url} (from {server.source})", style="dim")
    elif not use_prefect and prefect is None:
        notes.print("no Prefect server configured or running: ingesting without Prefect (same steps, no flow run "
                    "recorded). `ibkr up` or PREFECT_API_URL records runs; --prefect starts a temporary server.",
                    style="dim")
    warnings: list[str] = []
    flow_run_id = None
    with ingest_progress(console, enabled=not as_json, warnings=warnings) as on_progress:
        if use_prefect:
            from ibkr_flows.cli.errors import prefect_api

            with prefect_api(notes):
                outcome, flow_run_id = run_ingest_flow(request, tws, data_dir, on_progress)
        else:
            outcome = _run_plain(request, tws, data_dir, on_progress)
    _finish(outcome, console, as_json, mode="prefect" if use_prefect else "local", server=server,
            flow_run_id=flow_run_id, warnings=warnings)


def run_ingest_flow(request: IngestRequest, tws: TWSEndpoint, data_dir: str | None, on_progress: Any
                    ) -> tuple[object, str | None]:
    """The `ingest-bars` flow with live progress; returns its report (also when symbols failed), the error that
    ended it, or the doctor's verdict, and the flow run's id."""
    from flows.ingest import ingest_flow
    from ibkr_flows.ingest.errors import IngestIncompleteError
    from tasks.ingest import progress_listeners

    progress_listeners.append(on_progress)
    try:
        state = ingest_flow(request=request, tws=tws, data_dir=data_dir, return_state=True)
    finally:
        progress_listeners.clear()
    outcome = state.result(raise_on_failure=False)
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    return (outcome.report if isinstance(outcome, IngestIncompleteError) else outcome), flow_run_id


def _run_plain(request: IngestRequest, tws: TWSEndpoint, data_dir: str | None, on_progress: Any) -> object:
    """The flow's steps as plain calls: the preflight's verdict, then the ingestion."""
    import asyncio

    from ibkr_flows.doctor.preflight import diagnose
    from ibkr_flows.ingest.engine import ingest_async
    from storage.location import TableLocation

    settings = tws.settings()
    # a slow TWS is no reason to skip a run, nor is the configured client id held by another process (ingestion
    # leases a free one: ingest.client_leases)
    diagnosis = diagnose(settings, retry_client_id=True, check_data=False, patient=True)
    if not diagnosis.ok:
        return diagnosis
    return asyncio.run(ingest_async(request, TableLocation.at(data_dir), settings, progress=on_progress))


@contextmanager
def ingest_progress(console: Console, *, enabled: bool, warnings: list[str]) -> Iterator[Any]:
    """Requests done of planned with the time left, and the ingestion's warnings (pacing waits, retries) above
    the bar; with --json nothing is drawn and the warnings go into the report."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    logger = logging.getLogger(INGEST_LOGGER)
    bar = Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.description}"),
                   console=console, transient=True, disable=not enabled)
    job = bar.add_task("connecting to TWS, planning requests…", total=None)

    class ShowWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            warnings.append(message)
            if enabled:
                bar.console.print(f"[yellow]{record.levelname.lower()}:[/yellow] {message}", soft_wrap=True)

    handler = ShowWarnings(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with bar:
            yield lambda done, planned: bar.update(job, completed=done, total=planned, description="")
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _finish(outcome: object, console: Console, as_json: bool, *, mode: str, server: PrefectServer | None,
            flow_run_id: str | None, warnings: list[str]) -> None:
    from ibkr_flows.cli.errors import EXIT_BAD_INPUT, describe
    from ibkr_flows.doctor.diagnosis import Diagnosis, TWSConnectionError
    from ibkr_flows.ingest.engine import IngestReport

    if isinstance(outcome, TWSConnectionError):
        outcome = outcome.diagnosis
    if isinstance(outcome, Diagnosis):
        _print_diagnosis(outcome, console, as_json)
        raise typer.Exit(outcome.exit_code)
    if isinstance(outcome, ValueError):
        if as_json:
            typer.echo(strict_json({"ok": False, "exit_code": EXIT_BAD_INPUT, "error": describe(outcome)}))
        else:
            console.print(f"[red]error:[/red] {describe(outcome)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    if not isinstance(outcome, IngestReport):
        raise outcome if isinstance(outcome, BaseException) else TypeError(f"unexpected outcome {outcome!r}")
    exit_code = 1 if outcome.failed else 0
    if as_json:
        typer.echo(strict_json(report_json(outcome, mode=mode, server=server, flow_run_id=flow_run_id,
                                           warnings=warnings) | {"exit_code": exit_code}))
    else:
        _print_report(outcome, console)
        if flow_run_id:
            console.print(f"flow run {flow_run_id}", style="dim")
    raise typer.Exit(exit_code)


def report_json(report: IngestReport, *, mode: str, server: PrefectServer | None, flow_run_id: str | None,
                warnings: list[str]) -> dict[str, Any]:
    """The shape of `ibkr data ingest --json` (documented in the README): one object, timestamps ISO 8601 UTC."""
    r = report.request
    return {
        "ok": not report.failed,
        "mode": mode,
        "prefect_api_url": server.api_url if server else None,
        "flow_run_id": flow_run_id,
        "request": {"symbols": list(r.symbols), "bar_size": r.bar_size, "what_to_show": r.what_to_show,
                    "use_rth": r.use_rth},
        "started_at": report.started_at,
        "elapsed_s": round(report.elapsed_s, 3),
        "requests_sent": report.requests_sent,
        "pacing_wait_s": round(report.pacing_wait_s, 3),
        "reconnects": report.reconnects,
        "symbols": [
            {"symbol": s.symbol, "what_to_show": s.what_to_show, "status": s.status, "requests": s.chunks_fetched,
             "empty_ranges": s.chunks_empty,
             "rows_fetched": s.rows_fetched, "rows_inserted": s.rows_inserted, "rows_updated": s.rows_updated,
             "rows_quarantined": s.rows_quarantined, "gap_bars": s.gap_bars,
             "gap_sessions": [{"session": g.session.isoformat(), "expected": g.expected, "received": g.received}
                              for g in s.gaps],
             "watermark_before": s.watermark_before, "watermark_after": s.watermark_after,
             "table_version": s.table_version, "error": s.error, "error_type": s.error_type}
            for s in report.symbols
        ],
        "corporate_actions": report.corporate_actions,
        "quality_warnings": report.quality_warnings,
        "warnings": warnings,
    }


def _print_diagnosis(diagnosis: Diagnosis, console: Console, as_json: bool) -> None:
    if as_json:
        typer.echo(strict_json({"ok": False, "exit_code": diagnosis.exit_code, "diagnosis": diagnosis.to_json()}))
        return
    from ibkr_flows.cli.render import render_diagnosis

    render_diagnosis(diagnosis, console)


def _print_report(report: IngestReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ibkr_flows.ingest.report import report_rows

    rows = report_rows(report)
    table = Table(*rows[0].keys()) if rows else Table()
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"{report.requests_sent} requests in {report.elapsed_s:.1f} s (pacing waits "
                  f"{report.pacing_wait_s:.1f} s)", style="dim")
    for action in report.corporate_actions:
        console.print(f"[cyan]adjusted:[/cyan] {escape(action)}", soft_wrap=True)
    for failed in report.failed:
        console.print(f"[red]{failed.symbol} failed[/red] ({failed.error_type}): {escape(failed.error or '')}",
                      soft_wrap=True)
