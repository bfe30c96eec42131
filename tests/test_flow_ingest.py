"""The ingestion flow on a real (ephemeral) Prefect API: preflight first, artifacts, typed failures."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ibkr_flows.doctor.diagnosis import TWSConnectionError
from ibkr_flows.ingest.errors import IngestIncompleteError
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import TWSEndpoint
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import table_version
from storage.location import TableLocation
from tests.test_alerts import receiver as alert_receiver  # noqa: F401 - fixture: alert blocks to a local receiver
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.usefixtures("prefect_harness")
NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)


def _artifact_keys(flow_run_id) -> set[str]:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key for a in artifacts if a.key}


def _task_runs(flow_run_id) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(task name, run name, state) of every task run of a flow run, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    return [(r.task_key.rsplit("-", 1)[0], r.name, r.state_name or "") for r in runs]


def test_ingest_flow_stores_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_flow

    monkeypatch.setenv("IBKR_PACING_DIR", str(tmp_path / "pacing"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        state = ingest_flow(request=IngestRequest(symbols=("AAPL", "SPY"), start=datetime(2024, 7, 10, tzinfo=UTC),
                                                  end=NOW),
                            tws=TWSEndpoint(host=sim.host, port=sim.port, client_id=90), data_dir=str(tmp_path),
                            return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert [s.rows_inserted for s in report.symbols] == [1170, 1170]
    assert table_version(TableLocation(tmp_path)) is not None
    keys = _artifact_keys(state.state_details.flow_run_id)
    assert {"tws-preflight", "ingest-summary", "ingest-symbols", "ingest-progress"} <= keys
    runs = _task_runs(state.state_details.flow_run_id)
    for symbol in ("AAPL", "SPY"):
        steps = [name.split(" ")[0] for _, name, _ in runs if f" {symbol} " in name]
        assert steps == ["fetch", "check", "merge"], runs
    assert all(state_name == "Completed" for *_, state_name in runs), runs


def test_ingest_flow_fails_fast_when_tws_is_down(tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    with EmbeddedSimulator() as sim:
        sim.update_faults(connect="accept-close")
        state = ingest_flow(request=IngestRequest(symbols=("AAPL",)), data_dir=str(tmp_path),
                            tws=TWSEndpoint(host=sim.host, port=sim.port), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TWSConnectionError)
    assert str(error.diagnosis.failure_class) == "connection-rejected"
    assert table_version(TableLocation(tmp_path)) is None  # nothing written


def test_ingest_flow_with_an_unknown_symbol_ends_failed_but_stores_the_rest(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_flow

    monkeypatch.setenv("IBKR_PACING_DIR", str(tmp_path / "pacing"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        state = ingest_flow(request=IngestRequest(symbols=("AAPL", "NOPE"), start=datetime(2024, 7, 12, tzinfo=UTC),
                                                  end=NOW),
                            tws=TWSEndpoint(host=sim.host, port=sim.port, client_id=91), data_dir=str(tmp_path),
                            return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, IngestIncompleteError)
    assert "NOPE" in str(error)
    assert error.report.symbols[0].rows_inserted == 390


def test_a_request_error_fails_fast_and_is_no_connection_alert(alert_receiver: WebhookReceiver,  # noqa: F811
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """IB refusing a request (here: no market data permissions, 162) is that request's answer: the flow ends
    failed within seconds with IB's reason and the fix, writes nothing, and no alert goes out (TWS is fine)."""
    from flows.ingest import ingest_flow

    monkeypatch.setenv("IBKR_PACING_DIR", str(tmp_path / "pacing"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(no_permission_symbols={"MSFT"})
        started = time.perf_counter()
        state = ingest_flow(request=IngestRequest(symbols=("MSFT",), start=datetime(2024, 7, 10, tzinfo=UTC),
                                                  end=NOW),
                            tws=TWSEndpoint(host=sim.host, port=sim.port, client_id=93), data_dir=str(tmp_path),
                            return_state=True)
        elapsed = time.perf_counter() - started
    assert state.is_failed() and elapsed < 15
    error = state.result(raise_on_failure=False)
    assert isinstance(error, IngestIncompleteError)
    assert "No market data permissions" in str(error) and "Fix: subscribe" in str(error)
    assert table_version(TableLocation(tmp_path)) is None
    assert alert_receiver.requests == []
