"""Splits and dividends met by ingestion (issue 16): the real ib_async client against the simulator living on a
day before an event, then on a day after it, into real Delta tables. The re-fetched overlap shows the event; the
stored history is put on IB's new scale in one commit and the action recorded, once; a difference that is no
split or dividend is reported and the stored history left alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.bars import SyntheticBars
from ibkr_flows.sim.corporate_actions import DIVIDENDS
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.corporate_actions_table import read_actions
from storage.location import TableLocation

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=5)
PRICES = ["open", "high", "low", "close"]


class MovableClock:
    """The simulator's now (and so the day whose splits and dividends its bars reflect), set by the test."""

    def __init__(self) -> None:
        self.now = datetime(2020, 8, 28, 22, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def evening_of(self, day: date) -> datetime:
        self.now = datetime.combine(day, time(22), tzinfo=UTC)
        return self.now


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def tws(clock: MovableClock) -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=clock) as sim:
        yield sim


def ingest(sim: EmbeddedSimulator, location: TableLocation, symbol: str, start: date, end: datetime,
           what_to_show: str = "TRADES") -> IngestReport:
    """Ingest daily bars up to `end`, the simulator's now (ADJUSTED_LAST takes no end date: it is TWS's now)."""
    request = IngestRequest(symbols=[symbol], bar_size="1 day", what_to_show=what_to_show,
                            start=datetime.combine(start, time(0), tzinfo=UTC),
                            end=None if what_to_show == "ADJUSTED_LAST" else end, quality_engine="polars",
                            request_timeout_s=5)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=71, connect_timeout=2.0)
    budget = PacingBudget(Path(str(location.root)) / "pacing.json", time_scale=0.01)
    report = asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))
    assert [s.status for s in report.symbols] == ["ok"], [s.error for s in report.symbols]
    return report


def stored(location: TableLocation, what_to_show: str = "TRADES") -> pl.DataFrame:
    return pl.read_delta(location.bars).filter(what_to_show=what_to_show).sort("ts")


def served(symbol: str, what_to_show: str, start: date, as_of: date) -> pl.DataFrame:
    """What IB serves on `as_of` for the whole range: what the stored series must equal."""
    return SyntheticBars().bars(symbol, "1 day", what_to_show, True, datetime.combine(start, time(0), tzinfo=UTC),
                                datetime.combine(as_of, time(23), tzinfo=UTC), as_of)


def test_a_split_since_the_last_run_puts_the_stored_history_on_the_new_scale_once(
        tws: EmbeddedSimulator, clock: MovableClock, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    first = ingest(tws, location, "AAPL", date(2020, 6, 1), clock.evening_of(date(2020, 8, 28)))
    assert first.corporate_actions == []
    before = stored(location)
    assert before["close"][-1] > 400  # AAPL before its 4:1 of 2020-08-31 traded near $500

    report = ingest(tws, location, "AAPL", date(2020, 6, 1), clock.evening_of(date(2020, 9, 4)))
    assert len(report.corporate_actions) == 1 and "split effective 2020-08-31" in report.corporate_actions[0]
    after = stored(location)
    expected = served("AAPL", "TRADES", date(2020, 6, 1), date(2020, 9, 4))
    assert after["ts"].to_list() == expected["ts"].to_list()
    for column in [*PRICES, "volume"]:
        assert after[column].to_list() == pytest.approx(expected[column].to_list(), rel=1e-12), column
    actions = read_actions(location, "AAPL")
    assert actions.select("kind", "factor", "effective_date").rows() == [("split", 4.0, date(2020, 8, 31))]
    action = actions.row(0, named=True)
    version_before = action["bars_version_before"]
    assert action["bars_version_after"] == version_before + 1  # one commit re-scaled the history
    july = pl.col("ts") < datetime(2020, 8, 1, tzinfo=UTC)
    old = pl.read_delta(location.bars, version=version_before).filter(july).sort("ts")
    assert old["close"].to_list() == before.filter(july)["close"].to_list()  # time travel keeps the old scale

    again = ingest(tws, location, "AAPL", date(2020, 6, 1), clock.now)
    assert again.corporate_actions == [] and again.symbols[0].rows_updated == 0
    assert read_actions(location).height == 1


def test_a_dividend_in_the_adjusted_series_is_recorded_and_the_series_replaced(
        tws: EmbeddedSimulator, clock: MovableClock, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    dividend = next(d for d in DIVIDENDS if d.symbol == "MSFT" and d.effective.year == 2024
                    and d.effective.month == 5)
    ingest(tws, location, "MSFT", date(2024, 3, 1), clock.evening_of(date(2024, 5, 17)), "ADJUSTED_LAST")
    report = ingest(tws, location, "MSFT", date(2024, 3, 1), clock.evening_of(date(2024, 5, 24)), "ADJUSTED_LAST")
    assert len(report.corporate_actions) == 1 and "dividend" in report.corporate_actions[0]
    action = read_actions(location, "MSFT").row(0, named=True)
    assert action["kind"] == "dividend" and action["effective_date"] == date(2024, 5, 20)  # ex 05-18, a Saturday
    trades = served("MSFT", "TRADES", date(2024, 5, 1), date(2024, 5, 24))
    previous_close = trades.filter(pl.col("ts") < datetime.combine(dividend.effective, time(0), tzinfo=UTC))["close"]
    assert action["factor"] == pytest.approx(1 / (1 - dividend.value / previous_close[-1]), rel=1e-5)
    expected = served("MSFT", "ADJUSTED_LAST", date(2024, 3, 1), date(2024, 5, 24))
    assert stored(location, "ADJUSTED_LAST")["close"].to_list() == pytest.approx(expected["close"].to_list())


def test_a_difference_that_is_no_split_is_reported_and_left_alone(tws: EmbeddedSimulator, clock: MovableClock,
                                                                  tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    ingest(tws, location, "AAPL", date(2020, 6, 1), clock.evening_of(date(2020, 8, 28)))
    # Someone's hand-edited closes inside the next run's overlap: 3 % up, on the closes only.
    edited = datetime(2020, 8, 24, tzinfo=UTC), datetime(2020, 8, 27, tzinfo=UTC)
    DeltaTable(str(location.bars)).update(
        updates={"close": "close * 1.03"},
        predicate=f"ts >= '{edited[0].isoformat()}' AND ts <= '{edited[1].isoformat()}'")
    untouched = stored(location).filter(pl.col("ts") < edited[0])
    report = ingest(tws, location, "AAPL", date(2020, 6, 1), clock.evening_of(date(2020, 8, 28)))
    assert report.corporate_actions == []
    notes = [w for w in report.quality_warnings if "differ from IB's fresh ones" in w]
    assert len(notes) == 1 and "stored history left as it is" in notes[0]
    assert stored(location).filter(pl.col("ts") < edited[0]).equals(untouched)
    assert read_actions(location).is_empty()
