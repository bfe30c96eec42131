"""A large historical answer does not hold up the simulator's other clients: it is built off the event loop (in a
worker process), and it arrives complete and identical to what the generator gives for its window, encoded byte for
byte as a field-by-field encoding would."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from ib_async import IB, BarData, Stock

from ibkr_flows.ib.historical import BAR_SIZES
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.wire import encode_frame
from ibkr_flows.sim.answers import historical_bar_fields, historical_frame
from ibkr_flows.sim.bad_bars import inject_bad_bars
from ibkr_flows.sim.bars import SyntheticBars, as_listed, request_window
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.faults import BadBarKind
from ibkr_flows.sim.requests import ContractRef, HistoricalRequest, format_header_time
from ibkr_flows.sim.server import running_simulator
from ibkr_flows.sim.universe import LISTINGS, Instrument

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
AAPL = Stock("AAPL", "SMART", "USD", conId=265598)
SPY = Stock("SPY", "SMART", "USD", conId=756733)
MIDDAY = datetime(2024, 7, 12, 17, 0, tzinfo=UTC)
BIG = ("5 Y", "1 day")
"""Five years of extended-hours daily bars: built from ~1.2M generated minute bars, seconds of work."""
HELD = timedelta(days=365)
"""`GatedBars` holds windows longer than this."""
ZONE = ZoneInfo("America/New_York")


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


class GatedBars:
    """The generator's bars, except that a window longer than `HELD` is built only once the file `gate` exists (a
    test holds a large answer mid-build for as long as it needs); it writes the id of the process that built it
    next to the gate. Pickles without the generator's caches, so the simulator ships it to its worker processes."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate
        self.source = SyntheticBars()

    def __getstate__(self) -> dict[str, Any]:
        return {"gate": self.gate}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["gate"])  # type: ignore[misc]

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime, end: datetime,
             as_of: date | None = None) -> pl.DataFrame:
        if end - start > HELD:
            self.gate.with_suffix(".pid").write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not self.gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return self.source.bars(symbol, bar_size, what_to_show, use_rth, start, end, as_of)

    def head_timestamp(self, symbol: str, what_to_show: str, use_rth: bool) -> datetime:
        return self.source.head_timestamp(symbol, what_to_show, use_rth)


def test_small_requests_are_answered_while_a_large_answer_is_held_mid_build(tmp_path: Path) -> None:
    """Causality, not timing: the large answer is held mid-build (in a worker process) until the small requests
    sent after it, on its own connection and on a new one, have all been answered; only then may it finish. Were
    any small answer queued behind the large build, it would never come and the test would time out."""
    gate = tmp_path / "gate"

    async def scenario(port: int) -> tuple[list[BarData], list[str], bool, int]:
        big, other = IB(), IB()
        await big.connectAsync("127.0.0.1", port, clientId=1, readonly=True, timeout=5)
        try:
            large = asyncio.create_task(big.reqHistoricalDataAsync(AAPL, "", *BIG, "TRADES", False, formatDate=2,
                                                                   timeout=120))
            while not gate.with_suffix(".pid").exists():  # the large answer is being built, and held
                await asyncio.sleep(0.01)
            events = []
            await other.connectAsync("127.0.0.1", port, clientId=2, readonly=True, timeout=5)
            events.append("handshake")
            head = await asyncio.wait_for(big.reqHeadTimeStampAsync(SPY, "TRADES", True, 2), 10)
            events.append(f"head timestamp {head:%Y-%m-%d}")
            details = await asyncio.wait_for(big.reqContractDetailsAsync(SPY), 10)
            events.append(f"{len(details)} contract details")
            await asyncio.wait_for(other.reqCurrentTimeAsync(), 10)
            events.append("current time")
            small = await other.reqHistoricalDataAsync(SPY, MIDDAY, "1800 S", "1 min", "TRADES", True, formatDate=2,
                                                       timeout=10)
            events.append(f"{len(small)} small bars")
            held = not large.done()
            gate.touch()
            return list(await large), events, held, int(gate.with_suffix(".pid").read_text())
        finally:
            gate.touch()
            big.disconnect()
            other.disconnect()

    with EmbeddedSimulator(clock=lambda: NOW, bar_source=GatedBars(gate)) as running:
        bars, events, held, builder = asyncio.run(scenario(running.port))
    first_spy = SyntheticBars().head_timestamp("SPY", "TRADES", True)
    assert events == ["handshake", f"head timestamp {first_spy:%Y-%m-%d}", "1 contract details", "current time",
                      "30 small bars"]
    assert held  # every small answer came while the large one was held mid-build
    assert builder != os.getpid()  # built in a worker process: it could not hold the simulator's interpreter lock
    assert _received(bars) == _expected(*BIG)


def _serve_one_large_answer(bar_counts: multiprocessing.Queue) -> None:
    """In a child process: a simulator answers one large request (starting its worker processes), then stops."""

    async def run() -> None:
        async with running_simulator(clock=lambda: NOW) as sim:
            client = IB()
            await client.connectAsync("127.0.0.1", sim.port, clientId=1, readonly=True, timeout=10)
            bars = await client.reqHistoricalDataAsync(AAPL, "", *BIG, "TRADES", False, formatDate=2, timeout=120)
            bar_counts.put(len(bars))
            client.disconnect()

    asyncio.run(run())


