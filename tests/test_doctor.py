"""One test per failure class: the real ib_async client and the doctor against the simulator."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from ib_async import IB

from ibkr_flows.doctor.diagnosis import FailureClass, Status
from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.faults import Faults
from tests.conftest import free_port, settings_for


def _steps(diagnosis) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.step for e in diagnosis.evidence]


def _fix_text(diagnosis) -> str:  # type: ignore[no-untyped-def]
    return " ".join(diagnosis.remediation)


def test_healthy(sim: EmbeddedSimulator) -> None:
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.status is Status.HEALTHY, diagnosis.to_markdown()
    assert diagnosis.failure_class is FailureClass.NONE
    assert diagnosis.server_version == 178
    assert diagnosis.accounts == ["DU1234567"] and diagnosis.paper is True
    assert diagnosis.exit_code == 0
    assert any(e.step == "historical data" and "daily bars of SPY" in e.observation for e in diagnosis.evidence)
    assert "2106 HMDS data farm connection is OK:ushmds" in diagnosis.farm_notices
    # read-only: the doctor's own client never asked for orders beyond its probe
    assert sim.snapshot()["requests"].get("placeOrder", 0) == 0


def test_not_listening_names_the_api_setting() -> None:
    port = free_port()
    with EmbeddedSimulator(port=port, faults=Faults(connect="not-listening")) as sim:
        diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class in {FailureClass.NOT_LISTENING, FailureClass.WRONG_PORT}
    if diagnosis.failure_class is FailureClass.NOT_LISTENING:  # no real TWS on this machine's well-known ports
        assert "Enable ActiveX and Socket Clients" in _fix_text(diagnosis)
        assert diagnosis.exit_code == 10
    # decided by the raw probe: the real client was never started
    assert "ib_async connect" not in _steps(diagnosis)


@pytest.fixture
def gateway_paper_port() -> Iterator[EmbeddedSimulator]:
    """A second simulated session on IB Gateway's paper port 4002 (skipped if something already owns it)."""
    try:
        with EmbeddedSimulator(port=4002) as other:
            yield other
    except OSError:
        pytest.skip("port 4002 is in use on this machine")


def test_wrong_port_points_at_the_open_one(gateway_paper_port: EmbeddedSimulator) -> None:
    with EmbeddedSimulator(port=free_port(), faults=Faults(connect="not-listening")) as sim:
        diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.WRONG_PORT
    assert 4002 in diagnosis.open_ports
    assert "IBKR_PORT=4002" in _fix_text(diagnosis)


def test_host_unreachable() -> None:
    diagnosis = diagnose(settings_for_host("no-such-host.invalid", free_port()))
    assert diagnosis.failure_class is FailureClass.HOST_UNREACHABLE
    assert "IBKR_HOST" in _fix_text(diagnosis)


def settings_for_host(host: str, port: int):  # type: ignore[no-untyped-def]
    from ibkr_flows.settings import IBKRSettings

    return IBKRSettings(host=host, port=port, probe_timeout=1.0, connect_timeout=2.0)


