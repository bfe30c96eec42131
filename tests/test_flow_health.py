"""The health-check flow on a real (ephemeral) Prefect API: verdict artifacts and typed failures."""

from __future__ import annotations

import pytest

from ibkr_flows.doctor.diagnosis import TWSConnectionError
from ibkr_flows.sim.embedded import EmbeddedSimulator

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _artifact_markdown(flow_run_id) -> str:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tws-preflight"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert len(artifacts) == 1
    return str(artifacts[0].data)


def test_health_check_flow_healthy(sim: EmbeddedSimulator) -> None:
    from flows.health import tws_health_check

    state = tws_health_check(host=sim.host, port=sim.port, client_id=10, return_state=True)
    assert state.is_completed()
    diagnosis = state.result()
    assert diagnosis.ok and diagnosis.server_version == 178
    assert "HEALTHY" in _artifact_markdown(state.state_details.flow_run_id)


def test_health_check_flow_fails_with_the_diagnosis(sim: EmbeddedSimulator) -> None:
    from flows.health import tws_health_check

    sim.update_faults(busy_client_ids={10})
    state = tws_health_check(host=sim.host, port=sim.port, client_id=10, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TWSConnectionError)
    assert str(error.diagnosis.failure_class) == "client-id-in-use"
    assert "IBKR_CLIENT_ID=11" in str(error)
    markdown = _artifact_markdown(state.state_details.flow_run_id)
    assert "client-id-in-use" in markdown and "How to fix" in markdown
