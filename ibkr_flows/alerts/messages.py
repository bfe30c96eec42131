"""The alert texts, defined once: flow hooks send them directly, the preflight's events carry them to server
automations (whose notification templates only insert `event.payload.subject` / `event.payload.body`).

An alert is read on a phone by someone who has to act: the failure class, the doctor's one-line verdict and its
fix steps, never a stack trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ibkr_flows.doctor.diagnosis import Diagnosis


@dataclass(frozen=True)
class AlertMessage:
    subject: str
    body: str


def target_of(diagnosis: Diagnosis) -> str:
    """The TWS an alert is about; alerts are deduplicated per target and failure class."""
    return f"{diagnosis.host}:{diagnosis.port}"


def describe_run(flow_run_name: str, flow_name: str) -> str:
    """Which run noticed the failure, as alerts name it."""
    return f"flow run '{flow_run_name}' of {flow_name}"


def failure_alert(diagnosis: Diagnosis, seen_by: str | None = None) -> AlertMessage:
    """TWS is unusable: what is wrong and how to fix it, in the doctor's words."""
    target = target_of(diagnosis)
    lines = [f"[{diagnosis.failure_class}] {diagnosis.summary}", ""]
    if diagnosis.remediation:
        lines += ["How to fix:", *(f"{i}. {step}" for i, step in enumerate(diagnosis.remediation, 1)), ""]
    lines.append(f"TWS {target}, client id {diagnosis.client_id}" + (f"; seen by {seen_by}" if seen_by else "") + ".")
    return AlertMessage(subject=f"TWS unusable at {target}: {diagnosis.failure_class}", body="\n".join(lines))


def recovery_notice(target: str, resolved: Sequence[str] = (), seen_by: str | None = None) -> AlertMessage:
    """TWS passes the preflight again after an alert; `resolved` names the failure classes alerted before."""
    lines = [f"The TWS preflight passes again for {target}"
             + (f" (was: {', '.join(resolved)})" if resolved else "") + "."]
    if seen_by:
        lines.append(f"Seen by {seen_by}.")
    return AlertMessage(subject=f"TWS usable again at {target}", body="\n".join(lines))
