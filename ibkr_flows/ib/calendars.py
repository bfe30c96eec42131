"""Whose sessions an instrument trades: one session calendar per instrument class and listing.

Gap checks, RTH filtering, daily boundaries and request planning must count the instrument's own sessions: a
Xetra stock trades 09:00-17:30 Frankfurt, a CME Globex future from 18:00 New York the evening before, a currency
pair from Sunday 17:00 to Friday 17:00 New York. Counting them on NYSE sessions requests the wrong hours and
reports false gaps.

Every calendar labels a session with its trade date and answers the same questions (`SessionCalendar`):
- stock exchanges come from exchange_calendars (IBIS -> XETR, TSEJ -> XTKS, LSE -> XLON, TSE -> XTSE, the US venues
  -> XNYS). Extended hours (use_rth False) equal the regular ones outside the US: IB serves next to no bars outside
  them there. XNYS keeps `ib.sessions`' exact behaviour (04:00-20:00 New York extended hours, half days);
- CME Globex futures (`CME_GLOBEX`: CME and NYMEX, e.g. ES, NQ, CL): 18:00 New York the evening before to 17:00
  (the 17:00-18:00 daily maintenance break between sessions), regular hours 09:30-16:00 New York (the equity index
  futures' liquid hours, used for every Globex future). Trade dates and early closes are exchange_calendars' CMES
  calendar (CME Globex equity): its holidays are sessions with a 12:00 Chicago close, as CME trades them, and its
  closed days (Christmas, New Year, Good Friday) are none;
- FX (`FX_24_5`, IDEALPRO): 24 hours a day, 5 days a week, each session 17:00 to 17:00 New York, Sunday evening to
  Friday evening; no holidays (the interbank market trades through exchange holidays), regular hours = all hours.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import polars as pl

from ibkr_flows.ib import sessions as nyse

NEW_YORK = ZoneInfo("America/New_York")
NYSE = "XNYS"
CME_GLOBEX = "CME_GLOBEX"
FX_24_5 = "FX_24_5"

EXCHANGE_CALENDARS = {
    **dict.fromkeys(("SMART", "NYSE", "NASDAQ", "ARCA", "AMEX", "ISLAND", "BATS", "IEX", "NYSENAT", "CBOE"), NYSE),
    "IBIS": "XETR",
    "TSEJ": "XTKS",
    "LSE": "XLON",
    "TSE": "XTSE",
}
"""IB's listing exchange -> exchange_calendars name, for stocks (and US indices, computed while US stocks trade)."""
TIME_ZONE_CALENDARS = {
    "US/Eastern": NYSE, "America/New_York": NYSE, "EST5EDT": NYSE,
    "MET": "XETR", "Europe/Berlin": "XETR",
    "Japan": "XTKS", "Asia/Tokyo": "XTKS",
    "GB": "XLON", "Europe/London": "XLON",
    "America/Toronto": "XTSE", "Canada/Eastern": "XTSE",
}
"""The contract's timeZoneId -> calendar, for a stock listed on an exchange the table above does not name."""
GLOBEX_EXCHANGES = frozenset({"CME", "GLOBEX", "NYMEX"})
"""Futures exchanges (as IB names them) whose contracts trade on CME Globex hours and trade dates."""
FUTURE_CLASSES = frozenset({"FUT", "CONTFUT"})
EXCHANGE_TIME_ZONES = {"XETR": "Europe/Berlin", "XTKS": "Asia/Tokyo", "XLON": "Europe/London",
                       "XTSE": "America/Toronto", NYSE: "America/New_York"}


