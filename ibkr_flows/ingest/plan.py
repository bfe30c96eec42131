"""Which historical requests to send: from the table's watermark (or a start date) up to now, in chunks IB
accepts, skipping days the exchange is closed.

Chunks follow the instrument's sessions (`calendar`, an `ib.calendars` name: XNYS, XETR, CME_GLOBEX, FX_24_5, ...):
a request never spans a weekend, holiday or daily break, so no request is wasted on a range IB would answer with
"no data", and each request's window is exactly one session (or a piece of one). A Globex or FX session opens the
evening before its trade date, and its request covers it from that evening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from ibkr_flows.ib.historical import (
    DURATION_UNIT_LIMITS,
    EMPTY_END_REQUIRED,
    MAX_INTRADAY_REQUEST_S,
    MAX_REQUEST_SECONDS,
    bar_step,
    is_intraday,
)
from ibkr_flows.ib.sessions import session_bounds, sessions_between

WHOLE_SERIES = frozenset(EMPTY_END_REQUIRED)
"""What-to-show values IB serves only up to now (an empty end date; ADJUSTED_LAST) and re-adjusts as a whole on
every dividend or split: fetched in one request per run and stored in place of the series."""
WHOLE_SERIES_CLASSES = frozenset({"CONTFUT"})
"""Security types IB serves only up to now, whatever the data type: a continuous future (its contracts and roll
dates are IB's, and an end date is refused), fetched and stored as a whole-series snapshot like ADJUSTED_LAST."""


def fetched_whole(what_to_show: str, sec_type: str) -> bool:
    """Whether a series is fetched in one up-to-now request and replaced as a whole (no watermark)."""
    return what_to_show in WHOLE_SERIES or sec_type.upper() in WHOLE_SERIES_CLASSES


@dataclass(frozen=True)
class Chunk:
    """One reqHistoricalData: bars starting in [start, end), asked as `end` + `duration`, or, `up_to_now`, as an
    empty end date (TWS's "now", which `end` then is) + `duration`."""

    start: datetime
    end: datetime
    duration: str
    up_to_now: bool = False

    @property
    def end_date_time(self) -> datetime | str:
        """The request's endDateTime: empty means "now" to TWS."""
        return "" if self.up_to_now else self.end

    def describe(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool) -> str:
        """The lineage string stored with every row this request produced."""
        end = f"now({self.end:%Y%m%d-%H:%M:%S})" if self.up_to_now else f"{self.end:%Y%m%d-%H:%M:%S}"
        return f"{symbol} {bar_size} {what_to_show} {'rth' if use_rth else 'eth'} end={end} dur={self.duration}"


def plan_chunks(start: datetime, end: datetime, *, bar_size: str, use_rth: bool, calendar: str = "XNYS"
                ) -> list[Chunk]:
    """Requests covering every bar that starts in [start, end), oldest first.

    Intraday sizes: one request per session of `calendar` (the instrument's: `ResolvedSeries.planning_calendar`),
    or per IB duration step for bars of 30 seconds or less, durations in seconds so the window is exact.
    Daily and longer: one request per year ending at the range end.
    """
    if end <= start:
        return []
    if not is_intraday(bar_size):
        return _yearly_chunks(start, end)
    step = MAX_REQUEST_SECONDS.get(bar_size, MAX_INTRADAY_REQUEST_S)
    chunks: list[Chunk] = []
    for session in sessions_between(start, end, calendar):
        open_, close = session_bounds(session, use_rth, calendar)
        lo, hi = max(open_, start), min(close, end)
        while lo < hi:
            piece_end = min(hi, lo + timedelta(seconds=step))
            span = math.ceil((piece_end - lo).total_seconds())
            chunks.append(Chunk(piece_end - timedelta(seconds=span), piece_end, f"{span} S"))
            lo = piece_end
    return chunks


def plan_up_to_now(start: datetime, now: datetime) -> Chunk:
    """One request reaching back from TWS's `now` to `start`: how IB serves a series it re-adjusts as a whole
    (ADJUSTED_LAST takes no end date). Whole days ("N D" counts sessions, so it reaches at least as far back),
    or whole years beyond IB's 365-day cap on "D"; the bars before `start` are dropped on arrival."""
    days = max(1, math.ceil((now - start) / timedelta(days=1)))
    duration = f"{days} D" if days <= DURATION_UNIT_LIMITS["D"] else f"{math.ceil(days / 365)} Y"
    return Chunk(start, now, duration, up_to_now=True)


def _yearly_chunks(start: datetime, end: datetime) -> list[Chunk]:
    chunks: list[Chunk] = []
    hi = end
    while hi > start:
        lo = max(start, hi - timedelta(days=365))
        chunks.append(Chunk(lo, hi, "1 Y"))
        hi = lo
    return chunks[::-1]


def resume_start(watermark: datetime | None, configured_start: datetime, head: datetime | None, *, bar_size: str,
                 overlap_bars: int = 5) -> datetime:
    """Where fetching resumes: a few bars before the last stored one (its last bar may have been partial, IB
    revises recent bars, and the re-fetched bars show a split or dividend since: `scales`), or, for a series
    never stored, the configured start bounded by IB's first available bar (reqHeadTimeStamp)."""
    if watermark is not None:
        return watermark - bar_step(bar_size) * overlap_bars
    return max(configured_start, head) if head is not None else configured_start
