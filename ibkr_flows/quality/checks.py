"""The quality rules as polars expressions: the single definition of every blocking check.

Each rule is an expression that is True where a row passes. Missing values pass every rule except `not_null`, and
NaN counts as missing: pandas/Great Expectations skip missing values, and one row should fail for one reason (its
missing price), not several. The Great Expectations suite (`quality.gx_suite`) mirrors these rules one to one; the
session-dependent ones (`aligned_ts`, `in_session`) are evaluated here and handed to it as boolean columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Literal

import polars as pl

from ibkr_flows.ib.calendars import SessionCalendar, bar_spans, calendar_named, session_dates
from ibkr_flows.ib.historical import QUOTE_TYPES, bar_step, is_intraday
from ibkr_flows.ib.sessions import grid_offsets
from storage.schema import BAR_KEY, UTC_US

NEW_YORK = "America/New_York"
KEY_COLUMNS = ("symbol", "con_id", "bar_size", "what_to_show", "use_rth", "ts")
PRICE_COLUMNS = ("open", "high", "low", "close")
NOT_NULL_COLUMNS = KEY_COLUMNS + PRICE_COLUMNS
SIZE_COLUMNS = ("volume", "wap", "bar_count")
"""IB sends -1 in these for quote data (no trades to count), and -1 or 0 for classes without volume."""
NO_VOLUME_CLASSES = frozenset({"CASH", "IND"})
"""Security types whose bars carry no volume, WAP or trade count whatever the data type: a currency pair (quotes
only) and an index (a computed value, its TRADES without volume)."""
REQUIRED_COLUMNS = NOT_NULL_COLUMNS + SIZE_COLUMNS

BLOCKING_CHECKS = ("not_null", "positive_prices", "high_ge_open_close", "low_le_open_close", "volume_non_negative",
                   "unique_key", "aligned_ts", "in_session")
"""In order of precedence: a quarantined row is labelled with the first one it fails."""

RULE_TEXT = {
    "not_null": f"no nulls in {', '.join(NOT_NULL_COLUMNS)}",
    "positive_prices": "open, high, low, close > 0",
    "high_ge_open_close": "high >= max(open, close)",
    "low_le_open_close": "low <= min(open, close)",
    "volume_non_negative": "volume, wap, bar_count >= 0 (-1 allowed for MIDPOINT, BID_ASK, BID, ASK, and for "
                           "CASH and IND bars)",
    "unique_key": f"one bar per ({', '.join(BAR_KEY)}); later copies are quarantined",
    "aligned_ts": "ts on IB's clock grid of the bar size (multiples on the exchange's clock from its midnight), at "
                  "the session open or at the end of its mid-day break (daily+: 00:00 UTC of a session date)",
    "in_session": "ts within the session's [open, close) for the requested hours, not in a mid-day break",
    "completeness": "every bar of each session fully inside the window was received",
}

Severity = Literal["blocking", "warning"]


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found on one batch."""

    name: str
    severity: Severity
    passed: bool
    failed_rows: int
    """Rows failing this rule, whatever else they fail (completeness: bars missing)."""
    detail: str


@dataclass(frozen=True)
class BarSeries:
    """The bar series a batch claims to be: the rules depend on its size, hours and data type."""

    bar_size: str
    use_rth: bool
    what_to_show: str
    calendar: str = "XNYS"
    """The instrument's session calendar (`ib.calendars.calendar_for`): XNYS, XETR, CME_GLOBEX, FX_24_5, ..."""
    sec_type: str = "STK"
    """The contract's security type (STK, FUT, CASH, IND, ...)."""

    @cached_property
    def step(self) -> timedelta:
        return bar_step(self.bar_size)

    @cached_property
    def intraday(self) -> bool:
        return is_intraday(self.bar_size)

    @property
    def allows_missing_volume(self) -> bool:
        """Whether -1 in volume, wap and bar_count is IB's 'none' rather than a bad value: quote data of any class,
        and every bar of a class without volume (the 0 IB may send instead passes anyway)."""
        return self.what_to_show.upper() in QUOTE_TYPES or self.sec_type.upper() in NO_VOLUME_CLASSES

    @cached_property
    def session_calendar(self) -> SessionCalendar:
        """The instrument's calendar (`ib.calendars`): its time zone and when its sessions open."""
        return calendar_named(self.calendar)

    def session_day(self) -> pl.Expr:
        """The session a bar belongs to: for an intraday bar the exchange-local date, shifted for sessions that
        open the evening before (a Globex bar at 18:00 New York is the next day's); the UTC date of a daily
        stamp."""
        ts = pl.col("ts")
        return session_dates(ts, self.calendar) if self.intraday else ts.dt.date()


