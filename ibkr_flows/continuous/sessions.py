"""Which trading session (trade date) each futures bar belongs to, and counting sessions back from an expiry, on
the futures exchange's own session calendar (`ib.calendars`, the one place that names it: CME and NYMEX trade on
CME Globex): Globex trades from 17:00 Central the evening before, so a Sunday-evening bar belongs to Monday's
session, and the NYSE calendar would miscount rolls around holidays CME trades through."""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import numpy as np
import polars as pl

from ibkr_flows.continuous.errors import UnknownExchangeCalendarError
from ibkr_flows.ib import calendars

CALENDAR_SPAN = (date(2000, 1, 1), date(2100, 12, 31))
"""The sessions looked up: every one the calendar lists in this span."""


def calendar_for(exchange: str) -> str:
    """The session calendar (`ib.calendars` name) of futures on `exchange`, as IB names it."""
    try:
        return calendars.calendar_for("FUT", exchange)
    except calendars.UnknownSessionCalendarError:
        raise UnknownExchangeCalendarError(exchange, sorted(calendars.GLOBEX_EXCHANGES)) from None


@lru_cache(maxsize=4)
def _sessions(calendar: str) -> tuple[np.ndarray, np.ndarray]:
    """Every session's label (dates) and close (UTC microseconds), oldest first."""
    cal = calendars.calendar_named(calendar)
    days = cal.sessions(*CALENDAR_SPAN)
    closes = [cal.session_bounds(day, use_rth=False)[1].replace(tzinfo=None) for day in days]  # naive UTC
    labels = np.array(days, dtype="datetime64[D]")
    return labels, np.array(closes, dtype="datetime64[us]").astype(np.int64)


def session_labels(ts: pl.Series, calendar: str) -> pl.Series:
    """The session of each bar start in `ts` (UTC): the first session closing after it. A daily bar, stamped
    00:00 UTC of its trade date (the evening before in Chicago), lands in that trade date's session."""
    labels, closes = _sessions(calendar)
    micros = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us")).cast(pl.Int64)
    index = np.searchsorted(closes, micros.to_numpy(), side="right")
    return pl.Series("session", labels[np.minimum(index, len(labels) - 1)], dtype=pl.Date)


def session_before(expiry: date, sessions: int, calendar: str) -> date:
    """The session `sessions` sessions before the expiry session (the last session on or before `expiry`)."""
    labels, _ = _sessions(calendar)
    expiry_index = int(np.searchsorted(labels, np.datetime64(expiry, "D"), side="right")) - 1
    return labels[max(0, expiry_index - sessions)].astype(object)


def next_session(day: date, calendar: str) -> date:
    """The session after `day` on the calendar."""
    labels, _ = _sessions(calendar)
    index = int(np.searchsorted(labels, np.datetime64(day, "D"), side="right"))
    return labels[min(index, len(labels) - 1)].astype(object)
