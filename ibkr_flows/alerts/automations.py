"""The alert automations on a Prefect server, created from code and kept in sync by name.

Two automations react to the preflight's events (`alerts.events`) and send `event.payload.subject/body` through
the configured notification blocks:

- `ibkr-tws-alert`: the first `ibkr.tws.unhealthy` per TWS and failure class; Prefect's reactive trigger then
  ignores the same class for `window` (its next bucket starts when the window ends): one alert, not one per run.
- `ibkr-tws-recovery`: every `ibkr.tws.recovered`, which the preflight emits once per outage.

`Automation.create()` is not idempotent, so `sync_automations` looks each one up by name: unchanged ones are left
alone (an update would reset the trigger's dedupe state), changed ones are updated, duplicates deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from ibkr_flows.alerts.blocks import AlertConfigError, BlockRef, block_document_id
from ibkr_flows.alerts.events import FAILURE_CLASS_LABEL, RECOVERED_EVENT, RESOURCE_PREFIX, UNHEALTHY_EVENT

ALERT_AUTOMATION = "ibkr-tws-alert"
RECOVERY_AUTOMATION = "ibkr-tws-recovery"


class SyncOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def desired_automations(block_ids: Sequence[UUID], window: timedelta) -> list[AutomationCore]:
    actions: list[Any] = [SendNotification(block_document_id=block_id, subject="{{ event.payload.subject }}",
                                           body="{{ event.payload.body }}") for block_id in block_ids]
    match: Any = {"prefect.resource.id": f"{RESOURCE_PREFIX}*"}
    alert = AutomationCore(
        name=ALERT_AUTOMATION, enabled=True, actions=actions,
        description="TWS unusable (ibkr.tws.unhealthy): failure class and fix, once per class and window.",
        trigger=EventTrigger(expect={UNHEALTHY_EVENT}, match=match, posture=Posture.Reactive, threshold=1,
                             for_each={"prefect.resource.id", FAILURE_CLASS_LABEL}, within=window),
    )
    recovery = AutomationCore(
        name=RECOVERY_AUTOMATION, enabled=True, actions=actions,
        description="TWS usable again (ibkr.tws.recovered): one notice per outage.",
        trigger=EventTrigger(expect={RECOVERED_EVENT}, match=match, posture=Posture.Reactive, threshold=1,
                             within=timedelta(0)),
    )
    return [alert, recovery]


def _definition(automation: AutomationCore) -> dict[str, Any]:
    """What makes two automations equivalent: everything but server-assigned ids.

    Python mode, not JSON: the trigger's `expect` and `for_each` are sets, and a JSON dump lists a set in its
    iteration order, which can differ between a set read back from the server and the same set built here.
    """
    data = automation.model_dump(include=set(AutomationCore.model_fields) - {"owner_resource"})
    data["trigger"].pop("id", None)
    return data


def sync_automations(refs: Sequence[BlockRef], window: timedelta) -> dict[str, SyncOutcome]:
    """Create or update both automations on the current Prefect API; safe to run on every deploy."""
    if not refs:
        raise AlertConfigError("no alert blocks given: set IBKR_ALERT_BLOCKS or pass --alert-block")
    block_ids = [block_document_id(ref) for ref in refs]
    outcomes: dict[str, SyncOutcome] = {}
    with get_client(sync_client=True) as client:
        for wanted in desired_automations(block_ids, window):
            existing = client.read_automations_by_name(wanted.name)
            if not existing:
                client.create_automation(wanted)
                outcomes[wanted.name] = SyncOutcome.CREATED
                continue
            keep, *duplicates = existing
            for duplicate in duplicates:
                client.delete_automation(duplicate.id)
            changed = _definition(keep) != _definition(wanted)
            if changed:
                client.update_automation(keep.id, wanted)
            outcomes[wanted.name] = SyncOutcome.UPDATED if changed or duplicates else SyncOutcome.UNCHANGED
    return outcomes