def test_not_tws_when_another_protocol_answers() -> None:
    """An HTTP server on the port: the doctor says so instead of timing out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer_http() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        diagnosis = diagnose(settings_for_host("127.0.0.1", port))
    finally:
        server.close()
    assert diagnosis.failure_class is FailureClass.NOT_TWS


def test_accept_then_silence_is_the_accept_dialog(sim: EmbeddedSimulator) -> None:
    sim.update_faults(connect="accept-silence")
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.HANDSHAKE_SILENT
    assert "Accept incoming connection" in _fix_text(diagnosis)
    assert "Trusted IPs" in _fix_text(diagnosis)
    assert "ib_async connect" not in _steps(diagnosis)


def test_accept_then_close_is_trusted_ips(sim: EmbeddedSimulator) -> None:
    sim.update_faults(connect="accept-close")
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.CONNECTION_REJECTED
    assert "Allow connections from localhost only" in _fix_text(diagnosis)
    assert diagnosis.exit_code == 15


@pytest.mark.parametrize("fault", ["version-silence", "empty-accounts"])
def test_version_without_session_is_not_logged_in(sim: EmbeddedSimulator, fault: str) -> None:
    sim.update_faults(connect=fault)
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.API_NOT_READY
    assert diagnosis.server_version is None or diagnosis.server_version == 178
    assert "not logged in" in _fix_text(diagnosis)
    observed = " ".join(e.observation for e in diagnosis.evidence)
    assert "server version 178" in observed
    if fault == "empty-accounts":
        assert "managed accounts list is empty" in observed


def test_client_id_in_use_by_a_live_client_suggests_a_free_one(sim: EmbeddedSimulator) -> None:
    """A real second ib_async connection holds client id 10; the simulator tracks live ids like TWS."""
    holder = IB()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(holder.connectAsync(sim.host, sim.port, 10, readonly=True, timeout=4))
        diagnosis = diagnose(settings_for(sim, client_id=10))
    finally:
        holder.disconnect()
        loop.close()
    assert diagnosis.failure_class is FailureClass.CLIENT_ID_IN_USE
    assert diagnosis.suggested_client_id == 11
    assert "IBKR_CLIENT_ID=11" in _fix_text(diagnosis)
    assert diagnosis.exit_code == 17
    assert sim.snapshot()["errors_sent"].get("326", 0) >= 1


def test_client_id_retry_continues_with_the_free_id(sim: EmbeddedSimulator) -> None:
    sim.update_faults(busy_client_ids={10, 11})
    diagnosis = diagnose(settings_for(sim, client_id=10), retry_client_id=True)
    assert diagnosis.status is Status.WARNING
    assert diagnosis.failure_class is FailureClass.CLIENT_ID_IN_USE
    assert diagnosis.client_id == 12 and diagnosis.suggested_client_id == 12
    assert diagnosis.ok and diagnosis.exit_code == 0
    assert any(e.step == "historical data" for e in diagnosis.evidence)


def test_read_only_api_is_a_harmless_warning(sim: EmbeddedSimulator) -> None:
    sim.update_faults(read_only=True)
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.status is Status.WARNING
    assert diagnosis.failure_class is FailureClass.READ_ONLY_API
    assert "Read-Only API" in _fix_text(diagnosis)
    assert diagnosis.ok


def test_connectivity_lost_between_tws_and_ib(sim: EmbeddedSimulator) -> None:
    sim.lose_connectivity()
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.IB_CONNECTIVITY_LOST
    assert "1100" in diagnosis.summary


def test_data_farm_down(sim: EmbeddedSimulator) -> None:
    sim.update_faults(farm_down=True)
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.DATA_FARM_DOWN
    assert "HMDS data farm connection is broken" in diagnosis.summary
    assert "2105 HMDS data farm connection is broken:ushmds" in diagnosis.farm_notices


def test_no_market_data_permissions(sim: EmbeddedSimulator) -> None:
    sim.update_faults(no_permission_symbols={"SPY"})
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.NO_DATA_PERMISSIONS
    assert "Market Data Subscriptions" in _fix_text(diagnosis)
    assert diagnosis.exit_code == 20


def test_live_account_warns() -> None:
    with EmbeddedSimulator(accounts=["U7654321"]) as sim:
        diagnosis = diagnose(settings_for(sim))
    assert diagnosis.status is Status.WARNING
    assert diagnosis.failure_class is FailureClass.LIVE_SESSION
    assert diagnosis.paper is False


def test_verdicts_are_markdown_and_json(sim: EmbeddedSimulator) -> None:
    sim.update_faults(connect="accept-close")
    diagnosis = diagnose(settings_for(sim))
    data = diagnosis.to_json()
    assert data["failure_class"] == "connection-rejected" and data["ok"] is False and data["exit_code"] == 15
    markdown = diagnosis.to_markdown()
    assert "## How to fix" in markdown and "## Evidence" in markdown
