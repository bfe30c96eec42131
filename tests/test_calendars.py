"""Session calendars per instrument (issue 15): which calendar an instrument trades on, each calendar's sessions,
hours and trade dates, and planning, quality and the simulator's bars following them. Real exchange_calendars,
real polars checks, the simulator's real bar generator."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from ibkr_flows.ib import sessions
from ibkr_flows.ib.calendars import (
    CME_GLOBEX,
    FX_24_5,
    UnknownSessionCalendarError,
    bar_spans,
    calendar_for,
    calendar_named,
    session_bar_count,
)
from ibkr_flows.ingest.plan import plan_chunks
from ibkr_flows.quality.validate import validate_bars
from ibkr_flows.sim.bars import SyntheticBars, request_window
from ibkr_flows.sim.universe import LISTINGS
from storage.schema import BAR_COLUMNS

NEW_YORK = ZoneInfo("America/New_York")
FRANKFURT = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")


def ny(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=NEW_YORK).astimezone(UTC)


@pytest.mark.parametrize(("sec_type", "exchange", "primary", "zone", "calendar"), [
    ("STK", "SMART", "NASDAQ", "US/Eastern", "XNYS"),
    ("STK", "IBIS", "IBIS", "MET", "XETR"),
    ("STK", "SMART", "TSEJ", "Japan", "XTKS"),
    ("STK", "LSE", "LSE", "Europe/London", "XLON"),
    ("STK", "SMART", "FWB2", "MET", "XETR"),  # an exchange not in the table: its time zone decides
    ("IND", "CBOE", "CBOE", "US/Central", "XNYS"),
    ("FUT", "CME", "CME", "US/Central", CME_GLOBEX),
    ("CONTFUT", "CME", "", "US/Central", CME_GLOBEX),
    ("CASH", "IDEALPRO", "", "US/Eastern", FX_24_5),
])
def test_each_instrument_maps_to_its_calendar(sec_type: str, exchange: str, primary: str, zone: str,
                                              calendar: str) -> None:
    assert calendar_for(sec_type, exchange, primary, zone) == calendar


def test_an_unknown_listing_is_refused_with_the_fix() -> None:
    with pytest.raises(UnknownSessionCalendarError, match=r"add its exchange to ibkr_flows\.ib\.calendars"):
        calendar_for("STK", "SEHK", "SEHK", "Hongkong")
    with pytest.raises(UnknownSessionCalendarError, match="only CME Globex futures"):
        calendar_for("FUT", "EUREX", "EUREX", "MET")


def test_the_nyse_calendar_is_ib_sessions_unchanged() -> None:
    start, end = datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 12, 3, tzinfo=UTC)
    cal = calendar_named("XNYS")
    days = cal.sessions_between(start, end)
    assert days == sessions.sessions_between(start, end)
    assert date(2024, 11, 28) not in days  # Thanksgiving
    for day in days:
        for use_rth in (True, False):
            assert cal.session_bounds(day, use_rth) == sessions.session_bounds(day, use_rth)
    assert cal.sessions_before(end, 3, True) == sessions.sessions_before(end, 3, True)


def test_xetra_has_its_own_holidays_and_frankfurt_hours_through_dst() -> None:
    cal = calendar_named("XETR")
    assert cal.sessions(date(2024, 12, 20), date(2024, 12, 31)) == [
        date(2024, 12, 20), date(2024, 12, 23), date(2024, 12, 27), date(2024, 12, 30)]  # 24-26 and 31 closed
    for day in (date(2025, 1, 9), date(2025, 7, 9)):  # the 9th of January: NYSE closed, Xetra open
        open_, close = cal.session_bounds(day, use_rth=True)
        assert (open_.astimezone(FRANKFURT).time(), close.astimezone(FRANKFURT).time()) == (time(9), time(17, 30))
        assert cal.session_bounds(day, use_rth=False) == (open_, close)
    with pytest.raises(KeyError):
        cal.session_bounds(date(2024, 12, 24), use_rth=True)


def test_globex_opens_sunday_evening_with_a_daily_break_and_cme_holidays() -> None:
    cal = calendar_named(CME_GLOBEX)
    monday, tuesday = date(2025, 1, 6), date(2025, 1, 7)
    assert cal.session_bounds(monday, use_rth=False) == (ny(date(2025, 1, 5), 18), ny(monday, 17))
    assert cal.session_bounds(monday, use_rth=True) == (ny(monday, 9, 30), ny(monday, 16))
    break_ = cal.session_bounds(tuesday, use_rth=False)[0] - cal.session_bounds(monday, use_rth=False)[1]
    assert break_ == timedelta(hours=1)  # 17:00-18:00 maintenance
    assert cal.session_day(ny(date(2025, 1, 5), 18, 30)) == monday  # Sunday evening trades Monday's session
    assert cal.session_day(ny(monday, 16, 59)) == monday
    assert date(2024, 12, 25) not in cal.sessions(date(2024, 12, 20), date(2024, 12, 31))
    mlk = date(2025, 1, 20)  # a US holiday CME trades short: closes 12:00 Chicago
    assert cal.session_bounds(mlk, use_rth=False)[1] == ny(mlk, 13)


def test_fx_runs_sunday_17_00_to_friday_17_00_new_york() -> None:
    cal = calendar_named(FX_24_5)
    friday_close = ny(date(2025, 1, 10), 17)
    week = cal.sessions_between(ny(date(2025, 1, 5), 12), ny(date(2025, 1, 12), 12))
    assert week == [date(2025, 1, d) for d in (6, 7, 8, 9, 10)]  # the NYSE's closed 9th trades
    assert cal.session_bounds(week[0], use_rth=True)[0] == ny(date(2025, 1, 5), 17)
    assert cal.session_bounds(week[-1], use_rth=False)[1] == friday_close
    assert all(b[1] - b[0] == timedelta(hours=24) for b in map(lambda d: cal.session_bounds(d, False), week))
    with pytest.raises(KeyError):
        cal.session_bounds(date(2025, 1, 11), use_rth=False)
    assert cal.sessions_between(friday_close, ny(date(2025, 1, 12), 17)) == []  # the weekend


def test_plan_chunks_follow_the_instruments_sessions() -> None:
    start, end = datetime(2025, 1, 6, tzinfo=UTC), datetime(2025, 1, 11, tzinfo=UTC)
    xetra = plan_chunks(start, end, bar_size="1 min", use_rth=True, calendar="XETR")
    assert [c.start for c in xetra] == [datetime(2025, 1, d, 8, tzinfo=UTC) for d in (6, 7, 8, 9, 10)]
    assert {c.duration for c in xetra} == {f"{int(8.5 * 3600)} S"}
    globex = plan_chunks(start, end, bar_size="1 hour", use_rth=False, calendar=CME_GLOBEX)
    # Monday's session began Sunday 23:00 UTC, before the window: its request starts at the window
    assert globex[0].start == start and globex[1].start == ny(date(2025, 1, 6), 18)
    assert date(2025, 1, 9) not in {globex_session_of(c.end) for c in globex}  # CME closed on the 9th
    fx = plan_chunks(start, end, bar_size="1 hour", use_rth=True, calendar=FX_24_5)
    assert sum(((c.end - c.start) for c in fx), timedelta()) == ny(date(2025, 1, 10), 17) - start


def globex_session_of(instant: datetime) -> date:
    """The Globex session a request ending at `instant` covers."""
    return calendar_named(CME_GLOBEX).session_day(instant - timedelta(microseconds=1))


def generated(series: str, bar_size: str, use_rth: bool, start: datetime, end: datetime,
              what_to_show: str = "TRADES") -> pl.DataFrame:
    """The simulator's bars of one listing, as ingestion stores them (before lineage)."""
    bars = SyntheticBars().bars(series, bar_size, what_to_show, use_rth, start, end)
    return bars.rename({"count": "bar_count"}).with_columns(
        symbol=pl.lit(series), con_id=pl.lit(1), exchange=pl.lit("X"), primary_exchange=pl.lit("X"),
        currency=pl.lit("USD"), bar_size=pl.lit(bar_size), what_to_show=pl.lit(what_to_show),
        use_rth=pl.lit(use_rth)).select(list(BAR_COLUMNS)).cast(BAR_COLUMNS)  # type: ignore[arg-type]


