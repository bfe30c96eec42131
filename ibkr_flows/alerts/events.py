"""The preflight's verdict as Prefect events, for the alert automations on a Prefect server.

Every preflight emits `ibkr.tws.healthy` or `ibkr.tws.unhealthy` about the resource `ibkr.tws.<host>:<port>`,
labelled `ibkr.failure-class`, and `ibkr.tws.recovered` when a failing TWS passes again (`alerts.tws_status`).
Unhealthy and recovered events carry the finished alert text from `alerts.messages`, so the automations send
exactly what the flow hooks send: their templates only insert `event.payload.subject` / `event.payload.body`.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import State

from ibkr_flows.alerts.failures import tws_error_in
from ibkr_flows.alerts.messages import AlertMessage, describe_run, failure_alert, recovery_notice, target_of
from ibkr_flows.alerts.tws_status import record_verdict
from ibkr_flows.doctor.diagnosis import Diagnosis

UNHEALTHY_EVENT = "ibkr.tws.unhealthy"
HEALTHY_EVENT = "ibkr.tws.healthy"
RECOVERED_EVENT = "ibkr.tws.recovered"
RESOURCE_PREFIX = "ibkr.tws."
FAILURE_CLASS_LABEL = "ibkr.failure-class"


def _emit(event: str, diagnosis: Diagnosis, message: AlertMessage | None) -> None:
    target = target_of(diagnosis)
    payload: dict[str, Any] = {"status": str(diagnosis.status), "failure_class": str(diagnosis.failure_class),
                               "summary": diagnosis.summary}
    if message is not None:
        payload.update(subject=message.subject, body=message.body)
    emit_event(event=event, payload=payload,
               resource={"prefect.resource.id": RESOURCE_PREFIX + target, "prefect.resource.name": f"TWS {target}",
                         FAILURE_CLASS_LABEL: str(diagnosis.failure_class)})


def publish_verdict(diagnosis: Diagnosis, seen_by: str | None = None) -> None:
    """Emit the verdict, and the recovery when this TWS was failing before."""
    if not diagnosis.ok:
        _emit(UNHEALTHY_EVENT, diagnosis, failure_alert(diagnosis, seen_by))
        record_verdict(diagnosis)
        return
    _emit(HEALTHY_EVENT, diagnosis, None)
    recovered_from = record_verdict(diagnosis)
    if recovered_from is not None:
        _emit(RECOVERED_EVENT, diagnosis, recovery_notice(target_of(diagnosis), [recovered_from], seen_by))


def _seen_by() -> str | None:
    return describe_run(flow_run.name, flow_run.flow_name) if flow_run.id else None


def emit_on_completion(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> None:
    """Task hook for the preflight: it returned a usable verdict."""
    publish_verdict(state.result(), _seen_by())


def emit_on_failure(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> None:
    """Task hook for the preflight: it raised; only the doctor's verdict is an `unhealthy` event, not a bug."""
    error = tws_error_in(state)
    if error is not None:
        publish_verdict(error.diagnosis, _seen_by())
