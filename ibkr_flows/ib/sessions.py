"""Exchange sessions as IB serves bars for them: regular hours from the exchange calendar (holidays, half days),
extended hours 04:00-20:00 New York (17:00 on half days); where intraday bars are stamped; and the session texts
TWS puts in contract details.

These are XNYS's rules; given another calendar name (XETR, XTKS, CME_GLOBEX, FX_24_5, ...), the session functions
answer from that instrument calendar (`ib.calendars`) instead, so callers that pass a name need no other change."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd
import polars as pl

if TYPE_CHECKING:
    from ibkr_flows.ib.calendars import SessionCalendar

NEW_YORK = ZoneInfo("America/New_York")
EXTENDED_OPEN = time(4, 0)
EXTENDED_CLOSE = time(20, 0)
HALF_DAY_EXTENDED_CLOSE = time(17, 0)
NYSE = "XNYS"
CALENDAR_START = "1962-01-01"
"""exchange_calendars starts 20 years back by default; IB's history of old listings (IBM: 1962) goes further."""


@lru_cache(maxsize=8)
def exchange_calendar(name: str = "XNYS") -> xcals.ExchangeCalendar:
    try:
        return xcals.get_calendar(name, start=CALENDAR_START)
    except ValueError:  # a calendar defined only from a later date (XTKS: 1997) starts at its default
        return xcals.get_calendar(name)


@lru_cache(maxsize=8)
def regular_hours(calendar: str) -> dict[date, tuple[datetime, datetime]]:
    """Every session's regular open and close, converted once (per-session calendar lookups are slow)."""
    cal = exchange_calendar(calendar)
    return _per_session(cal.sessions, cal.opens, cal.closes)


@lru_cache(maxsize=8)
def mid_session_breaks(calendar: str) -> dict[date, tuple[datetime, datetime]]:
    """Every session's mid-day break (Tokyo's lunch, 11:30-12:30), UTC [start, end), from an exchange_calendars
    calendar's break_starts / break_ends; sessions without one are absent."""
    cal = exchange_calendar(calendar)
    starts = cal.break_starts.dropna()
    return _per_session(starts.index, starts, cal.break_ends.loc[starts.index])


def _per_session(labels: pd.DatetimeIndex, starts: pd.Series, ends: pd.Series) -> dict[date, tuple[datetime, datetime]]:
    def utc(times: pd.Series) -> pd.Series:
        return times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")

    return {label.date(): (start.to_pydatetime(), end.to_pydatetime())
            for label, start, end in zip(labels, utc(starts), utc(ends), strict=True)}


def session_bounds(session: date | pd.Timestamp, use_rth: bool, calendar: str = "XNYS") -> tuple[datetime, datetime]:
    """UTC [open, close) of one session's bars: regular hours, or IB's extended hours (KeyError if no session)."""
    day = session.date() if isinstance(session, pd.Timestamp) else session
    if calendar != NYSE:
        return _instrument_calendar(calendar).session_bounds(day, use_rth)
    rth_open, rth_close = regular_hours(calendar)[day]
    if use_rth:
        return rth_open, rth_close
    close = HALF_DAY_EXTENDED_CLOSE if rth_close.astimezone(NEW_YORK).hour < 16 else EXTENDED_CLOSE
    start = datetime.combine(day, EXTENDED_OPEN, tzinfo=NEW_YORK)
    end = datetime.combine(day, close, tzinfo=NEW_YORK)
    return start.astimezone(UTC), end.astimezone(UTC)


def sessions_between(start: datetime, end: datetime, calendar: str = "XNYS") -> list[date]:
    """Sessions whose extended hours overlap [start, end), oldest first."""
    if calendar != NYSE:
        return _instrument_calendar(calendar).sessions_between(start, end)
    cal = exchange_calendar(calendar)
    first = max(pd.Timestamp(start.astimezone(NEW_YORK).date()) - pd.Timedelta(days=1), cal.first_session)
    last = min(pd.Timestamp(end.astimezone(NEW_YORK).date()), cal.last_session)
    if first > last:
        return []
    days = []
    for label in cal.sessions_in_range(first, last):
        open_, close = session_bounds(label, use_rth=False, calendar=calendar)
        if open_ < end and close > start:
            days.append(label.date())
    return days


def sessions_before(end: datetime, count: int, use_rth: bool, calendar: str = "XNYS") -> list[date]:
    """The `count` most recent sessions that opened before `end`, oldest first (IB's "N D" duration)."""
    if calendar != NYSE:
        return _instrument_calendar(calendar).sessions_before(end, count, use_rth)
    cal = exchange_calendar(calendar)
    last = min(pd.Timestamp(end.astimezone(NEW_YORK).date()), cal.last_session)
    lookback = pd.Timedelta(days=count * 2 + 10)
    labels = cal.sessions_in_range(max(last - lookback, cal.first_session), last)
    opened = [label.date() for label in labels if session_bounds(label, use_rth, calendar)[0] < end]
    return opened[-count:]