class UnknownSessionCalendarError(LookupError):
    """No session calendar is known for an instrument: its sessions cannot be planned or judged."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"no session calendar for {what}; add its exchange to ibkr_flows.ib.calendars.EXCHANGE_CALENDARS "
            f"(known: {', '.join(sorted(EXCHANGE_CALENDARS))}) or its time zone to TIME_ZONE_CALENDARS")


class SessionCalendar(ABC):
    """An instrument's sessions, each labelled by its trade date, with UTC [open, close) bounds of its bars."""

    name: str
    time_zone: ZoneInfo
    evening_open = timedelta(0)
    """How far before local midnight a session can open: an instant's session is the local date of instant +
    this (a Globex bar at 18:00 New York belongs to the next day's session)."""
    has_breaks = False
    """Whether sessions pause mid-day (Tokyo's lunch): bars per session are then fewer than open-to-close."""

    @abstractmethod
    def sessions(self, first: date, last: date) -> list[date]:
        """Session labels in [first, last], oldest first."""

    @abstractmethod
    def session_bounds(self, day: date, use_rth: bool) -> tuple[datetime, datetime]:
        """UTC [open, close) of one session's bars, regular or all hours (KeyError if `day` is no session)."""

    def session_day(self, instant: datetime) -> date:
        """The session (trade date) an instant inside one belongs to."""
        local = instant.astimezone(self.time_zone).replace(tzinfo=None)
        return (local + self.evening_open).date()

    def midnight(self, day: date) -> datetime:
        """Midnight starting `day` in the exchange's time zone, in UTC (a session opening the evening before opens
        `evening_open` earlier)."""
        return datetime.combine(day, time(0), tzinfo=self.time_zone).astimezone(UTC)

    def sessions_between(self, start: datetime, end: datetime) -> list[date]:
        """Sessions whose (all-hours) bars overlap [start, end), oldest first."""
        first = self.session_day(start) - timedelta(days=1)
        days = []
        for day in self.sessions(first, self.session_day(end) + timedelta(days=1)):
            open_, close = self.session_bounds(day, use_rth=False)
            if open_ < end and close > start:
                days.append(day)
        return days

    def sessions_before(self, end: datetime, count: int, use_rth: bool) -> list[date]:
        """The `count` most recent sessions that opened before `end`, oldest first (IB's "N D" duration)."""
        last = self.session_day(end) + timedelta(days=1)
        days = self.sessions(last - timedelta(days=count * 2 + 10), last)
        return [d for d in days if self.session_bounds(d, use_rth)[0] < end][-count:]


class NyseCalendar(SessionCalendar):
    """XNYS exactly as `ib.sessions` defines it (extended hours 04:00-20:00 New York, half days)."""

    name = NYSE
    time_zone = NEW_YORK

    def sessions(self, first: date, last: date) -> list[date]:
        return _labels_in(_sorted_labels(NYSE), first, last)

    def session_bounds(self, day: date, use_rth: bool) -> tuple[datetime, datetime]:
        return nyse.session_bounds(day, use_rth, NYSE)

    def session_day(self, instant: datetime) -> date:
        return nyse.session_day(instant)

    def sessions_between(self, start: datetime, end: datetime) -> list[date]:
        return nyse.sessions_between(start, end, NYSE)

    def sessions_before(self, end: datetime, count: int, use_rth: bool) -> list[date]:
        return nyse.sessions_before(end, count, use_rth, NYSE)


class ExchangeSessions(SessionCalendar):
    """A stock exchange of exchange_calendars: its sessions, holidays and early closes; all hours = regular."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.time_zone = ZoneInfo(EXCHANGE_TIME_ZONES.get(name) or str(nyse.exchange_calendar(name).tz))
        self.has_breaks = bool(nyse.exchange_calendar(name).has_break)

    def sessions(self, first: date, last: date) -> list[date]:
        return _labels_in(_sorted_labels(self.name), first, last)

    def session_bounds(self, day: date, use_rth: bool) -> tuple[datetime, datetime]:
        return nyse.regular_hours(self.name)[day]


class GlobexCalendar(SessionCalendar):
    """CME Globex (equity index futures): 18:00 New York the evening before to 17:00, on CMES's trade dates."""

    name = CME_GLOBEX
    time_zone = NEW_YORK
    evening_open = timedelta(hours=6)
    OPEN = time(18, 0)
    CLOSE = time(17, 0)
    RTH_OPEN = time(9, 30)
    RTH_CLOSE = time(16, 0)
    SOURCE = "CMES"

    def sessions(self, first: date, last: date) -> list[date]:
        return _labels_in(_sorted_labels(self.SOURCE), first, last)

    def session_bounds(self, day: date, use_rth: bool) -> tuple[datetime, datetime]:
        early_close = nyse.regular_hours(self.SOURCE)[day][1]  # KeyError: no session
        if use_rth:
            open_, close = _at(day, self.RTH_OPEN), _at(day, self.RTH_CLOSE)
        else:
            open_, close = _at(day - timedelta(days=1), self.OPEN), _at(day, self.CLOSE)
        return open_, min(close, early_close)