def test_a_process_started_by_multiprocessing_ends_after_serving_a_large_answer() -> None:
    """multiprocessing makes a child wait for its own children before the worker pool's exit hook would stop
    them: the simulator stops its workers first, so the child ends (it would hang forever otherwise)."""
    context = multiprocessing.get_context("spawn")
    bar_counts = context.Queue()
    child = context.Process(target=_serve_one_large_answer, args=(bar_counts,))
    child.start()
    try:
        assert bar_counts.get(timeout=120) == len(_expected(*BIG))
        child.join(60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()


class UnshippedBars(SyntheticBars):
    """The generator under another name: its caches do not pickle, so the simulator cannot ship it to a worker
    process and builds its large answers on a worker thread."""


@pytest.mark.parametrize("source", [SyntheticBars, UnshippedBars], ids=["worker process", "worker thread"])
def test_inline_and_off_loop_answers_are_identical(source: type[SyntheticBars]) -> None:
    """The same requests answered on the loop (a limit no window reaches) and off it (a limit every window exceeds:
    in a worker process, or on a thread for a source that does not pickle): the same bars."""
    answers = []
    for limit in (10**12, 0):
        with EmbeddedSimulator(clock=lambda: NOW, inline_answer_limit=limit, bar_source=source()) as running:
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


def _instrument(symbol: str) -> Instrument:
    """A US stock, or the simulator's listing of `symbol` (a future: the front contract at `NOW`)."""
    listed = [i for i in LISTINGS if i.symbol == symbol and (i.last_trade_date or "99") > f"{NOW:%Y%m%d}"]
    return min(listed, key=lambda i: i.last_trade_date) if listed else Instrument(symbol, 265598, "NASDAQ", symbol)


def _request(bar_size: str, format_date: int, what_to_show: str = "TRADES") -> HistoricalRequest:
    contract = ContractRef(0, "X", "STK", "", 0.0, "", "", "SMART", "", "USD", "", "")
    return HistoricalRequest(7, contract, "", bar_size, "", False, what_to_show, format_date, False)


def _field_by_field(req: HistoricalRequest, start: datetime, end: datetime, bars: pl.DataFrame) -> bytes:
    daily = BAR_SIZES[req.bar_size] >= timedelta(days=1)
    header = [ServerMessage.HISTORICAL_DATA, req.req_id, format_header_time(start, ZONE), format_header_time(end, ZONE),
              bars.height]
    return encode_frame(header + historical_bar_fields(bars, daily, req.format_date, ZONE))


@pytest.mark.parametrize(("listing", "bar_size", "duration", "what_to_show"), [
    ("AAPL", "1 secs", "1800 S", "TRADES"),
    ("AAPL", "1 min", "2 D", "TRADES"),
    ("AAPL", "1 hour", "1 W", "BID_ASK"),
    ("AAPL", "1 day", "1 Y", "MIDPOINT"),
    ("AAPL", "1 week", "2 Y", "ADJUSTED_LAST"),
    ("EUR", "5 mins", "2 D", "MIDPOINT"),
    ("SPX", "1 min", "1 D", "TRADES"),
    ("ES", "1 month", "5 Y", "TRADES"),
])
def test_the_vectorized_encoding_is_the_field_by_field_one(listing: str, bar_size: str, duration: str,
                                                           what_to_show: str) -> None:
    """Frames printed by polars in one pass are byte for byte those encoded field by field in Python, in both
    time formats, for stocks, a currency pair, an index and a future, quotes, and bars corrupted on purpose."""
    inst = _instrument(listing)
    start, end = request_window(NOW, duration, bar_size=bar_size, use_rth=False)
    bars = as_listed(SyntheticBars().bars(inst.series, bar_size, what_to_show, False, start, end, NOW.date()), inst)
    assert bars.height
    for format_date in (1, 2):
        req = _request(bar_size, format_date, what_to_show)
        assert historical_frame(req, start, end, bars, ZONE) == _field_by_field(req, start, end, bars)
    every = {BadBarKind.HIGH_BELOW_LOW: 5, BadBarKind.NEGATIVE_VOLUME: 7, BadBarKind.DUPLICATE_TS: 11,
             BadBarKind.MISALIGNED_TS: 13}
    req = _request(bar_size, 1, what_to_show)
    bad = inject_bad_bars(listing, req, bars, every, [])
    assert historical_frame(req, start, end, bad, ZONE) == _field_by_field(req, start, end, bad)


def test_values_polars_prints_otherwise_are_encoded_field_by_field() -> None:
    """Below 1e-4 polars prints `0.00005` where Python prints `5e-05`, and NaN as `NaN`: such frames are encoded
    field by field, exactly as TWS's format (Python's) has them."""
    start = datetime(2024, 7, 12, 13, 30, tzinfo=UTC)
    bars = pl.DataFrame({
        "ts": [start, start + timedelta(minutes=1)], "open": [0.00005, 1.5], "high": [0.0001, 1.6],
        "low": [0.00004, 1.4], "close": [0.00005, float("nan")], "volume": [0.0, 10.0], "wap": [-1.0, 1.5],
        "count": [0, 3],
    }, schema={"ts": pl.Datetime("us", "UTC"), **{c: pl.Float64() for c in ("open", "high", "low", "close",
                                                                              "volume", "wap")}, "count": pl.Int64()})
    req = _request("1 min", 2)
    frame = historical_frame(req, start, start + timedelta(minutes=2), bars, ZONE)
    assert frame == _field_by_field(req, start, start + timedelta(minutes=2), bars)
    assert b"\x005e-05\x00" in frame and b"\x00nan\x00" in frame
