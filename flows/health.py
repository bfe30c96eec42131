"""The TWS health check: the doctor alone, for a short-interval deployment and for alerts."""

from __future__ import annotations

from prefect import flow

from doctor.diagnosis import Diagnosis
from tasks.preflight import tws_preflight


@flow(name="tws-health-check", log_prints=True)
def tws_health_check(host: str | None = None, port: int | None = None, client_id: int | None = None,
                     retry_client_id: bool = False, check_data: bool = True) -> Diagnosis:
    """Check that TWS / IB Gateway is reachable, logged in and serving historical data.

    Empty parameters use the worker's IBKR_HOST / IBKR_PORT / IBKR_CLIENT_ID. Fails with the doctor's verdict
    (failure class and fix) when TWS is not usable.
    """
    return tws_preflight(host, port, client_id, retry_client_id, check_data)
