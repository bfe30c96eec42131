"""`ibkr alerts sync`: create or update the alert automations on the configured Prefect server."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

alerts_app = typer.Typer(help="Alerts when TWS is unusable: notification blocks, server automations.",
                         no_args_is_help=True)


@alerts_app.command("sync")
def sync(
    alert_block: Annotated[list[str] | None, typer.Option(help="Notification block, `<type-slug>/<name>` "
                                                               "(repeatable) (env IBKR_ALERT_BLOCKS).")] = None,
    window: Annotated[float | None, typer.Option(help="Seconds one failure class stays quiet after its alert "
                                                      "(env IBKR_ALERT_WINDOW_SECONDS, default 3600).")] = None,
) -> None:
    """Create or update the `ibkr-tws-alert` and `ibkr-tws-recovery` automations on PREFECT_API_URL (by name:
    running it again changes nothing)."""
    from prefect.settings import PREFECT_API_URL

    from ibkr_flows.alerts.automations import sync_automations
    from ibkr_flows.alerts.blocks import AlertConfigError, parse_block_refs
    from ibkr_flows.alerts.settings import AlertSettings

    if not PREFECT_API_URL.value():
        typer.echo("error: PREFECT_API_URL is not set; automations need a Prefect server (`ibkr up` starts one)",
                   err=True)
        raise typer.Exit(2)
    settings = AlertSettings()
    try:
        blocks = parse_block_refs(",".join(alert_block)) if alert_block else settings.block_refs
        outcomes = sync_automations(blocks, timedelta(seconds=window or settings.window_seconds))
    except AlertConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for name, outcome in outcomes.items():
        typer.echo(f"{name}: {outcome}")