@dataclass(frozen=True)
class Sessions:
    """Open and close of the sessions on the days a batch touches, and the mid-day break of a session that pauses
    (Tokyo's lunch; null elsewhere), so rules are lookups rather than calendar calls per row. Days that are not
    sessions are simply absent."""

    days: pl.Series
    opens: pl.Series
    closes: pl.Series
    pauses: pl.Series
    """Where a session's mid-day break starts (null: no break)."""
    resumes: pl.Series
    """Where it ends: the afternoon's first bar starts here, as a session's first bar starts at its open."""

    @classmethod
    def for_days(cls, days: list[date], series: BarSeries) -> Sessions:
        spans: dict[date, list[tuple[datetime, datetime]]] = {}
        for day in days:
            try:
                spans[day] = bar_spans(series.calendar, day, series.use_rth)
            except KeyError:
                continue  # not a session (weekend, holiday) or beyond the calendar
        split = [s if len(s) > 1 else None for s in spans.values()]
        return cls(pl.Series("day", list(spans), pl.Date()),
                   pl.Series("open", [s[0][0] for s in spans.values()], UTC_US),
                   pl.Series("close", [s[-1][1] for s in spans.values()], UTC_US),
                   pl.Series("pause", [s[0][1] if s else None for s in split], UTC_US),
                   pl.Series("resume", [s[1][0] if s else None for s in split], UTC_US))

    @classmethod
    def for_frame(cls, frame: pl.DataFrame, series: BarSeries) -> Sessions:
        days = frame.select(series.session_day().drop_nulls().unique()).to_series().to_list()
        return cls.for_days(days, series)

    def open_of(self, day: pl.Expr) -> pl.Expr:
        return day.replace_strict(self.days, self.opens, default=None, return_dtype=UTC_US)

    def close_of(self, day: pl.Expr) -> pl.Expr:
        return day.replace_strict(self.days, self.closes, default=None, return_dtype=UTC_US)

    def resume_of(self, day: pl.Expr) -> pl.Expr:
        return day.replace_strict(self.days, self.resumes, default=None, return_dtype=UTC_US)

    def in_break(self, day: pl.Expr) -> pl.Expr:
        """Whether `ts` lies in its session's mid-day break (False for a session without one)."""
        pause = day.replace_strict(self.days, self.pauses, default=None, return_dtype=UTC_US)
        return ((pl.col("ts") >= pause) & (pl.col("ts") < self.resume_of(day))).fill_null(False)

    def is_session(self, day: pl.Expr) -> pl.Expr:
        return day.is_in(self.days.implode())


def num(column: str) -> pl.Expr:
    """A numeric column with NaN as missing (see the module docstring)."""
    return pl.col(column).cast(pl.Float64).fill_nan(None)


def _passes(condition: pl.Expr) -> pl.Expr:
    return condition.fill_null(True)


def _passes_on_ts(condition: pl.Expr) -> pl.Expr:
    """A ts rule: a missing ts is not_null's failure, not this rule's."""
    return pl.col("ts").is_null() | condition.fill_null(True)


def not_null() -> pl.Expr:
    return pl.all_horizontal([pl.col(c).is_not_null() for c in KEY_COLUMNS]
                             + [num(c).is_not_null() for c in PRICE_COLUMNS])


def positive_prices() -> pl.Expr:
    return pl.all_horizontal([_passes(num(c) > 0) for c in PRICE_COLUMNS])


def high_ge_open_close() -> pl.Expr:
    return _passes(num("high") >= num("open")) & _passes(num("high") >= num("close"))


def low_le_open_close() -> pl.Expr:
    return _passes(num("low") <= num("open")) & _passes(num("low") <= num("close"))


def _size_ok(column: str, series: BarSeries) -> pl.Expr:
    value = num(column)
    ok = value >= 0
    return _passes(ok | (value == -1) if series.allows_missing_volume else ok)


def volume_non_negative(series: BarSeries) -> pl.Expr:
    return pl.all_horizontal([_size_ok(c, series) for c in SIZE_COLUMNS])


def unique_key() -> pl.Expr:
    """The first copy of a key (input order) passes, later copies fail, whichever copy is right: the key is then
    either clean or missing (and reported as a gap), never silently replaced. Keys with a null are not_null's."""
    return pl.struct(BAR_KEY).is_first_distinct() | pl.any_horizontal([pl.col(c).is_null() for c in BAR_KEY])


def aligned_ts(series: BarSeries, sessions: Sessions) -> pl.Expr:
    """Intraday bars start on IB's clock grid (multiples of the bar size on the exchange's wall clock from its
    midnight, `ib.sessions.grid_offsets`, the rule the simulator builds its bars on) or at the session open, for the
    first, partial bar: 1-hour RTH bars start 09:30, 10:00, 11:00, ...; 4-hour Globex bars 18:00, 20:00, 00:00, ...
    New York, on a daylight-saving Sunday evening too. Likewise at the end of a mid-day break (Tokyo's 1-hour bars:
    11:00, then 12:30). Daily and longer bars are stamped 00:00 UTC of a session date. A day that is no session is
    in_session's."""
    ts, day = pl.col("ts"), series.session_day()
    if not series.intraday:
        return _passes_on_ts((ts.dt.truncate("1d") == ts) & sessions.is_session(day))
    on_grid = grid_offsets(ts, series.step, series.session_calendar.time_zone).dt.total_microseconds() == 0
    return _passes_on_ts(on_grid | (ts == sessions.open_of(day)) | (ts == sessions.resume_of(day)).fill_null(False))


