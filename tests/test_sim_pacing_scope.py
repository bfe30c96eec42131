"""The simulator paces as IB documents it: the hard limits for bars of 30 seconds or less (and head timestamps),
the 50-open cap for every size; `pacing_all_bar_sizes` plays a gateway that paces every size. Its universe can
grow to a nightly's hundreds of symbols."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from ib_async import IB, Stock

from ibkr_flows.ib.pacing_rules import MAX_OPEN
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.universe import DEFAULT_UNIVERSE, SYNTHETIC_CON_ID_BASE, Universe, synthetic_symbol

NOW = datetime(2024, 3, 8, 22, 0, tzinfo=UTC)
AAPL = Stock("AAPL", "SMART", "USD", conId=265598)
RULE_BURST = "6 or more requests for one contract and tick type within 2 s"


@pytest.fixture
def sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as running:
        yield running


def _burst(sim: EmbeddedSimulator, bar_size: str, count: int = 10, duration: str = "60 S") -> list[list]:
    """`count` requests for one contract sent at once, each a different minute of one session."""
    client = IB()
    client.RaiseRequestErrors = False
    client.connect(sim.host, sim.port, clientId=21, readonly=True, timeout=5)
    try:
        ends = [f"20240307-{15 + i // 60:02d}:{i % 60:02d}:00" for i in range(count)]
        return client.run(asyncio.gather(*(
            client.reqHistoricalDataAsync(AAPL, end, duration, bar_size, "TRADES", True, formatDate=2, timeout=30)
            for end in ends)))
    finally:
        client.disconnect()


@pytest.mark.parametrize(("bar_size", "duration"), [("1 min", "60 S"), ("1 hour", "1 D")])
def test_larger_bars_are_not_held_to_the_hard_limits(sim: EmbeddedSimulator, bar_size: str, duration: str) -> None:
    sim.update_faults(enforce_pacing=True)
    results = _burst(sim, bar_size, duration=duration)
    assert all(results)
    assert sim.snapshot()["pacing_violations"] == 0


def test_small_bars_are(sim: EmbeddedSimulator) -> None:
    sim.update_faults(enforce_pacing=True)
    results = _burst(sim, "30 secs")
    assert sum(1 for bars in results if bars) == 5
    assert sim.snapshot()["pacing_violations_by_rule"] == {RULE_BURST: 5}


def test_a_gateway_that_paces_every_size(sim: EmbeddedSimulator) -> None:
    sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=True)
    results = _burst(sim, "1 min")
    assert sum(1 for bars in results if bars) == 5
    assert sim.snapshot()["pacing_violations_by_rule"] == {RULE_BURST: 5}


def test_the_fifty_open_cap_holds_for_every_size(sim: EmbeddedSimulator) -> None:
    """Answers held back (latency) keep 50 one-minute requests open: the next ones are refused with 162."""
    sim.update_faults(enforce_pacing=True, latency_seconds=4.0)
    results = _burst(sim, "1 min", count=MAX_OPEN + 2)
    assert sum(1 for bars in results if bars) == MAX_OPEN
    assert sim.snapshot()["pacing_violations_by_rule"] == {"more than 50 simultaneous open historical requests": 2}


def test_a_synthetic_universe_serves_generated_symbols() -> None:
    universe = Universe.with_synthetic(3)
    assert len(universe.instruments) == len(DEFAULT_UNIVERSE) + 3
    with EmbeddedSimulator(clock=lambda: NOW, universe=universe) as running:
        client = IB()
        client.connect(running.host, running.port, clientId=22, readonly=True, timeout=5)
        try:
            [details] = client.reqContractDetails(Stock(synthetic_symbol(2), "SMART", "USD"))
            bars = client.reqHistoricalData(details.contract, NOW, "1 D", "1 min", "TRADES", True, formatDate=2)
        finally:
            client.disconnect()
    assert details.contract.conId == SYNTHETIC_CON_ID_BASE + 2
    assert len(bars) == 390 and all(bar.low <= bar.open <= bar.high for bar in bars)
