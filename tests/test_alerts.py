"""Alerts through the flow hooks (no server needed): real flows on the ephemeral API, real notification blocks,
a local webhook receiver. The server-automation route runs in tests/test_e2e_deployments.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ibkr_flows.alerts.blocks import AlertConfigError, BlockRef, parse_block_refs
from ibkr_flows.alerts.ledger import LEDGER_VARIABLE, AlertLedger, load_ledger
from ibkr_flows.alerts.messages import failure_alert
from ibkr_flows.alerts.tws_status import STATUS_VARIABLE, record_verdict
from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import TWSEndpoint
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.conftest import settings_for
from tests.webhook_receiver import WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # Apprise, for Slack
TOKEN = f"tok-{uuid.uuid4().hex}"
NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)


# -- plain logic -------------------------------------------------------------------------------------------------


def test_block_refs_parse_and_reject_malformed() -> None:
    assert parse_block_refs("custom-webhook/ibkr-alerts, slack-webhook/trading,") == [
        BlockRef("custom-webhook", "ibkr-alerts"), BlockRef("slack-webhook", "trading")]
    assert parse_block_refs("") == []
    for bad in ("ibkr-alerts", "/x", "custom-webhook/", "a/b/c"):
        with pytest.raises(AlertConfigError, match="block-type-slug"):
            parse_block_refs(bad)


def test_ledger_quiet_within_window_then_due_again() -> None:
    ledger, window = AlertLedger(), timedelta(minutes=30)
    assert ledger.is_due("h:1", "client-id-in-use", NOW, window)
    ledger.record("h:1", "client-id-in-use", NOW)
    assert not ledger.is_due("h:1", "client-id-in-use", NOW + timedelta(minutes=29), window)
    assert ledger.is_due("h:1", "not-listening", NOW, window)  # another class is another alert
    assert ledger.is_due("h:2", "client-id-in-use", NOW, window)  # another TWS too
    assert ledger.is_due("h:1", "client-id-in-use", NOW + timedelta(minutes=30), window)
    restored = AlertLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert [a.failure_class for a in restored.resolve("h:1")] == ["client-id-in-use"]
    assert restored.open == {}


def test_alert_text_is_the_verdict_not_a_traceback(sim: EmbeddedSimulator) -> None:
    sim.update_faults(busy_client_ids={10})
    message = failure_alert(diagnose(settings_for(sim), check_data=False), seen_by="flow run 'x' of y")
    assert message.subject == f"TWS unusable at {sim.host}:{sim.port}: client-id-in-use"
    assert message.body.startswith("[client-id-in-use] Client id 10 is already in use")
    assert "How to fix:\n1. " in message.body and "IBKR_CLIENT_ID=11" in message.body
    assert "Traceback" not in message.body and "seen by flow run 'x' of y" in message.body


# -- the hook route on the ephemeral API -------------------------------------------------------------------------


@pytest.fixture
def receiver(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """A generic webhook and a Slack block, both delivering to a local receiver with the token in the URL."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
    from prefect.variables import Variable

    for name in (LEDGER_VARIABLE, STATUS_VARIABLE):
        Variable.unset(name)
    with webhook_receiver() as rx:
        CustomWebhookNotificationBlock(
            name="ibkr", url=rx.url("/hook/{{token}}"), secrets={"token": TOKEN},
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("test-alerts", overwrite=True)
        # Slack's block sends through Apprise; its generic json:// scheme points it at the local receiver.
        SlackWebhook(url=f"json://{rx.host}:{rx.port}/slack/{TOKEN}").save("test-slack", overwrite=True)
        monkeypatch.setenv("IBKR_ALERT_BLOCKS", "custom-webhook/test-alerts,slack-webhook/test-slack")
        yield rx


def _webhook(rx: WebhookReceiver, text: str) -> list[dict[str, Any]]:
    return [r.body for r in rx.matching(lambda r: r.path.startswith("/hook/") and text in r.body["subject"])]


def _slack(rx: WebhookReceiver, text: str) -> list[dict[str, Any]]:
    return [r.body for r in rx.matching(lambda r: r.path.startswith("/slack/") and text in r.body["title"])]


def test_hooks_alert_once_per_class_then_recover(receiver: WebhookReceiver, sim: EmbeddedSimulator) -> None:
    from flows.health import tws_health_check

    def check() -> bool:
        state = tws_health_check(host=sim.host, port=sim.port, client_id=10, check_data=False, return_state=True)
        return state.is_completed()

    sim.update_faults(busy_client_ids={10})
    assert not check() and not check()
    alerts = _webhook(receiver, "TWS unusable")
    assert len(alerts) == 1
    assert alerts[0]["subject"] == f"TWS unusable at {sim.host}:{sim.port}: client-id-in-use"
    assert "IBKR_CLIENT_ID=11" in alerts[0]["body"] and "tws-health-check" in alerts[0]["body"]
    slack = _slack(receiver, "TWS unusable")
    assert len(slack) == 1 and "IBKR_CLIENT_ID=11" in slack[0]["message"]
    assert {r.path for r in receiver.requests} == {f"/hook/{TOKEN}", f"/slack/{TOKEN}"}

    sim.update_faults(connect="accept-close")  # a different cause is a new alert
    assert not check()
    assert [a["subject"].rsplit(": ", 1)[1] for a in _webhook(receiver, "TWS unusable")] == [
        "client-id-in-use", "connection-rejected"]

    sim.clear_faults()
    assert check() and check()
    notices = _webhook(receiver, "usable again")
    assert len(notices) == 1 and len(_slack(receiver, "usable again")) == 1
    assert "(was: client-id-in-use, connection-rejected)" in notices[0]["body"]


def test_ingest_flow_alerts_too_and_a_recovery_rearms_the_alert(receiver: WebhookReceiver, tmp_path: Path,
                                                                sim: EmbeddedSimulator) -> None:
    from flows.health import tws_health_check
    from flows.ingest import ingest_flow

    sim.update_faults(connect="accept-close")
    state = ingest_flow(request=IngestRequest(symbols=("AAPL",)), tws=TWSEndpoint(host=sim.host, port=sim.port),
                        data_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    sim.clear_faults()
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_completed()
    sim.update_faults(connect="accept-close")
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_failed()
    alerts = _webhook(receiver, "connection-rejected")
    assert len(alerts) == 2 and "ingest-bars" in alerts[0]["body"] and "tws-health-check" in alerts[1]["body"]
    assert len(_webhook(receiver, "usable again")) == 1


def test_a_successful_ingest_closes_the_alert_of_its_tws(receiver: WebhookReceiver, tmp_path: Path,
                                                          sim: EmbeddedSimulator) -> None:
    from flows.health import tws_health_check
    from flows.ingest import ingest_flow

    sim.update_faults(connect="accept-close")
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_failed()
    sim.clear_faults()
    state = ingest_flow(request=IngestRequest(symbols=("AAPL",), lookback_days=1, quality_engine="polars"),
                        tws=TWSEndpoint(host=sim.host, port=sim.port), data_dir=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    assert len(_webhook(receiver, "usable again")) == 1


def test_repeat_after_the_window(receiver: WebhookReceiver, sim: EmbeddedSimulator,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.health import tws_health_check

    window = timedelta(seconds=1)
    monkeypatch.setenv("IBKR_ALERT_WINDOW_SECONDS", str(window.total_seconds()))
    sim.update_faults(busy_client_ids={10})
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_failed()
    assert len(_webhook(receiver, "client-id-in-use")) == 1
    # the event the second alert waits for: the ledger's entry for this failure falls out of the window
    target = f"{sim.host}:{sim.port}"
    assert [(a.target, a.failure_class) for a in load_ledger().open.values()] == [(target, "client-id-in-use")]
    deadline = time.monotonic() + 10
    while not load_ledger().is_due(target, "client-id-in-use", datetime.now(UTC), window):
        assert time.monotonic() < deadline, f"the alert for {target} never left its {window} window"
        time.sleep(0.05)
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_failed()
    assert len(_webhook(receiver, "client-id-in-use")) == 2


def test_other_failures_are_not_connection_alerts(receiver: WebhookReceiver, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_flow

    monkeypatch.setenv("IBKR_PACING_DIR", str(tmp_path / "pacing"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        state = ingest_flow(request=IngestRequest(symbols=("NOPE",), start=datetime(2024, 7, 12, tzinfo=UTC), end=NOW),
                            tws=TWSEndpoint(host=sim.host, port=sim.port, client_id=92), data_dir=str(tmp_path),
                            return_state=True)
    assert state.is_failed()  # an unknown symbol: the run fails, TWS is fine
    assert receiver.requests == []


def test_no_blocks_configured_means_no_alerts_and_no_state(receiver: WebhookReceiver, sim: EmbeddedSimulator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.variables import Variable

    from flows.health import tws_health_check

    monkeypatch.delenv("IBKR_ALERT_BLOCKS")
    sim.update_faults(busy_client_ids={10})
    assert tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True).is_failed()
    assert receiver.requests == []
    assert Variable.get(LEDGER_VARIABLE, default=None) is None


def test_failed_delivery_never_shows_the_secret(receiver: WebhookReceiver, sim: EmbeddedSimulator,
                                                capfd: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The URLs carry the token and HTTP errors quote URLs: the failure is logged by type and status only, and
    the alert stays due so the next run tries again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from flows.health import tws_health_check

    receiver.status = 500
    sim.update_faults(busy_client_ids={10})
    states = [tws_health_check(host=sim.host, port=sim.port, check_data=False, return_state=True) for _ in range(2)]
    assert len(_webhook(receiver, "client-id-in-use")) == 2  # tried, failed, tried again
    run_ids = [s.state_details.flow_run_id for s in states]
    deadline = time.monotonic() + 15  # logs reach the API in batches
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
            errors = [log.message for log in logs if "not delivered" in log.message]
            if len(errors) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
    assert sum("custom-webhook/test-alerts not delivered: HTTPStatusError (HTTP 500)" in m for m in errors) == 2
    assert sum("slack-webhook/test-slack not delivered: NotificationError" in m for m in errors) == 2
    captured = capfd.readouterr()
    exposed = [
        *(log.message for log in logs), *(str(a.data) for a in artifacts), captured.out, captured.err, caplog.text,
        *(s.message or "" for s in states), *(repr(s.result(raise_on_failure=False)) for s in states),
    ]
    assert [text for text in exposed if TOKEN in text] == []


def test_tws_status_reports_the_recovery_once(prefect_harness: None, sim: EmbeddedSimulator) -> None:
    """What the preflight's `ibkr.tws.recovered` event (server route) is based on."""
    from prefect.variables import Variable

    Variable.unset(STATUS_VARIABLE)
    healthy = diagnose(settings_for(sim), check_data=False)
    assert record_verdict(healthy) is None
    sim.update_faults(busy_client_ids={10})
    failed = diagnose(settings_for(sim), check_data=False)
    assert record_verdict(failed) is None and record_verdict(failed) is None
    assert record_verdict(healthy) == "client-id-in-use"
    assert record_verdict(healthy) is None