def in_session(series: BarSeries, sessions: Sessions) -> pl.Expr:
    """Intraday bars start inside the [open, close) of their session (`BarSeries.session_day`), not in its mid-day
    break (IB has no bars in Tokyo's lunch); daily bars are on a session date."""
    ts, day = pl.col("ts"), series.session_day()
    if not series.intraday:
        return _passes_on_ts(sessions.is_session(day))
    open_, close = sessions.open_of(day), sessions.close_of(day)
    return _passes_on_ts(open_.is_not_null() & (ts >= open_) & (ts < close) & ~sessions.in_break(day))


def rules(series: BarSeries, sessions: Sessions) -> dict[str, pl.Expr]:
    """Every blocking rule, in precedence order, as a pass expression named after its check."""
    exprs = {
        "not_null": not_null(),
        "positive_prices": positive_prices(),
        "high_ge_open_close": high_ge_open_close(),
        "low_le_open_close": low_le_open_close(),
        "volume_non_negative": volume_non_negative(series),
        "unique_key": unique_key(),
        "aligned_ts": aligned_ts(series, sessions),
        "in_session": in_session(series, sessions),
    }
    return {name: expr.alias(name) for name, expr in exprs.items()}


def first_failed() -> pl.Expr:
    """`failed_check`: the first blocking check (precedence order) a row fails, null when it passes them all, over
    a frame of one failure column per check (`~rule`)."""
    return pl.coalesce([pl.when(pl.col(c)).then(pl.lit(c)) for c in BLOCKING_CHECKS]).alias("failed_check")


def _value(column: str) -> pl.Expr:
    return pl.format("{} {}", pl.lit(column), pl.col(column).cast(pl.String).fill_null("null"))


def _ts_text() -> pl.Expr:
    return pl.col("ts").dt.to_string("%Y-%m-%d %H:%M:%S UTC")


def _listing(parts: list[tuple[pl.Expr, pl.Expr]]) -> pl.Expr:
    """Comma-separated texts of the (text, condition) parts whose condition holds."""
    return pl.concat_str([pl.when(cond).then(text) for text, cond in parts], separator=", ", ignore_nulls=True)


def details(series: BarSeries, sessions: Sessions) -> dict[str, pl.Expr]:
    """Why a row failed each check, in words an operator can act on (e.g. `high 10.0 < open 10.5`)."""
    size_bad = [(_value(c), ~_size_ok(c, series)) for c in SIZE_COLUMNS]
    day = series.session_day()
    if series.intraday:
        grid = pl.format("ts {} is not on the {} grid from the session open {}", _ts_text(), pl.lit(series.bar_size),
                         sessions.open_of(day).dt.to_string("%H:%M UTC"))
        outside = pl.when(sessions.in_break(day)).then(
            pl.format("ts {} is in the session's mid-day break, which ends {}", _ts_text(),
                      sessions.resume_of(day).dt.to_string("%H:%M UTC"))
        ).when(sessions.is_session(day)).then(
            pl.format("ts {} is outside the session {}..{}", _ts_text(),
                      sessions.open_of(day).dt.to_string("%H:%M"), sessions.close_of(day).dt.to_string("%H:%M UTC"))
        ).otherwise(pl.format("ts {}: {} is not a session", _ts_text(), day.dt.to_string("%Y-%m-%d")))
    else:
        grid = pl.format("ts {} is not 00:00 UTC of a session date", _ts_text())
        outside = pl.format("{} is not a session", day.dt.to_string("%Y-%m-%d"))
    return {
        "not_null": pl.format("missing: {}", _listing([(pl.lit(c), pl.col(c).is_null()) for c in KEY_COLUMNS]
                                                   + [(pl.lit(c), num(c).is_null()) for c in PRICE_COLUMNS])),
        "positive_prices": pl.format("not positive: {}", _listing([(_value(c), num(c) <= 0) for c in PRICE_COLUMNS])),
        "high_ge_open_close": pl.format("{} < {}", _value("high"),
                                        _listing([(_value(c), num("high") < num(c)) for c in ("open", "close")])),
        "low_le_open_close": pl.format("{} > {}", _value("low"),
                                       _listing([(_value(c), num("low") > num(c)) for c in ("open", "close")])),
        "volume_non_negative": pl.format("negative: {}", _listing(size_bad)),
        "unique_key": pl.format("duplicate of an earlier bar at ts {}", _ts_text()),
        "aligned_ts": grid,
        "in_session": outside,
    }