@pytest.mark.parametrize(("series", "calendar", "sec_type", "what_to_show", "use_rth", "sessions_judged",
                          "nyse_misjudges"), [
    ("SAP@IBIS", "XETR", "STK", "TRADES", True, 5, True),
    ("ESH5@CME", CME_GLOBEX, "FUT", "TRADES", False, 3, True),  # the 6th opens before the window; CME shut the 9th
    ("ESH5@CME", CME_GLOBEX, "FUT", "TRADES", True, 4, False),  # its regular hours are the NYSE's
    ("EUR.USD@IDEALPRO", FX_24_5, "CASH", "MIDPOINT", True, 4, True),  # the 6th opened Sunday, before the window
])
def test_the_simulators_bars_are_complete_and_in_session_on_their_calendar(
        series: str, calendar: str, sec_type: str, what_to_show: str, use_rth: bool, sessions_judged: int,
        nyse_misjudges: bool) -> None:
    window = (datetime(2025, 1, 6, tzinfo=UTC), datetime(2025, 1, 11, tzinfo=UTC))
    assert SyntheticBars().calendar_of(series) == calendar
    bars = generated(series, "5 mins", use_rth, *window, what_to_show=what_to_show)
    result = validate_bars(bars, bar_size="5 mins", use_rth=use_rth, what_to_show=what_to_show, sec_type=sec_type,
                           window=window, calendar=calendar, engine="polars")
    assert result.quarantined.is_empty() and result.clean.height == bars.height > 0
    completeness = next(o for o in result.outcomes if o.name == "completeness")
    assert completeness.passed and completeness.detail == f"{sessions_judged} whole session(s) complete"

    on_nyse = validate_bars(bars, bar_size="5 mins", use_rth=use_rth, what_to_show=what_to_show,
                            sec_type=sec_type, window=window, calendar="XNYS", engine="polars")
    assert bool(on_nyse.quarantined.height or on_nyse.gaps.height) is nyse_misjudges


