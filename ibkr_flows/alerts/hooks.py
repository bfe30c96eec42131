"""Flow hooks: alert when a run fails because TWS is unusable, and send a recovery notice once it is usable again.

This route needs no Prefect server (it also works in ephemeral mode and for CLI runs) and is active only when
IBKR_ALERT_BLOCKS names destinations. On a server, `ibkr up` starts the worker without IBKR_ALERT_BLOCKS because
the server's automations alert instead: one alert per failure, not one per route.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import flow_run_logger
from prefect.states import State

from ibkr_flows.alerts.failures import tws_error_in
from ibkr_flows.alerts.ledger import load_ledger, save_ledger
from ibkr_flows.alerts.messages import describe_run, failure_alert, recovery_notice, target_of
from ibkr_flows.alerts.notify import deliver
from ibkr_flows.alerts.settings import AlertSettings
from ibkr_flows.settings import TWSEndpoint


def alert_on_tws_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_failure: one alert per TWS and failure class within the window; other failures are not alerts."""
    settings = AlertSettings()
    refs = settings.block_refs
    error = tws_error_in(state) if refs else None
    if error is None:
        return
    diagnosis = error.diagnosis
    target, failure_class = target_of(diagnosis), str(diagnosis.failure_class)
    logger = flow_run_logger(flow_run, flow)
    ledger = load_ledger()
    now = datetime.now(UTC)
    if not ledger.is_due(target, failure_class, now, timedelta(seconds=settings.window_seconds)):
        logger.info("TWS %s: %s already alerted less than %.0f s ago; no new alert", target, failure_class,
                    settings.window_seconds)
        return
    if deliver(failure_alert(diagnosis, seen_by=describe_run(flow_run.name, flow.name)), refs, logger):
        ledger.record(target, failure_class, now)
        save_ledger(ledger)


def notify_tws_recovery(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_completion of a flow that ran the preflight: TWS passed it, so close its open alerts with a notice."""
    settings = AlertSettings()
    refs = settings.block_refs
    if not refs:
        return
    target = _preflight_target(flow_run)
    ledger = load_ledger()
    resolved = ledger.resolve(target)
    if not resolved:
        return
    notice = recovery_notice(target, [a.failure_class for a in resolved],
                             seen_by=describe_run(flow_run.name, flow.name))
    if deliver(notice, refs, flow_run_logger(flow_run, flow)):
        save_ledger(ledger)


def _preflight_target(flow_run: FlowRun) -> str:
    """The TWS the run's preflight checked: its `tws` parameter (ingest-bars) or host/port parameters
    (tws-health-check), else the IBKR_* settings it fell back to."""
    parameters = flow_run.parameters
    endpoint = parameters.get("tws") or {"host": parameters.get("host"), "port": parameters.get("port")}
    settings = TWSEndpoint.model_validate(endpoint, strict=False).settings()
    return f"{settings.host}:{settings.port}"
