"""The client-side pacing budget: IB's rules, shared across budgets through the ledger file, applied to the requests
IB applies them to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ibkr_flows.ib.pacing_rules import LONG_LIMIT, MAX_OPEN, hard_limits_apply
from ibkr_flows.ingest.errors import PacingViolationError
from ibkr_flows.ingest.pacing import (
    ALL_BAR_SIZES_ENV,
    SAFETY_S,
    SLOW_ANSWER_S,
    PacedRequest,
    PacingBudget,
    SoftThrottle,
)


class FakeClock:
    """A settable clock: the budget's rules are about time, and tests should not sleep through them."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _try(budget: PacingBudget, request: PacedRequest) -> float:
    return asyncio.run(budget._try_record(request, request.identity))


def test_burst_rule_allows_five_per_two_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock)
    waits = [_try(budget, PacedRequest(1, "TRADES", f"r{i}")) for i in range(6)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == 2.0 + SAFETY_S  # until the first of the five leaves the window
    assert _try(budget, PacedRequest(2, "TRADES", "other contract")) == 0.0  # per contract
    clock.now += 2.0 + SAFETY_S
    assert _try(budget, PacedRequest(1, "TRADES", "r5")) == 0.0


def test_identical_request_waits_fifteen_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock)
    assert _try(budget, PacedRequest(1, "TRADES", "same")) == 0.0
    clock.now += 5
    assert _try(budget, PacedRequest(1, "TRADES", "same")) == 10.0 + SAFETY_S


def test_sixty_per_ten_minutes_and_bid_ask_counts_double(tmp_path: Path) -> None:
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock)
    for i in range(30):
        assert _try(budget, PacedRequest(i, "BID_ASK", f"r{i}")) == 0.0
        clock.now += 1.0
    wait = _try(budget, PacedRequest(99, "TRADES", "one more"))
    assert 569 < wait <= 571  # the first request leaves the 10-minute window at t0 + 600


def test_two_budgets_share_one_ledger(tmp_path: Path) -> None:
    """Two flows on one machine (two PacingBudget objects, same TWS) draw from one budget."""
    clock = FakeClock()
    ledger = tmp_path / "ledger.json"
    first, second = PacingBudget(ledger, clock=clock), PacingBudget(ledger, clock=clock)
    for i in range(3):
        assert _try(first, PacedRequest(1, "TRADES", f"a{i}")) == 0.0
    for i in range(2):
        assert _try(second, PacedRequest(1, "TRADES", f"b{i}")) == 0.0
    assert _try(second, PacedRequest(1, "TRADES", "b2")) > 1.9


def test_acquire_waits_with_time_scale(tmp_path: Path) -> None:
    budget = PacingBudget(tmp_path / "ledger.json", time_scale=0.05)

    async def burst() -> None:
        for i in range(7):
            async with budget.slot(PacedRequest(1, "TRADES", f"r{i}")):
                pass

    asyncio.run(burst())
    assert budget.granted == 7
    assert budget.waited_s > 0.09  # the 6th waited ~2 s x 0.05


def test_a_request_is_stamped_again_when_its_answer_arrives(tmp_path: Path) -> None:
    """TWS counts a request on arrival, after we grant it: the window is measured from the later of the two."""
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock)

    async def slow_answer() -> None:
        async with budget.slot(PacedRequest(1, "TRADES", "slow")):
            clock.now += 3.0  # granted at t0, answered at t0 + 3 s

    asyncio.run(slow_answer())
    assert _try(budget, PacedRequest(1, "TRADES", "slow")) == 15.0 + SAFETY_S  # 15 s from the answer, not the grant


def test_hard_limits_cover_small_bars_and_head_timestamps_only() -> None:
    assert hard_limits_apply("1 secs") and hard_limits_apply("30 secs")
    assert hard_limits_apply(None)  # reqHeadTimeStamp
    assert not hard_limits_apply("1 min") and not hard_limits_apply("1 day")
    assert hard_limits_apply("7 mins")  # unknown to IB: the safe side (TWS refuses it anyway)