class FxCalendar(SessionCalendar):
    """FX 24/5: each weekday's session runs from 17:00 New York the day before to 17:00, no holidays."""

    name = FX_24_5
    time_zone = NEW_YORK
    evening_open = timedelta(hours=7)
    ROLL = time(17, 0)

    def sessions(self, first: date, last: date) -> list[date]:
        return [first + timedelta(days=i) for i in range((last - first).days + 1)
                if (first + timedelta(days=i)).weekday() < 5]

    def session_bounds(self, day: date, use_rth: bool) -> tuple[datetime, datetime]:
        if day.weekday() >= 5:
            raise KeyError(day)
        return _at(day - timedelta(days=1), self.ROLL), _at(day, self.ROLL)


@cache
def calendar_named(name: str) -> SessionCalendar:
    """The calendar called `name`: XNYS, CME_GLOBEX, FX_24_5 or any exchange_calendars name (XETR, XTKS, ...)."""
    if name == NYSE:
        return NyseCalendar()
    if name == CME_GLOBEX:
        return GlobexCalendar()
    if name == FX_24_5:
        return FxCalendar()
    return ExchangeSessions(name)


def calendar_for(sec_type: str, exchange: str, primary_exchange: str = "", time_zone_id: str = "") -> str:
    """The name of the calendar an instrument trades on, from its class, exchanges and timeZoneId."""
    sec_type, exchange, primary = sec_type.upper(), exchange.upper(), primary_exchange.upper()
    if sec_type == "CASH":
        return FX_24_5
    if sec_type in FUTURE_CLASSES:
        if exchange in GLOBEX_EXCHANGES or primary in GLOBEX_EXCHANGES:
            return CME_GLOBEX
        raise UnknownSessionCalendarError(f"{sec_type} on {exchange or primary} (only CME Globex futures are known)")
    for venue in (primary, exchange):
        if venue in EXCHANGE_CALENDARS and not (venue == "SMART" and primary):
            return EXCHANGE_CALENDARS[venue]
    if time_zone_id in TIME_ZONE_CALENDARS:
        return TIME_ZONE_CALENDARS[time_zone_id]
    raise UnknownSessionCalendarError(f"{sec_type} on {primary or exchange} ({time_zone_id or 'no time zone'})")


def planning_calendar(sec_type: str, exchange: str, primary_exchange: str = "", time_zone_id: str = "") -> str:
    """`calendar_for`, or NYSE's for a listing none is known for: the calendar ingestion planned the instrument's
    requests and checked its bars on, so the one its stored bars are read on."""
    try:
        return calendar_for(sec_type, exchange, primary_exchange, time_zone_id)
    except UnknownSessionCalendarError:
        return NYSE


ANNUAL_YEARS = (2015, 2024)
"""The full years a calendar's sessions per year are averaged over and its full session is looked for in: fixed, so
an annualized figure does not move with the day it is computed on (XNYS: 2516 sessions, 251.6 a year -> 252)."""


def bar_spans(calendar: str, day: date, use_rth: bool) -> list[tuple[datetime, datetime]]:
    """The UTC [start, end) spans of one session that have bars: open to close, less a mid-day break (Tokyo's
    11:30-12:30 lunch splits a session in two); KeyError if `day` is no session."""
    cal = calendar_named(calendar)
    open_, close = cal.session_bounds(day, use_rth)
    pause = nyse.mid_session_breaks(calendar).get(day) if cal.has_breaks else None
    if pause is None or not open_ < pause[0] < pause[1] < close:
        return [(open_, close)]
    return [(open_, pause[0]), (pause[1], close)]


