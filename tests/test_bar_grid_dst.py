"""Multi-hour bars on the daylight-saving Sundays (issue 15): CME Globex futures (ES, NQ, CL) and EUR.USD with all
hours open on Sunday evening New York, the first session after the clocks changed that morning (2025-03-09, second
Sunday of March; 2025-11-02, first Sunday of November). IB's intraday grid is the multiples of the bar size on the
exchange's wall clock from its midnight, a session's first bar starting at its open (`ib.sessions.grid_offset`);
the simulator builds its bars on that grid and the quality checks hold bars to it, so every served bar is accepted
and stored, and each session holds as many bars as on any other evening.

Hand-worked starts, New York time, of the session opening on either Sunday (same wall clock, one hour apart in
UTC: Globex opens 22:00 UTC in March, 23:00 UTC in November):
- ES 4 hours: Sun 18:00 (to 20:00), 20:00, Mon 00:00, 04:00, 08:00, 12:00, 16:00 (to the 17:00 close): 7;
- ES 3 hours: Sun 18:00, 21:00, Mon 00:00, 03:00, ..., 15:00: 8;
- NQ 2 hours: Sun 18:00, 20:00, 22:00, Mon 00:00, 02:00, ..., 16:00: 12;
- CL 8 hours: Sun 18:00, Mon 00:00, 08:00, 16:00: 4;
- EUR.USD 2 hours: Sun 17:00 (to 18:00), 18:00, 20:00, 22:00, Mon 00:00, ..., 16:00: 13.
Counting hours elapsed since Sunday's midnight instead (the old quality rule) put that evening's 4-hour lines an
hour off (17:00 and 21:00 in March, 19:00 and 23:00 in November) and quarantined the 20:00 bar.

Real parts: the real ib_async client against the embedded simulator, the project's ingestion into real Delta
tables, real zoneinfo and exchange_calendars.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from ib_async import IB, BarDataList, Contract, Forex, Future

from ibkr_flows.ib.calendars import (
    CME_GLOBEX,
    FX_24_5,
    bar_spans,
    calendar_named,
    full_session_bars,
    session_bar_count,
    session_dates,
)
from ibkr_flows.ib.historical import bar_step
from ibkr_flows.ib.sessions import bar_start, grid_offset, grid_offsets
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.quality.validate import validate_bars
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.location import TableLocation
from tests.helpers_instruments import client_at_now

NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2025, 11, 7, 22, tzinfo=UTC)
"""A Friday evening after both changes: the December 2025 contracts still trade."""
SPRING, AUTUMN = date(2025, 3, 10), date(2025, 11, 3)
"""The sessions opening on the daylight-saving Sundays (Globex and FX label them with Monday's trade date)."""
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=5)

EVENING_4H = ["Sun 18:00", "Sun 20:00", "Mon 00:00", "Mon 04:00", "Mon 08:00", "Mon 12:00", "Mon 16:00"]
EVENING_3H = ["Sun 18:00", "Sun 21:00", *[f"Mon {h:02d}:00" for h in range(0, 16, 3)]]
GLOBEX_2H = ["Sun 18:00", "Sun 20:00", "Sun 22:00", *[f"Mon {h:02d}:00" for h in range(0, 17, 2)]]
EVENING_8H = ["Sun 18:00", "Mon 00:00", "Mon 08:00", "Mon 16:00"]
FX_2H = ["Sun 17:00", *GLOBEX_2H]

INSTRUMENTS = {"FUT:ES@CME:202512": CME_GLOBEX, "FUT:NQ@CME:202512": CME_GLOBEX, "FUT:CL@NYMEX:202512": CME_GLOBEX,
               "CASH:EUR.USD@IDEALPRO": FX_24_5}
WINDOWS = {SPRING: (datetime(2025, 3, 6, 12, tzinfo=UTC), datetime(2025, 3, 12, 12, tzinfo=UTC)),
           AUTUMN: (datetime(2025, 10, 30, 12, tzinfo=UTC), datetime(2025, 11, 5, 12, tzinfo=UTC))}
"""Thursday noon to Wednesday noon UTC: the Friday, Monday (the Sunday evening's) and Tuesday sessions whole."""
SIZES = ("2 hours", "4 hours", "8 hours")
SUNDAY_EVENINGS = {
    "2 hours": {CME_GLOBEX: GLOBEX_2H, FX_24_5: FX_2H},
    "4 hours": {CME_GLOBEX: EVENING_4H, FX_24_5: ["Sun 17:00", *EVENING_4H[1:]]},
    "8 hours": {CME_GLOBEX: EVENING_8H, FX_24_5: ["Sun 17:00", *EVENING_8H[1:]]},
}
"""The hand-worked starts of the Sunday evening's bars, per bar size and calendar (FX opens at 17:00)."""


