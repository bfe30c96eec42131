"""The alert automations' definitions and their idempotent sync, on the ephemeral API (creating and updating
automations works there; only their firing needs a real server, see tests/test_e2e_deployments.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from ibkr_flows.alerts.automations import (
    ALERT_AUTOMATION,
    RECOVERY_AUTOMATION,
    SyncOutcome,
    _definition,
    desired_automations,
    sync_automations,
)
from ibkr_flows.alerts.blocks import AlertConfigError, BlockRef
from ibkr_flows.alerts.events import FAILURE_CLASS_LABEL, RECOVERED_EVENT, UNHEALTHY_EVENT

BLOCK = BlockRef("custom-webhook", "automation-test")


@pytest.fixture
def clean_automations(prefect_harness: None) -> Iterator[None]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    CustomWebhookNotificationBlock(name="t", url="http://127.0.0.1:9/hook").save(BLOCK.name, overwrite=True)

    def delete_all() -> None:
        with get_client(sync_client=True) as client:
            for automation in client.read_automations():
                client.delete_automation(automation.id)

    delete_all()
    yield
    delete_all()


def _by_name() -> dict[str, list]:  # type: ignore[type-arg]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found: dict[str, list] = {}  # type: ignore[type-arg]
        for automation in client.read_automations():
            found.setdefault(automation.name, []).append(automation)
    return found


def test_sync_creates_then_changes_nothing_then_updates(clean_automations: None) -> None:
    hour = timedelta(hours=1)
    assert sync_automations([BLOCK], hour) == {ALERT_AUTOMATION: SyncOutcome.CREATED,
                                               RECOVERY_AUTOMATION: SyncOutcome.CREATED}
    assert sync_automations([BLOCK], hour) == {ALERT_AUTOMATION: SyncOutcome.UNCHANGED,
                                               RECOVERY_AUTOMATION: SyncOutcome.UNCHANGED}
    assert sync_automations([BLOCK], 2 * hour)[ALERT_AUTOMATION] is SyncOutcome.UPDATED
    automations = _by_name()
    assert sorted(automations) == [ALERT_AUTOMATION, RECOVERY_AUTOMATION]
    alert = automations[ALERT_AUTOMATION][0]
    assert alert.trigger.expect == {UNHEALTHY_EVENT} and alert.trigger.within == 2 * hour
    assert alert.trigger.for_each == {"prefect.resource.id", FAILURE_CLASS_LABEL}
    assert automations[RECOVERY_AUTOMATION][0].trigger.expect == {RECOVERED_EVENT}
    action = alert.actions[0]
    assert (action.subject, action.body) == ("{{ event.payload.subject }}", "{{ event.payload.body }}")


@pytest.mark.parametrize("reverse", [False, True])
def test_definition_ignores_the_order_a_set_comes_back_in(reverse: bool) -> None:
    """The server returns `for_each` as a list in its own order; read back, it must still equal the wanted set.

    A JSON comparison failed this for some hash seeds (a redeploy then reported the alert automation `updated`,
    which resets its dedupe state); the test fails the same way under such a seed if sets are compared as lists.
    """
    from prefect.events.schemas.automations import AutomationCore

    wanted = desired_automations([UUID(int=1)], timedelta(hours=1))[0]
    stored = wanted.model_dump(mode="json")
    stored["trigger"]["for_each"] = sorted(stored["trigger"]["for_each"], reverse=reverse)
    assert _definition(AutomationCore.model_validate(stored)) == _definition(wanted)


def test_sync_removes_duplicates(clean_automations: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    sync_automations([BLOCK], timedelta(hours=1))
    existing = _by_name()[ALERT_AUTOMATION][0]
    with get_client(sync_client=True) as client:  # what calling Automation.create() twice leaves behind
        client.create_automation(AutomationCore.model_validate(existing.model_dump(exclude={"id"})))
    assert len(_by_name()[ALERT_AUTOMATION]) == 2
    assert sync_automations([BLOCK], timedelta(hours=1))[ALERT_AUTOMATION] is SyncOutcome.UPDATED
    assert len(_by_name()[ALERT_AUTOMATION]) == 1


def test_sync_refuses_missing_or_wrong_blocks(clean_automations: None) -> None:
    from prefect.blocks.system import Secret

    Secret(value="not a notifier").save("not-a-notifier", overwrite=True)
    with pytest.raises(AlertConfigError, match="no block custom-webhook/missing"):
        sync_automations([BlockRef("custom-webhook", "missing")], timedelta(hours=1))
    with pytest.raises(AlertConfigError, match="not a notification block"):
        sync_automations([BlockRef("secret", "not-a-notifier")], timedelta(hours=1))
    with pytest.raises(AlertConfigError, match="no alert blocks"):
        sync_automations([], timedelta(hours=1))
    assert _by_name() == {}


def test_cli_alerts_sync_needs_a_server(tmp_path: Path) -> None:
    """In ephemeral mode the automations would never fire: refuse instead of pretending."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", "alerts", "sync", "--alert-block", str(BLOCK)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PREFECT_API_URL is not set" in result.stderr
