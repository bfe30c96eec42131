"""Slow is not down (issue 20): the doctor's quick and patient modes against the simulator and scripted peers.

The time each verdict takes is measured by `bench/doctor_verdicts.py`, not asserted here; these tests pin what
each wait decides: a slow data farm is 'slow' with its latency (measured when patient, bounded from below when
quick), a farm TWS reports broken is 'down', a late version reply is a slow TWS, not an accept dialog.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from ibkr_flows.doctor.data_check import HMDS
from ibkr_flows.doctor.diagnosis import Diagnosis, FailureClass, Status
from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.doctor.probe import Outcome, probe
from ibkr_flows.doctor.timing import QUICK_STEP_S, SLOW_AFTER_S, Budget
from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.wire import encode_frame
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.conftest import settings_for
from tests.test_doctor_robustness import ACCOUNTS, NEXT_ID, VERSION, Script, background_server, fast, scripted_server


def _observed(diagnosis: Diagnosis) -> str:
    return " ".join(e.observation for e in diagnosis.evidence)


def _seconds(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1))


def test_a_server_with_12_s_latency_is_slow_not_farm_down(sim: EmbeddedSimulator) -> None:
    sim.update_faults(latency_seconds=12.0)
    diagnosis = diagnose(settings_for(sim, data_timeout=30.0))
    assert diagnosis.failure_class is FailureClass.SLOW, diagnosis.to_markdown()
    assert diagnosis.status is Status.WARNING and diagnosis.ok and diagnosis.exit_code == 0
    assert "slow (latency over" in diagnosis.summary and "not down" in diagnosis.summary
    assert "--patient" in diagnosis.summary
    assert "2106 HMDS data farm connection is OK:ushmds" in diagnosis.farm_notices
    waited = _seconds(r"no answer within ([0-9.]+) s", diagnosis.summary)
    assert waited < 12.0  # the quick mode bounds the latency from below instead of waiting it out
    assert "--patient" in diagnosis.remediation[0]


def test_patient_mode_measures_a_slow_farm_latency(sim: EmbeddedSimulator) -> None:
    latency = SLOW_AFTER_S + 0.5
    sim.update_faults(latency_seconds=latency)
    diagnosis = diagnose(settings_for(sim, data_timeout=10.0), patient=True)
    assert diagnosis.failure_class is FailureClass.SLOW and diagnosis.status is Status.WARNING, diagnosis.summary
    measured = _seconds(r"answered after ([0-9.]+) s", diagnosis.summary)
    assert measured >= latency  # the simulator sleeps at least that long before answering
    assert "not down" in diagnosis.summary
    assert "5 daily bars of SPY" in _observed(diagnosis)


def test_patient_mode_calls_an_answer_past_data_timeout_slow_when_the_farm_is_up(sim: EmbeddedSimulator) -> None:
    sim.update_faults(latency_seconds=5.0)
    diagnosis = diagnose(settings_for(sim, data_timeout=1.0), patient=True)
    assert diagnosis.failure_class is FailureClass.SLOW, diagnosis.summary
    assert "no answer within 1.0 s" in diagnosis.summary
    assert "--patient" not in diagnosis.summary  # it already was


@pytest.mark.parametrize("patient", [False, True])
def test_a_farm_tws_reports_broken_is_down_in_both_modes(sim: EmbeddedSimulator, patient: bool) -> None:
    sim.update_faults(farm_down=True)
    diagnosis = diagnose(settings_for(sim, data_timeout=1.0), patient=patient)
    assert diagnosis.failure_class is FailureClass.DATA_FARM_DOWN and diagnosis.exit_code == 19
    assert "TWS reports the historical data farm (HMDS) down" in diagnosis.summary
    assert "2105 HMDS data farm connection is broken:ushmds" in _observed(diagnosis)


def test_a_fast_answer_is_healthy_and_its_latency_shown(sim: EmbeddedSimulator) -> None:
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.status is Status.HEALTHY, diagnosis.summary
    assert _seconds(r"answered in ([0-9]+) ms", _observed(diagnosis)) <= SLOW_AFTER_S * 1000


@pytest.mark.parametrize(("patient", "waited"), [(False, QUICK_STEP_S), (True, 1.0)])
def test_handshake_silent_waits_the_quick_step_or_the_configured_timeout(sim: EmbeddedSimulator, patient: bool,
                                                                         waited: float) -> None:
    sim.update_faults(connect="accept-silence")
    diagnosis = diagnose(settings_for(sim, probe_timeout=1.0), patient=patient)
    assert diagnosis.failure_class is FailureClass.HANDSHAKE_SILENT
    assert f"no reply to the API greeting within {waited:.1f} s" in _observed(diagnosis)
    assert ("--patient" in diagnosis.summary) is not patient


@pytest.mark.parametrize("fault", ["version-silence", "empty-accounts"])
def test_api_not_ready_is_decided_on_the_quick_step(sim: EmbeddedSimulator, fault: str) -> None:
    sim.update_faults(connect=fault)
    diagnosis = diagnose(settings_for(sim, probe_timeout=5.0))
    assert diagnosis.failure_class is FailureClass.API_NOT_READY
    assert "--patient" in diagnosis.summary
    if fault == "version-silence":
        assert f"within {QUICK_STEP_S:.1f} s" in _observed(diagnosis)


def test_a_late_version_reply_is_a_slow_tws_not_the_accept_dialog() -> None:
    """The version comes after the greeting's wait (0.5 s with fast settings) but inside the HTTP nudge's."""
    with background_server(Script([(VERSION, 0.65)], ending="hang")) as port:
        diagnosis = diagnose(fast(port))
    assert diagnosis.failure_class is FailureClass.SLOW, diagnosis.summary
    assert diagnosis.status is Status.FAILED and diagnosis.exit_code == 22
    assert "answered the API handshake only after" in diagnosis.summary
    assert diagnosis.server_version == 178
    assert _seconds(r"only after ([0-9.]+) s", diagnosis.summary) >= 0.65
    assert "--patient" in diagnosis.remediation[0]


def test_a_session_start_that_outlasts_the_budget_is_slow_not_not_ready() -> None:
    """A peer that answers the whole raw handshake (and the open-orders check) at once, but never ib_async's
    startup requests (positions, account updates, executions)."""
    open_orders_end = encode_frame([ServerMessage.OPEN_ORDER_END, 1])
    script = Script([(VERSION, 0), (ACCOUNTS, 0.02), (NEXT_ID, 0), (open_orders_end, 0)], ending="hang")
    with background_server(script) as port:
        diagnosis = diagnose(fast(port))
    assert diagnosis.failure_class is FailureClass.SLOW and diagnosis.exit_code == 22, diagnosis.to_markdown()
    assert "ib_async's session start" in diagnosis.summary and "not down" in diagnosis.summary
    assert "API ready" in _observed(diagnosis)


def test_the_probe_ends_by_its_overall_limit_whatever_each_step_may_wait() -> None:
    async def run() -> list[str]:
        async with scripted_server(Script([], read_first=False, ending="hang")) as port:
            result = await probe("127.0.0.1", port, 10, 5.0, within=0.3)
        assert result.outcome is Outcome.SILENT_AFTER_ACCEPT
        return [observation for _, observation, _ in result.steps]

    observations = asyncio.run(run())
    assert "no reply to the API greeting within 0.3 s" in " ".join(observations)


def test_farm_state_reads_the_latest_notice_per_server_and_a_broken_one_outranks() -> None:
    broken, ok = ErrorCode.HMDS_FARM_BROKEN, ErrorCode.HMDS_FARM_OK
    recovered = [(broken, "HMDS data farm connection is broken:ushmds"), (ok, "HMDS data farm connection is OK:ushmds")]
    assert HMDS.state(recovered) == recovered[1]
    one_down = [(ok, "HMDS data farm connection is OK:ushmds"), (broken, "HMDS data farm connection is broken:euhmds"),
                (ok, "HMDS data farm connection is OK:cashhmds")]
    assert HMDS.state(one_down) == one_down[1]
    assert HMDS.state([(ErrorCode.MARKET_FARM_OK, "Market data farm connection is OK:usfarm")]) is None


def test_the_budget_cuts_waits_only_when_quick() -> None:
    quick, patient = Budget.for_run(patient=False), Budget.for_run(patient=True)
    assert quick.wait(10.0) <= quick.total_s  # type: ignore[operator]
    assert patient.wait(10.0) == 10.0 and patient.patience_hint() == ""
    assert "--patient" in quick.patience_hint()
