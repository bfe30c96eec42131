"""Which TWS endpoints are failing right now, so the preflight can announce the moment one recovers.

A recovery is a transition, and the server cannot be asked to detect it reliably: Prefect's `after` triggers read
their bucket before writing it, which SQLite answers with "database is locked" while flow runs write around it
(measured here: the recovery event was dropped after four retries). The preflight therefore compares with the
last verdict, kept in a Prefect Variable shared by every process on the same API, and emits a dedicated
`ibkr.tws.recovered` event. The Variable is written only on transitions.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect.variables import Variable

from ibkr_flows.alerts.messages import target_of
from ibkr_flows.doctor.diagnosis import Diagnosis

STATUS_VARIABLE = "ibkr-tws-status"


def record_verdict(diagnosis: Diagnosis) -> str | None:
    """Remember whether this TWS is failing; returns the failure class it just recovered from, else None."""
    target = target_of(diagnosis)
    stored = Variable.get(STATUS_VARIABLE, default=None)
    failing = dict(stored) if isinstance(stored, dict) else {}
    previous = failing.get(target)
    if diagnosis.ok:
        if previous is None:
            return None
        del failing[target]
        Variable.set(STATUS_VARIABLE, failing, overwrite=True)
        return str(previous["failure_class"])
    if previous is None or previous["failure_class"] != str(diagnosis.failure_class):
        failing[target] = {"failure_class": str(diagnosis.failure_class), "since": datetime.now(UTC).isoformat()}
        Variable.set(STATUS_VARIABLE, failing, overwrite=True)
    return None
