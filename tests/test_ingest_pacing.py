"""The client-side pacing budget: IB's rules, shared across budgets through the ledger file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ibkr_flows.ingest.pacing import SAFETY_S, PacedRequest, PacingBudget


class FakeClock:
    """A settable clock: the budget's rules are about time, and tests should not sleep through them."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _try(budget: PacingBudget, request: PacedRequest) -> float:
    return budget._try_record(request, request.identity)


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