def new_york_starts(stamps: list[datetime]) -> list[str]:
    return [ts.astimezone(NEW_YORK).strftime("%a %H:%M") for ts in stamps]


def served(bars: BarDataList) -> list[str]:
    return new_york_starts([b.date for b in bars])


# -- the grid itself ---------------------------------------------------------------------------------------------


def test_the_grid_is_the_exchanges_wall_clock_on_the_change_days() -> None:
    """Sunday 20:00 New York is a 4-hour line on both Sundays, 19:00 is an hour past one, whatever UTC offset
    Sunday's midnight had; the column rule gives the same offsets as the scalar one over every minute of both
    weeks, in New York and in Frankfurt (whose clocks change on other Sundays)."""
    four = timedelta(hours=4)
    for sunday in (date(2025, 3, 9), date(2025, 11, 2)):
        at = datetime(sunday.year, sunday.month, sunday.day, 20, tzinfo=NEW_YORK)
        assert grid_offset(at, four, NEW_YORK) == timedelta(0)
        assert grid_offset(at - timedelta(hours=1), four, NEW_YORK) == timedelta(hours=3)
    minutes = pl.concat([pl.datetime_range(start, end, timedelta(minutes=1), closed="left", time_zone="UTC",
                                           eager=True) for start, end in WINDOWS.values()])
    for zone in (NEW_YORK, ZoneInfo("Europe/Berlin")):
        for size in ("30 mins", "1 hour", "2 hours", "3 hours", "4 hours", "8 hours"):
            step = bar_step(size)
            column = pl.select(grid_offsets(pl.lit(minutes), step, zone)).to_series().to_list()
            assert column == [grid_offset(ts, step, zone) for ts in minutes.to_list()], (zone, size)


# -- served by the simulator ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ib() -> Iterator[IB]:
    with client_at_now(66, clock=lambda: NOW) as client:
        yield client


CLOSES = {SPRING: "20250310-21:00:00", AUTUMN: "20251103-22:00:00"}
"""Monday's 17:00 New York close (EDT in March, EST in November), as UTC request ends."""


@pytest.mark.parametrize("session", [SPRING, AUTUMN])
@pytest.mark.parametrize(("contract", "bar_size", "what_to_show", "expected"), [
    (Future("ES", "202512", "CME"), "4 hours", "TRADES", EVENING_4H),
    (Future("ES", "202512", "CME"), "3 hours", "TRADES", EVENING_3H),
    (Future("NQ", "202512", "CME"), "2 hours", "TRADES", GLOBEX_2H),
    (Future("CL", "202512", "NYMEX"), "8 hours", "TRADES", EVENING_8H),
    (Forex("EURUSD"), "2 hours", "MIDPOINT", FX_2H),
])
def test_the_simulator_serves_the_sunday_evening_on_the_clock_grid(
        ib: IB, contract: Contract, bar_size: str, what_to_show: str, expected: list[str], session: date) -> None:
    bars = ib.reqHistoricalData(contract, CLOSES[session], "1 D", bar_size, what_to_show, False, formatDate=2)
    assert served(bars) == expected
    calendar = FX_24_5 if isinstance(contract, Forex) else CME_GLOBEX
    assert bars[0].date == calendar_named(calendar).session_bounds(session, use_rth=False)[0]  # an hour apart in UTC
    assert len(bars) == session_bar_count(calendar, session, False, bar_step(bar_size)) == full_session_bars(
        calendar, False, bar_step(bar_size))


@pytest.mark.parametrize("session", [SPRING, AUTUMN])
def test_bar_start_finds_each_served_bar_from_any_instant_inside_it(ib: IB, session: date) -> None:
    """`bar_start` (the simulator's keepUpToDate bar) agrees with the bars it serves: every minute of a 4-hour bar
    maps to that bar's start."""
    step = timedelta(hours=4)
    bars = ib.reqHistoricalData(Future("ES", "202512", "CME"), CLOSES[session], "1 D", "4 hours", "TRADES", False,
                                formatDate=2)
    close = calendar_named(CME_GLOBEX).session_bounds(session, use_rth=False)[1]
    ends = [b.date for b in bars[1:]] + [close]
    for bar, end in zip(bars, ends, strict=True):
        inside = pl.datetime_range(bar.date, end, timedelta(minutes=1), closed="left", time_zone="UTC", eager=True)
        assert {bar_start(minute, step, False, CME_GLOBEX) for minute in inside} == {bar.date}


# -- ingested through the normal path ----------------------------------------------------------------------------


