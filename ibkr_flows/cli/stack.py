"""`ibkr up` / `ibkr down`: run the deployments on a real Prefect server on this machine (or an existing one)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

HomeOption = Annotated[Path, typer.Option(envvar="PREFECT_HOME", help="Prefect home: the server's SQLite database, "
                                                                     "logs/, and the state file ibkr-up.json.")]
DEFAULT_HOME = Path.home() / ".prefect"


def up(
    port: Annotated[int | None, typer.Option(help="Port of the server (default: a free one).")] = None,
    host: Annotated[str, typer.Option(help="Address the server binds. Any non-loopback address (e.g. 0.0.0.0, "
                                           "for workers on other machines) requires --auth-string.")]
    = "127.0.0.1",
    auth_string: Annotated[str | None, typer.Option(envvar="PREFECT_SERVER_API_AUTH_STRING", show_envvar=False,
                                                    help="Prefect basic auth 'user:password' for the server (env "
                                                         "PREFECT_SERVER_API_AUTH_STRING); the worker and clients "
                                                         "started get it as PREFECT_API_AUTH_STRING.")] = None,
    database: Annotated[str | None, typer.Option(envvar=["PREFECT_SERVER_DATABASE_CONNECTION_URL",
                                                         "PREFECT_API_DATABASE_CONNECTION_URL"], show_envvar=False,
                                                 help="The server's database, e.g. postgresql+asyncpg://user:"
                                                      "password@host:5432/prefect (env PREFECT_API_DATABASE_"
                                                      "CONNECTION_URL; default SQLite in the Prefect home).")]
    = None,
    api_url: Annotated[str | None, typer.Option(help="Use this existing server / Prefect Cloud workspace API "
                                                     "instead of starting one, e.g. \"$PREFECT_API_URL\".")] = None,
    home: HomeOption = DEFAULT_HOME,
    alert_block: Annotated[list[str] | None, typer.Option(help="Notification block for the alert automations, "
                                                               "`<type-slug>/<name>` (repeatable) (env "
                                                               "IBKR_ALERT_BLOCKS).")] = None,
    alert_window: Annotated[float | None, typer.Option(help="Seconds one failure class stays quiet after its "
                                                            "alert (env IBKR_ALERT_WINDOW_SECONDS, default "
                                                            "3600).")] = None,
    worker: Annotated[bool, typer.Option(help="Start a process worker for the pool.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server and the worker to come up.")]
    = 120.0,
) -> None:
    """Start a Prefect server on 127.0.0.1, create the `ibkr-local` process pool, deploy prefect.yaml, create
    the alert automations and start a worker; `ibkr down` stops them.

    The state (pids, URLs, log files, the database with its password masked) goes to PREFECT_HOME/ibkr-up.json.
    With --api-url nothing is started but the worker. The worker runs without IBKR_ALERT_BLOCKS when automations
    were created: the server alerts. For a team: --database postgresql+asyncpg://... --host 0.0.0.0
    --auth-string user:password.
    """
    from ibkr_flows.alerts.blocks import AlertConfigError, parse_block_refs
    from ibkr_flows.alerts.settings import AlertSettings
    from ibkr_flows.stack.access import CLIENT_AUTH_VARIABLE, ServerAccess
    from ibkr_flows.stack.database import parse_database_url
    from ibkr_flows.stack.local import UpOptions
    from ibkr_flows.stack.local import up as bring_up
    from ibkr_flows.stack.processes import StackError

    settings = AlertSettings()
    try:
        blocks = parse_block_refs(",".join(alert_block)) if alert_block else settings.block_refs
    except AlertConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alert-block") from exc
    try:
        options = UpOptions(home=home.expanduser().resolve(), port=port, api_url=api_url,
                            database=parse_database_url(database) if database else None,
                            access=ServerAccess(host=host, auth_string=auth_string or None),
                            alert_blocks=tuple(blocks),
                            alert_window=timedelta(seconds=alert_window or settings.window_seconds),
                            start_worker=worker, startup_timeout=timeout)
        state = bring_up(options, echo=lambda line: typer.echo(line, err=True))
    except (StackError, AlertConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not blocks:
        typer.echo("no alert automations: no blocks in IBKR_ALERT_BLOCKS / --alert-block", err=True)
    if state.ui_url:
        typer.echo(f"Prefect UI: {state.ui_url}")
    typer.echo(f"export PREFECT_API_URL={state.api_url}")
    if options.access.auth_string:
        typer.echo(f"export {CLIENT_AUTH_VARIABLE}='<the --auth-string>'")
        if state.ui_url and state.ui_url != state.api_url.removesuffix("/api"):
            typer.echo(f"workers elsewhere: PREFECT_API_URL={state.ui_url}/api {CLIENT_AUTH_VARIABLE}=... "
                       f"prefect worker start --pool {options.pool}", err=True)
    typer.echo(f"stop with: ibkr down --home {options.home}", err=True)


def down(
    home: HomeOption = DEFAULT_HOME,
    timeout: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL per process group.")] = 20.0,
) -> None:
    """Stop the server and worker `ibkr up` started (SIGTERM, then SIGKILL after --timeout)."""
    from ibkr_flows.stack.local import down as bring_down

    if not bring_down(home.expanduser().resolve(), timeout, echo=typer.echo):
        typer.echo(f"nothing to stop: no ibkr-up.json in {home}")
