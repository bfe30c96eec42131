"""Prefect task around the doctor: a verdict artifact on every run, a typed failure when TWS is unusable."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ibkr_flows.doctor.diagnosis import Diagnosis, TWSConnectionError
from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.settings import IBKRSettings

ARTIFACT_KEY = "tws-preflight"
PREFLIGHT_TIMEOUT_S = 120
"""The doctor's verdicts come in at most a few timeouts (seconds each); two minutes means something hung. No
retries: an unusable TWS is the verdict the flow must fail and alert with, and the health check runs every five
minutes anyway."""


@task(name="tws-preflight", task_run_name="tws-preflight {host}:{port}", timeout_seconds=PREFLIGHT_TIMEOUT_S)
def tws_preflight(host: str | None = None, port: int | None = None, client_id: int | None = None,
                  retry_client_id: bool = False, check_data: bool = True, patient: bool = False) -> Diagnosis:
    """Diagnose TWS; publish the verdict; raise `TWSConnectionError` (carrying it) unless usable.

    Unset arguments fall back to IBKR_* settings, so deployments can leave them empty and follow the worker's
    environment. `patient` waits the configured timeouts instead of answering within 1.5 s: for a run about to
    move data, which must not fail on a TWS that is only slow.
    """
    settings = IBKRSettings.with_overrides(host=host, port=port, client_id=client_id)
    diagnosis = diagnose(settings, retry_client_id=retry_client_id, check_data=check_data, patient=patient)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=diagnosis.to_markdown(), description=diagnosis.summary)
    if not diagnosis.ok:
        raise TWSConnectionError(diagnosis)
    return diagnosis
