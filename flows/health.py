"""The TWS health check: the doctor alone, for a short-interval deployment and for alerts."""

from __future__ import annotations

from prefect import flow

from ibkr_flows.alerts.hooks import alert_on_tws_failure, notify_tws_recovery
from ibkr_flows.doctor.diagnosis import Diagnosis
from tasks.preflight_events import tws_preflight


@flow(name="tws-health-check", log_prints=True, on_failure=[alert_on_tws_failure], on_completion=[notify_tws_recovery])
def tws_health_check(host: str | None = None, port: int | None = None, client_id: int | None = None,
                     retry_client_id: bool = False, check_data: bool = True) -> Diagnosis:
    """Check that TWS / IB Gateway is reachable, logged in and serving historical data.

    Empty parameters use the worker's IBKR_HOST / IBKR_PORT / IBKR_CLIENT_ID. Fails with the doctor's verdict
    (failure class and fix) when TWS is not usable; alerts go to IBKR_ALERT_BLOCKS (flow hooks) or through the
    server's automations (README: "Deployments and alerts").
    """
    return tws_preflight(host, port, client_id, retry_client_id, check_data)