def midnight_utc(day: date) -> datetime:
    """Where daily and longer bars are stamped: IB sends a bare date, stored as that date at 00:00 UTC."""
    return datetime.combine(day, time(0), tzinfo=UTC)


def session_day(instant: datetime) -> date:
    """The New York date an instant belongs to (extended hours never cross midnight there)."""
    return instant.astimezone(NEW_YORK).date()


def grid_offset(instant: datetime, step: timedelta, time_zone: ZoneInfo) -> timedelta:
    """How far `instant` lies past the last line of IB's clock grid of `step` bars: the grid is the multiples of the
    bar size on the exchange's wall clock from its local midnight (4 hours: 00:00, 04:00, ..., 20:00 local), the
    same lines every day whatever the UTC offset. A session's first bar starts at its open and runs to the next
    line (1-hour RTH bars: 09:30, 10:00, 11:00, ...); every later bar starts on a line.

    The wall clock, not hours elapsed since a midnight: on a daylight-saving Sunday that midnight has the other UTC
    offset, and elapsed hours would put the evening's 4-hour lines an hour off the clock's 16:00 and 20:00 (17:00
    and 21:00 in March, 19:00 and 23:00 in November), where a Globex or FX session opens. The offset is taken off
    in UTC, which would misplace a bar holding a clock change; none does: the clocks change on weekend nights, when
    no calendar here trades. `grid_offsets` is the same rule over a column."""
    local = instant.astimezone(time_zone)
    return (datetime.combine(date.min, local.time()) - datetime.min) % step


def grid_offsets(ts: pl.Expr, step: timedelta, time_zone: ZoneInfo) -> pl.Expr:
    """`grid_offset` of every instant of a UTC datetime column, as a duration: 0 where a bar may start on the
    grid; `ts` less it is the grid line at or before each instant."""
    local = ts.dt.convert_time_zone(time_zone.key).dt.replace_time_zone(None)
    since_midnight = (local - local.dt.truncate("1d")).dt.total_microseconds()
    return pl.duration(microseconds=since_midnight % (step // timedelta(microseconds=1)))


def bar_start(instant: datetime, step: timedelta, use_rth: bool, calendar: str = "XNYS") -> datetime:
    """The start of the `step` bar holding `instant` (which must lie in a session): the grid line at or before it
    (`grid_offset`), or the session's open for the first, partial bar."""
    if calendar != NYSE:
        other = _instrument_calendar(calendar)
        zone, day = other.time_zone, other.session_day(instant)
    else:
        zone, day = NEW_YORK, session_day(instant)
    on_grid = instant - grid_offset(instant, step, zone)
    return max(on_grid, session_bounds(day, use_rth, calendar)[0])


def session_hours_text(first_day: date, days: int, use_rth: bool, calendar: str = "XNYS",
                       time_zone: str = "America/New_York") -> str:
    """TWS's `tradingHours` (extended hours) or `liquidHours` (`use_rth`) for `days` calendar days from
    `first_day`, on `calendar`, in `time_zone` (the contract's timeZoneId), as TWS lists them: each trade date's
    session (`20250115:0930-20250115:1600`; a Globex session opening the evening before:
    `20250112:1700-20250113:1600`), in two ranges where it pauses mid-day (Tokyo's lunch), and `20250118:CLOSED`
    for a day that is no trade date and on which no session opens."""
    zone = ZoneInfo(time_zone)
    breaks = mid_session_breaks(calendar) if _instrument_calendar(calendar).has_breaks else {}

    def ranges(day: date) -> list[tuple[datetime, datetime]]:
        try:
            open_, close = session_bounds(day, use_rth, calendar)
        except KeyError:
            return []
        pause = breaks.get(day)
        if pause and open_ < pause[0] < pause[1] < close:
            return [(open_, pause[0]), (pause[1], close)]
        return [(open_, close)]

    parts = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        if listed := ranges(day):
            parts += [f"{start.astimezone(zone):%Y%m%d:%H%M}-{end.astimezone(zone):%Y%m%d:%H%M}"
                      for start, end in listed]
            continue
        following = ranges(day + timedelta(days=1))
        if not (following and following[0][0].astimezone(zone).date() == day):
            parts.append(f"{day:%Y%m%d}:CLOSED")
    return ";".join(parts)


def _instrument_calendar(calendar: str) -> SessionCalendar:
    """Another instrument's calendar (`ib.calendars`: Xetra, Tokyo, CME Globex, FX 24/5, ...), whose hours are not
    NYSE's extended hours; imported here, not at the top, because it builds on this module."""
    from ibkr_flows.ib.calendars import calendar_named

    return calendar_named(calendar)
