"""Session completeness: bars expected per session versus distinct clean bars received (a warning, never a block).

Only whole sessions are judged: with a window, the sessions whose bar span (per use_rth) lies fully inside it;
without one, the sessions the batch has bars in. Holidays and weekends are not sessions and a session cut by the
window's edges is not judged, so neither produces a false gap; a judged session with no bars at all is a gap. A
session's bars are counted on IB's clock grid (`ib.calendars.session_bar_count`): its first, partial bar at the
open, none in a mid-day break (Tokyo's lunch), the afternoon's first at the break's end.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from ibkr_flows.ib.calendars import session_bar_count
from ibkr_flows.ib.sessions import session_bounds, sessions_between
from ibkr_flows.quality.checks import BarSeries, CheckOutcome, Sessions

GAPS_SCHEMA = pl.Schema({"session": pl.Date(), "expected": pl.Int64(), "received": pl.Int64(),
                         "missing": pl.Int64()})
LISTED_SESSIONS = 5


def is_judged(series: BarSeries) -> bool:
    """Weekly and monthly bars follow the calendar, not a session count: nothing to expect per session."""
    return series.intraday or series.bar_size == "1 day"


def judged_sessions(series: BarSeries, window: tuple[datetime, datetime] | None, in_data: Sessions) -> Sessions:
    if window is None:
        return in_data
    start, end = window
    inside = []
    for day in sessions_between(start, end, series.calendar):
        open_, close = session_bounds(day, series.use_rth, series.calendar)
        if start <= open_ and close <= end:
            inside.append(day)
    return Sessions.for_days(inside, series)


def session_gaps(clean: pl.DataFrame, series: BarSeries, sessions: Sessions) -> pl.DataFrame:
    """Judged sessions with fewer distinct clean bars than expected; a partial intraday bar counts."""
    days = sessions.days.to_list()
    expected = ([session_bar_count(series.calendar, day, series.use_rth, series.step) for day in days]
                if series.intraday else [1] * len(days))
    received = (clean.group_by(series.session_day().alias("session"))
                .agg(received=pl.col("ts").n_unique().cast(pl.Int64())))
    return (pl.DataFrame({"session": days, "expected": expected}, schema={"session": pl.Date(), "expected": pl.Int64()})
            .join(received, on="session", how="left")
            .with_columns(pl.col("received").fill_null(0))
            .with_columns(missing=pl.col("expected") - pl.col("received"))
            .filter(pl.col("missing") > 0)
            .sort("session")
            .cast(dict(GAPS_SCHEMA)))


def completeness_outcome(gaps: pl.DataFrame, judged: int) -> CheckOutcome:
    if gaps.is_empty():
        detail = f"{judged} whole session(s) complete" if judged else "no whole session to judge"
        return CheckOutcome("completeness", "warning", passed=True, failed_rows=0, detail=detail)
    missing = int(gaps["missing"].sum())
    listed = ", ".join(f"{row['session']} ({row['missing']} of {row['expected']})"
                       for row in gaps.head(LISTED_SESSIONS).iter_rows(named=True))
    more = f" and {gaps.height - LISTED_SESSIONS} more" if gaps.height > LISTED_SESSIONS else ""
    return CheckOutcome("completeness", "warning", passed=False, failed_rows=missing,
                        detail=f"{missing} bar(s) missing in {gaps.height} of {judged} session(s): {listed}{more}")