def session_bar_count(calendar: str, day: date, use_rth: bool, step: timedelta) -> int:
    """How many `step` bars IB has in one session: per span (`bar_spans`), the cells of the exchange's clock grid
    (`ib.sessions.grid_offset`) that the span meets, its first (possibly partial) bar starting at the span's start,
    as `ib.sessions.bar_start` stamps a session's first bar (1-hour RTH bars on NYSE: 09:30, 10:00, ..., 15:00 ->
    7; 4-hour Globex bars: 18:00, 20:00, 00:00, ..., 16:00 New York -> 7, on a daylight-saving Sunday too)."""
    zone = calendar_named(calendar).time_zone
    count = 0
    for start, end in bar_spans(calendar, day, use_rth):
        first_line = start - nyse.grid_offset(start, step, zone)
        count += -((first_line - end) // step)  # ceil((end - first_line) / step)
    return count


def _annual_sessions(calendar: str) -> list[date]:
    first, last = ANNUAL_YEARS
    return calendar_named(calendar).sessions(date(first, 1, 1), date(last, 12, 31))


@cache
def sessions_per_year(calendar: str) -> int:
    """The calendar's mean number of sessions per year over `ANNUAL_YEARS`, rounded: XNYS 252, XETR 254, XTKS 244,
    XLON 253, XTSE 251, CME Globex 258 (CMES trade dates), FX 24/5 261 (every weekday)."""
    first, last = ANNUAL_YEARS
    return round(len(_annual_sessions(calendar)) / (last - first + 1))


@cache
def full_session_bars(calendar: str, use_rth: bool, step: timedelta) -> int:
    """`step` bars in a full session of the calendar: one of the sessions of `ANNUAL_YEARS` with the most hours of
    bars (half days have fewer; Tokyo's most are its sessions to 15:30 since November 2024), mid-day breaks
    excluded. Every such session holds as many: the grid is on the exchange's clock (`session_bar_count`), so a
    daylight-saving change moves none of its lines. 1-minute bars: NYSE 390 (RTH) or 960 (04:00-20:00), Xetra 510,
    Tokyo 330, CME Globex 390 (RTH) or 1380 (23 h), FX 1440."""
    days = _annual_sessions(calendar)
    hours = {day: sum((end - start for start, end in bar_spans(calendar, day, use_rth)), timedelta()) for day in days}
    return session_bar_count(calendar, max(days, key=hours.__getitem__), use_rth, step)


def session_dates(ts: pl.Expr, calendar: str) -> pl.Expr:
    """`SessionCalendar.session_day` of every instant of a UTC datetime column: its date in the exchange's time
    zone, shifted for sessions that open the evening before (a Globex bar at 18:00 New York is the next day's)."""
    cal = calendar_named(calendar)
    local = ts.dt.convert_time_zone(cal.time_zone.key)
    return (local.dt.replace_time_zone(None) + cal.evening_open).dt.date() if cal.evening_open else local.dt.date()


@cache
def day_shift(calendar: str) -> timedelta | None:
    """A constant that, added to the UTC start of any bar of the calendar's sessions (all hours, `ANNUAL_YEARS`),
    gives an instant whose UTC date is the bar's session: its session date without a time-zone conversion per row
    (NYSE -4.5 h, Tokyo +8.75 h, CME Globex +2 h). None where no constant fits both standard and summer time: FX
    24/5's sessions fill whole days, whose UTC bounds move an hour with New York's daylight saving."""
    cal = calendar_named(calendar)
    earliest, latest = timedelta.min, timedelta.max
    for day in _annual_sessions(calendar):
        open_, close = cal.session_bounds(day, use_rth=False)
        midnight = datetime.combine(day, time(0), tzinfo=UTC)
        earliest, latest = max(earliest, midnight - open_), min(latest, midnight + timedelta(days=1) - close)
    return (earliest + latest) / 2 if earliest <= latest else None


def _at(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, tzinfo=NEW_YORK).astimezone(UTC)


@cache
def _sorted_labels(source: str) -> tuple[date, ...]:
    return tuple(sorted(nyse.regular_hours(source)))


def _labels_in(labels: tuple[date, ...], first: date, last: date) -> list[date]:
    return list(labels[bisect.bisect_left(labels, first):bisect.bisect_right(labels, last)])


__all__ = ["ANNUAL_YEARS", "CME_GLOBEX", "FX_24_5", "NYSE", "ExchangeSessions", "FxCalendar", "GlobexCalendar",
           "NyseCalendar", "SessionCalendar", "UnknownSessionCalendarError", "bar_spans", "calendar_for",
           "calendar_named", "day_shift", "full_session_bars", "planning_calendar", "session_bar_count",
           "session_dates", "sessions_per_year"]