def test_larger_bars_do_not_wait_for_the_hard_limits(tmp_path: Path) -> None:
    """Twice IB's 60-per-10-minutes of 1-minute-bar requests, identical ones included, on a clock that never moves:
    none waits, and a small-bar request after them is still judged by the small-bar requests alone."""
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock, all_bar_sizes=False)

    async def nightly() -> None:
        for i in range(2 * LONG_LIMIT):
            async with budget.slot(PacedRequest(1, "TRADES", f"r{i % 3}", hard_limits=False)):
                pass

    asyncio.run(asyncio.wait_for(nightly(), 60))  # a guard against a hang, not a timing assertion
    assert budget.granted == 2 * LONG_LIMIT
    assert budget.waited_s == 0.0
    assert _try(budget, PacedRequest(1, "TRADES", "small bars")) == 0.0


def test_strict_budget_counts_every_request_recorded(tmp_path: Path) -> None:
    """The same ledger read by a strict budget (a gateway that paces every size): the larger-bar requests count."""
    clock = FakeClock()
    ledger = tmp_path / "ledger.json"
    relaxed = PacingBudget(ledger, clock=clock, all_bar_sizes=False)
    for i in range(LONG_LIMIT):
        request = PacedRequest(i, "TRADES", f"r{i}", hard_limits=False)
        assert asyncio.run(relaxed._try_record(request, f"t{i}", False)) == 0.0
    strict = PacingBudget(ledger, clock=clock, all_bar_sizes=True)
    assert _try(strict, PacedRequest(999, "TRADES", "one more")) == pytest.approx(600.0 + SAFETY_S)
    assert strict.paced(PacedRequest(1, "TRADES", "x", hard_limits=False))


def test_all_bar_sizes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALL_BAR_SIZES_ENV, "1")
    assert PacingBudget(tmp_path / "ledger.json").all_bar_sizes
    monkeypatch.setenv(ALL_BAR_SIZES_ENV, "0")
    assert not PacingBudget(tmp_path / "ledger.json").all_bar_sizes
    monkeypatch.delenv(ALL_BAR_SIZES_ENV)
    assert not PacingBudget(tmp_path / "ledger.json").all_bar_sizes  # IB's documented rules by default


def test_a_pacing_violation_on_larger_bars_turns_the_budget_strict(tmp_path: Path) -> None:
    """TWS answered 162 to a 1-minute request: this gateway paces every size, so from now on the hard limits
    apply to every request, counting the ones already sent."""
    clock = FakeClock()
    budget = PacingBudget(tmp_path / "ledger.json", clock=clock, all_bar_sizes=False)

    async def violated() -> None:
        for i in range(LONG_LIMIT):
            async with budget.slot(PacedRequest(i, "TRADES", f"r{i}", hard_limits=False)):
                pass
        with pytest.raises(PacingViolationError):
            async with budget.slot(PacedRequest(0, "TRADES", "refused", hard_limits=False)):
                raise PacingViolationError("Historical data request pacing violation")

    asyncio.run(violated())
    assert budget.all_bar_sizes
    assert _try(budget, PacedRequest(77, "TRADES", "next")) > 500  # 61 requests in the 10-minute window


def test_a_violation_on_small_bars_leaves_larger_bars_alone(tmp_path: Path) -> None:
    budget = PacingBudget(tmp_path / "ledger.json", all_bar_sizes=False)

    async def violated() -> None:
        with pytest.raises(PacingViolationError):
            async with budget.slot(PacedRequest(1, "TRADES", "small")):
                raise PacingViolationError("Historical data request pacing violation")

    asyncio.run(violated())
    assert not budget.all_bar_sizes


def test_soft_throttle_halves_on_slow_answers_and_grows_back() -> None:
    throttle = SoftThrottle()
    assert throttle.limit == MAX_OPEN

    async def answers() -> list[int]:
        limits = []
        for answer_s in (SLOW_ANSWER_S + 1, SLOW_ANSWER_S + 1, 0.2, None, 0.2):
            await throttle.acquire()
            throttle.release(answer_s)
            limits.append(throttle.limit)
        return limits

    assert asyncio.run(answers()) == [MAX_OPEN // 2, MAX_OPEN // 4, MAX_OPEN // 4 + 1, MAX_OPEN // 4 + 1,
                                      MAX_OPEN // 4 + 2]


def test_soft_throttle_holds_a_request_until_one_in_flight_ends() -> None:
    throttle = SoftThrottle(limit=1)
    order: list[str] = []

    async def first() -> None:
        await throttle.acquire()
        order.append("first sent")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        order.append("first answered")
        throttle.release(0.1)

    async def second() -> None:
        await throttle.acquire()
        order.append("second sent")
        throttle.release(0.1)

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())
    assert order == ["first sent", "first answered", "second sent"]
    assert throttle.in_flight == 0