def test_a_weekend_fx_bar_and_a_bar_in_the_globex_break_are_quarantined() -> None:
    window = (datetime(2025, 1, 6, tzinfo=UTC), datetime(2025, 1, 11, tzinfo=UTC))
    fx = generated("EUR.USD@IDEALPRO", "1 hour", True, *window, what_to_show="MIDPOINT")
    saturday = fx.tail(1).with_columns(ts=pl.lit(ny(date(2025, 1, 11), 10)).cast(BAR_COLUMNS["ts"]))
    result = validate_bars(pl.concat([fx, saturday]), bar_size="1 hour", use_rth=True, what_to_show="MIDPOINT",
                           sec_type="CASH", calendar=FX_24_5, engine="polars")
    assert result.quarantined["failed_check"].to_list() == ["in_session"]
    assert "2025-01-11 is not a session" in result.quarantined["check_detail"][0]

    es = generated("ESH5@CME", "1 hour", False, *window)
    in_break = es.head(1).with_columns(ts=pl.lit(ny(date(2025, 1, 7), 17)).cast(BAR_COLUMNS["ts"]))
    result = validate_bars(pl.concat([es, in_break]), bar_size="1 hour", use_rth=False, what_to_show="TRADES",
                           sec_type="FUT", calendar=CME_GLOBEX, engine="polars")
    assert result.quarantined["failed_check"].to_list() == ["in_session"]


def tokyo(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=TOKYO).astimezone(UTC)


def test_tokyo_sessions_are_counted_without_their_lunch_break() -> None:
    day = date(2025, 1, 8)
    assert calendar_named("XTKS").has_breaks
    assert bar_spans("XTKS", day, use_rth=True) == [(tokyo(day, 9), tokyo(day, 11, 30)),
                                                     (tokyo(day, 12, 30), tokyo(day, 15, 30))]
    assert session_bar_count("XTKS", day, True, timedelta(minutes=1)) == 150 + 180
    assert session_bar_count("XTKS", day, True, timedelta(hours=1)) == 3 + 4  # 9, 10, 11; 12:30, 13, 14, 15
    assert session_bar_count("XTKS", date(2024, 11, 1), True, timedelta(minutes=1)) == 150 + 150  # closed 15:00


@pytest.mark.parametrize(("bar_size", "per_session"), [("1 min", 330), ("1 hour", 7)])
def test_tokyo_completeness_is_judged_and_the_lunch_hour_is_no_gap(bar_size: str, per_session: int) -> None:
    window = (datetime(2025, 1, 6, tzinfo=UTC), datetime(2025, 1, 11, tzinfo=UTC))
    bars = generated("7203@TSEJ", bar_size, True, *window)  # none in the lunch break, as IB serves them
    assert bars.height == 5 * per_session

    def judged(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
        result = validate_bars(frame, bar_size=bar_size, use_rth=True, what_to_show="TRADES", window=window,
                               calendar="XTKS", engine="polars")
        return result, {o.name: o.detail for o in result.outcomes}

    complete, details = judged(bars)
    assert complete.quarantined.is_empty() and details["completeness"] == "5 whole session(s) complete"

    after_lunch = tokyo(date(2025, 1, 8), 13)
    missing, details = judged(bars.filter(pl.col("ts") != after_lunch))
    assert missing.gaps.rows() == [(date(2025, 1, 8), per_session, per_session - 1, 1)]
    assert details["completeness"] == f"1 bar(s) missing in 1 of 5 session(s): 2025-01-08 (1 of {per_session})"

    in_lunch = bars.filter(pl.col("ts") == after_lunch).with_columns(ts=pl.lit(tokyo(date(2025, 1, 8), 12)))
    lunch, _ = judged(pl.concat([bars.filter(pl.col("ts") != after_lunch), in_lunch.cast(bars.schema)]))
    assert lunch.quarantined["failed_check"].to_list() == ["in_session"]  # IB has no bar in the break
    assert "mid-day break, which ends 03:30 UTC" in lunch.quarantined["check_detail"][0]
    assert lunch.gaps.rows() == missing.gaps.rows()  # nor does a lunch bar make up for the missing one


def test_the_simulator_counts_n_days_on_the_listings_calendar() -> None:
    end = datetime(2025, 1, 10, 22, tzinfo=UTC)
    xetra_start, _ = request_window(end, "2 D", bar_size="1 hour", use_rth=True, calendar="XETR")
    nyse_start, _ = request_window(end, "2 D", bar_size="1 hour", use_rth=True)
    assert xetra_start == datetime(2025, 1, 9, 8, tzinfo=UTC)  # Xetra traded on the 9th
    assert nyse_start == datetime(2025, 1, 8, 14, 30, tzinfo=UTC)  # the NYSE did not
    by_series = {inst.series: inst.calendar for inst in LISTINGS}
    assert (by_series["SAP@IBIS"], by_series["7203@TSEJ"], by_series["SHOP@TSE"], by_series["SHOP"]) == (
        "XETR", "XTKS", "XTSE", "XNYS")