Ingested = tuple[dict[tuple[str, date], TableLocation], list[IngestReport]]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingested]:
    """ES, NQ, CL and EUR.USD in 2-, 4- and 8-hour bars, all hours, over the week of each change: one table per
    bar size and week (one table for both would have its second run resume from the first's watermark and fetch
    the months between)."""
    locations, reports = {}, []
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        for client_id, (size, session) in enumerate(((s, d) for s in SIZES for d in WINDOWS), start=40):
            location = TableLocation(tmp_path_factory.mktemp(f"{size.replace(' ', '_')}_{session}"))
            start, end = WINDOWS[session]
            request = IngestRequest(symbols=tuple(INSTRUMENTS), bar_size=size, use_rth=False, start=start, end=end,
                                    quality_engine="polars", request_timeout_s=5)
            settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
            budget = PacingBudget(Path(str(location.root)) / "pacing.json", time_scale=0.01)
            reports.append(asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST)))
            locations[size, session] = location
    yield locations, reports


def test_every_served_bar_passes_the_checks_and_is_stored(ingested: Ingested) -> None:
    _, reports = ingested
    for report in reports:
        for symbol in report.symbols:
            assert (symbol.status, symbol.rows_quarantined, symbol.gap_bars) == ("ok", 0, 0), symbol
            assert symbol.rows_inserted == symbol.rows_fetched > 0, symbol


@pytest.mark.parametrize("session", list(WINDOWS))
@pytest.mark.parametrize("size", SIZES)
def test_each_session_holds_the_bars_of_any_other_evening(ingested: Ingested, size: str, session: date) -> None:
    """Per instrument, the Friday, Monday (Sunday evening) and Tuesday sessions of the week hold a full session's
    bars each, and the Sunday evening's are the hand-worked ones."""
    locations, _ = ingested
    stored = pl.read_delta(str(locations[size, session].bars))
    friday, tuesday = session - timedelta(days=3), session + timedelta(days=1)
    for symbol, calendar in INSTRUMENTS.items():
        bars = stored.filter(pl.col("symbol") == symbol).with_columns(session=session_dates(pl.col("ts"), calendar))
        per_session = dict(bars.group_by("session").len().rows())
        full = full_session_bars(calendar, False, bar_step(size))
        assert [per_session[day] for day in (friday, session, tuesday)] == [full] * 3, symbol
        evening = bars.filter(pl.col("session") == session).sort("ts")["ts"].to_list()
        assert new_york_starts(evening) == SUNDAY_EVENINGS[size][calendar], symbol


def test_a_bar_on_the_elapsed_hours_lines_is_still_quarantined(ingested: Ingested) -> None:
    """The check is not loosened: moving the Sunday 20:00 ES bar of March to 21:00 (a line of the old,
    elapsed-hours rule that evening) quarantines it as misaligned."""
    locations, _ = ingested
    es = pl.read_delta(str(locations["4 hours", SPRING].bars)).filter(
        (pl.col("symbol") == "FUT:ES@CME:202512") & (session_dates(pl.col("ts"), CME_GLOBEX) == SPRING)).sort("ts")
    sunday_20 = datetime(2025, 3, 10, 0, tzinfo=UTC)
    sunday_21 = sunday_20 + timedelta(hours=1)
    moved = es.with_columns(ts=pl.when(pl.col("ts") == sunday_20).then(pl.lit(sunday_21)).otherwise(pl.col("ts")))
    result = validate_bars(moved, bar_size="4 hours", use_rth=False, what_to_show="TRADES", sec_type="FUT",
                           calendar=CME_GLOBEX, engine="polars")
    assert result.quarantined.select("ts", "failed_check").rows() == [(sunday_21, "aligned_ts")]
    assert validate_bars(es, bar_size="4 hours", use_rth=False, what_to_show="TRADES", sec_type="FUT",
                         calendar=CME_GLOBEX, engine="polars").quarantined.is_empty()


def test_every_full_globex_and_fx_session_holds_as_many_multi_hour_bars() -> None:
    """Over 2015-2024 no 23-hour Globex session or 24-hour FX session holds more or fewer 2-, 3-, 4- or 8-hour bars
    than the others: the daylight-saving Sundays included (the old count gave them one bar less or more)."""
    for calendar, hours in ((CME_GLOBEX, timedelta(hours=23)), (FX_24_5, timedelta(hours=24))):
        cal = calendar_named(calendar)
        full = [day for day in cal.sessions(date(2015, 1, 1), date(2024, 12, 31))
                if sum((end - start for start, end in bar_spans(calendar, day, False)), timedelta()) == hours]
        assert {date(2024, 3, 11), date(2024, 11, 4)} <= set(full)  # the sessions opening on 2024's change days
        for size in ("2 hours", "3 hours", "4 hours", "8 hours"):
            step = bar_step(size)
            counts = {session_bar_count(calendar, day, False, step) for day in full}
            assert counts == {full_session_bars(calendar, False, step)}, (calendar, size)
