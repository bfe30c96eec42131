"""A large historical answer does not hold up the simulator's other clients: it is built off the event loop, and it
arrives complete and identical to what the generator gives for its window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from ib_async import IB, BarData, Stock

from ibkr_flows.sim.bars import SyntheticBars, request_window
from ibkr_flows.sim.embedded import EmbeddedSimulator

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
AAPL = Stock("AAPL", "SMART", "USD", conId=265598)
SPY = Stock("SPY", "SMART", "USD", conId=756733)
MIDDAY = datetime(2024, 7, 12, 17, 0, tzinfo=UTC)
BIG = ("5 Y", "1 day")
"""Five years of extended-hours daily bars: built from ~1.2M generated minute bars, seconds of work."""


@pytest.fixture
def sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as running:
        yield running


def _expected(duration: str, bar_size: str) -> list[tuple[date, float, float, float, float, float]]:
    start, end = request_window(NOW, duration, bar_size=bar_size, use_rth=False)
    frame = SyntheticBars().bars("AAPL", bar_size, "TRADES", False, start, end)
    return [(ts.date(), o, h, low, c, v) for ts, o, h, low, c, v in
            frame.select("ts", "open", "high", "low", "close", "volume").iter_rows()]


def _received(bars: list[BarData]) -> list[tuple[date, float, float, float, float, float]]:
    return [(b.date, b.open, b.high, b.low, b.close, b.volume) for b in bars]  # type: ignore[misc]


def test_other_clients_are_answered_while_a_large_answer_is_built(sim: EmbeddedSimulator) -> None:
    """While one client's five years of daily bars are being built, another client's round trips (the current
    time, a small historical request) keep being answered; then the large answer arrives, complete."""

    async def scenario() -> tuple[list[BarData], list[str]]:
        big, other = IB(), IB()
        await big.connectAsync(sim.host, sim.port, clientId=1, readonly=True, timeout=5)
        await other.connectAsync(sim.host, sim.port, clientId=2, readonly=True, timeout=5)
        try:
            large = asyncio.create_task(big.reqHistoricalDataAsync(AAPL, "", *BIG, "TRADES", False, formatDate=2,
                                                                   timeout=300))
            while not sim.snapshot()["requests"].get("reqHistoricalData"):  # the simulator has the large request
                await asyncio.sleep(0.005)
            events = []
            for _ in range(3):
                await other.reqCurrentTimeAsync()
                events.append("current time" + ("" if large.done() else " (large pending)"))
            small = await other.reqHistoricalDataAsync(SPY, MIDDAY, "1800 S", "1 min", "TRADES", True, formatDate=2)
            events.append(f"{len(small)} small bars" + ("" if large.done() else " (large pending)"))
            return list(await large), events
        finally:
            big.disconnect()
            other.disconnect()

    bars, events = asyncio.run(scenario())
    assert sum(event.endswith("(large pending)") for event in events) >= 3, events
    assert events[-1].startswith("30 small bars")
    assert _received(bars) == _expected(*BIG)


def test_inline_and_worker_thread_answers_are_identical() -> None:
    """The same request answered on the loop (a limit no window reaches) and on a worker thread (a limit every
    window exceeds): byte for byte the same bars."""
    answers = []
    for limit in (10**12, 0):
        with EmbeddedSimulator(clock=lambda: NOW, inline_answer_limit=limit) as running:
            client = IB()
            client.connect(running.host, running.port, clientId=3, readonly=True, timeout=5)
            try:
                answers.append([_received(client.reqHistoricalData(AAPL, "", "1 Y", "1 day", "TRADES", False,
                                                                   formatDate=2)),
                                _received(client.reqHistoricalData(AAPL, NOW, "1 D", "1 min", "TRADES", False,
                                                                   formatDate=2))])
            finally:
                client.disconnect()
    assert answers[0] == answers[1]
    assert answers[0][0] == _expected("1 Y", "1 day")
    assert answers[0][1]


@pytest.mark.parametrize(("bar_size", "span"), [("1 week", timedelta(days=7)), ("1 month", timedelta(days=31))])
def test_a_long_window_built_in_pieces_gives_the_same_bars_as_short_windows(bar_size: str, span: timedelta) -> None:
    """Two years of weekly or monthly bars are built a few weeks at a time (`bar_parts`): no bar is cut where two
    pieces meet, each equals the bar a window holding only its own period returns."""
    source = SyntheticBars()
    start, end = request_window(NOW, "2 Y", bar_size=bar_size, use_rth=True)
    long_window = source.bars("MSFT", bar_size, "TRADES", True, start, end)
    assert long_window.height > 20
    for row in long_window.iter_rows(named=True):
        ts = row["ts"]
        alone = source.bars("MSFT", bar_size, "TRADES", True, ts, min(ts + span, end))  # its period, maybe the next
        assert alone.row(0, named=True) == row
