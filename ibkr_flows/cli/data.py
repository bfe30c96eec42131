"""`ibkr data ...`: talk to TWS / IB Gateway (`connect`); `ingest` is in `cli.ingest`, the catalog of stored bars in
`data_catalog`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from ibkr_flows.cli.data_catalog import (
    export_command,
    history_command,
    instruments_command,
    ls_command,
    quarantine_command,
    show_command,
)
from ibkr_flows.cli.data_roll import roll_command
from ibkr_flows.cli.ingest import ingest_command
from ibkr_flows.cli.json_output import strict_json

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
    patient: Annotated[bool, typer.Option(
        "--patient", help="Wait the configured timeouts (IBKR_PROBE_TIMEOUT, --timeout, IBKR_DATA_TIMEOUT) instead "
                          "of giving the verdict within 1.5 s: measures a slow TWS's latency.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnosis as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show ib_async's own log lines.")] = False,
) -> None:
    """Diagnose the connection to TWS / IB Gateway and say how to fix it.

    Walks the layers one by one (TCP, API handshake, session start, read-only client, historical data farm) and
    stops at the first that fails, naming the cause and the fix. Exit codes: 0 healthy or warning; 10 nothing
    listening, 11 wrong port, 12 host unreachable, 13 not a TWS, 14 handshake silent (accept dialog),
    15 connection rejected (trusted IPs / localhost only), 16 API not ready (not logged in), 17 client id in use,
    18 IB connectivity lost, 19 data farm down, 20 no market data permissions, 21 connection dropped (closed
    during the handshake or the session), 22 slow (TWS answers, too late to finish within 1.5 s: try --patient).
    """
    from ibkr_flows.doctor.preflight import diagnose

    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL)
    from ibkr_flows.settings import IBKRSettings  # pydantic-settings costs ~0.1 s: only commands that connect pay it

    settings = IBKRSettings.with_overrides(host=host, port=port, client_id=client_id, connect_timeout=timeout)
    diagnosis = diagnose(settings, retry_client_id=retry_client_id, check_data=data_check, patient=patient)
    if as_json:
        typer.echo(strict_json(diagnosis.to_json()))
    else:
        from ibkr_flows.cli.render import render_diagnosis

        render_diagnosis(diagnosis, Console())
    raise typer.Exit(diagnosis.exit_code)


data_app.command("ingest")(ingest_command)
data_app.command("ls")(ls_command)
data_app.command("instruments")(instruments_command)
data_app.command("show")(show_command)
data_app.command("export")(export_command)
data_app.command("quarantine")(quarantine_command)
data_app.command("history")(history_command)
data_app.command("roll")(roll_command)
