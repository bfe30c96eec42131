"""IB's historical-data vocabulary: bar sizes, what-to-show values, durations and their limits. The simulator
enforces these, the ingestion planner stays within them and the quality checks read them, from this one place.

Source: https://interactivebrokers.github.io/tws-api/historical_limitations.html and IB's TWS API documentation
("Market Data: Historical").
"""

from __future__ import annotations

from calendar import monthrange
from datetime import datetime, timedelta
from typing import Literal, get_args

BarSize = Literal["1 secs", "5 secs", "10 secs", "15 secs", "30 secs", "1 min", "2 mins", "3 mins", "5 mins",
                  "10 mins", "15 mins", "20 mins", "30 mins", "1 hour", "2 hours", "3 hours", "4 hours", "8 hours",
                  "1 day", "1 week", "1 month"]
"""IB's barSizeSetting strings, as a type (the Prefect form shows them as a drop-down)."""

BAR_SIZES: dict[str, timedelta] = {
    "1 secs": timedelta(seconds=1), "5 secs": timedelta(seconds=5), "10 secs": timedelta(seconds=10),
    "15 secs": timedelta(seconds=15), "30 secs": timedelta(seconds=30),
    "1 min": timedelta(minutes=1), "2 mins": timedelta(minutes=2), "3 mins": timedelta(minutes=3),
    "5 mins": timedelta(minutes=5), "10 mins": timedelta(minutes=10), "15 mins": timedelta(minutes=15),
    "20 mins": timedelta(minutes=20), "30 mins": timedelta(minutes=30),
    "1 hour": timedelta(hours=1), "2 hours": timedelta(hours=2), "3 hours": timedelta(hours=3),
    "4 hours": timedelta(hours=4), "8 hours": timedelta(hours=8),
    "1 day": timedelta(days=1), "1 week": timedelta(weeks=1), "1 month": timedelta(days=30),
}
"""Every size IB accepts, with its nominal length (a month is nominal: monthly bars follow the calendar)."""
assert tuple(BAR_SIZES) == get_args(BarSize)

WhatToShow = Literal["TRADES", "MIDPOINT", "BID_ASK", "ADJUSTED_LAST", "BID", "ASK"]
WHAT_TO_SHOW: tuple[str, ...] = get_args(WhatToShow)
QUOTE_TYPES = frozenset({"MIDPOINT", "BID", "ASK", "BID_ASK"})
"""Quote-based bars carry no volume, WAP or trade count: TWS sends -1 for them."""

SMALL_BAR_MAX = timedelta(seconds=30)
"""Bars of this size or less fall under IB's hard pacing limits and are unavailable beyond six months."""
SMALL_BAR_HISTORY_MONTHS = 6
"""How far back IB keeps bars of `SMALL_BAR_MAX` or less, counted back from now."""

DURATION_STEPS: tuple[tuple[str, str], ...] = (
    ("60 S", "1 secs"), ("120 S", "1 secs"), ("1800 S", "1 secs"), ("3600 S", "5 secs"), ("14400 S", "10 secs"),
    ("28800 S", "30 secs"), ("1 D", "1 min"), ("2 D", "2 mins"), ("1 W", "3 mins"), ("1 M", "30 mins"),
    ("1 Y", "1 day"),
)
"""IB's table of duration steps: each durationStr and the smallest bar size it may be asked with. A request with
a longer duration than its bar size's step is refused with 162 'Time length exceed max.'."""
DURATION_UNIT_LIMITS: dict[str, int] = {"S": 86400, "D": 365, "W": 52, "M": 12, "Y": 68}
"""The largest count per durationStr unit; longer spans must be written in the larger unit."""
NOMINAL_UNIT_SECONDS: dict[str, int] = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 31 * 86400, "Y": 366 * 86400}
"""A unit's longest length, for comparing durations across units (a month is at most 31 days)."""


def _max_durations() -> dict[str, str]:
    """Each bar size's longest allowed duration, read off `DURATION_STEPS`. Dated bars (the step table's last row
    is '1 Y') may span up to the year unit's limit (68 Y): TWS serves many years of daily bars in one request."""
    limits = {}
    for bar_size, step in BAR_SIZES.items():
        if step >= timedelta(days=1):
            limits[bar_size] = f"{DURATION_UNIT_LIMITS['Y']} Y"
        else:
            limits[bar_size] = [duration for duration, smallest in DURATION_STEPS if BAR_SIZES[smallest] <= step][-1]
    return limits


MAX_DURATION: dict[str, str] = _max_durations()
"""The longest durationStr TWS accepts per bar size; the simulator refuses longer ones, the planner stays within."""
MAX_REQUEST_SECONDS: dict[str, int] = {
    size: int(duration.split()[0]) for size, duration in MAX_DURATION.items() if duration.endswith(" S")
}
"""The limits of the bar sizes whose step is counted in seconds (30 secs and less)."""
MAX_INTRADAY_REQUEST_S = 86400
"""A whole session or less in seconds: within the step of every intraday size from 1 min up."""
DURATION_UNITS = ("S", "D", "W", "M", "Y")


class UnknownBarSizeError(ValueError):
    """Not one of IB's barSizeSetting strings (IB answers such a request with error 321)."""


class InvalidDuration(ValueError):
    """A durationStr TWS would reject."""


def bar_step(bar_size: str) -> timedelta:
    try:
        return BAR_SIZES[bar_size]
    except KeyError:
        raise UnknownBarSizeError(
            f"unknown bar size {bar_size!r}; IB accepts: {', '.join(BAR_SIZES)}") from None


def is_intraday(bar_size: str) -> bool:
    """Intraday bars are stamped with their start instant; daily and longer bars with a date."""
    return bar_step(bar_size) < timedelta(days=1)


def parse_duration(duration: str) -> tuple[int, str]:
    """`"<N> <S|D|W|M|Y>"` -> (N, unit)."""
    parts = duration.split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in DURATION_UNITS or int(parts[0]) < 1:
        raise InvalidDuration(f"{duration!r} (expected '<integer> <S|D|W|M|Y>', e.g. '3600 S' or '5 D')")
    return int(parts[0]), parts[1]


def nominal_seconds(duration: str) -> int:
    """A duration's longest length in seconds ('1 M' = 31 days), for comparing durations of different units."""
    count, unit = parse_duration(duration)
    return count * NOMINAL_UNIT_SECONDS[unit]


def duration_exceeds_max(duration: str, bar_size: str) -> bool:
    """Whether TWS refuses `duration` for `bar_size` with 'Time length exceed max.' (its unit count over the
    unit's limit, or longer than the bar size's step)."""
    count, unit = parse_duration(duration)
    if count > DURATION_UNIT_LIMITS[unit]:
        return True
    return nominal_seconds(duration) > nominal_seconds(MAX_DURATION[bar_size])


def oldest_available(bar_size: str, now: datetime) -> datetime | None:
    """The oldest instant IB still holds bars of `bar_size` for: six months back for bars of 30 secs or less,
    None (no limit) for larger bars."""
    if bar_step(bar_size) > SMALL_BAR_MAX:
        return None
    years, month0 = divmod(now.month - 1 - SMALL_BAR_HISTORY_MONTHS, 12)
    year, month = now.year + years, month0 + 1
    return now.replace(year=year, month=month, day=min(now.day, monthrange(year, month)[1]))


# --- whatToShow / endDateTime / keepUpToDate combinations -------------------------------------------------------

EMPTY_END_REQUIRED: dict[str, str] = {"ADJUSTED_LAST": "End date not supported with adjusted last"}
"""whatToShow values that only exist up to now: an endDateTime is refused with 321 and this cause."""
LIVE_UPDATES_END_CAUSE = "End date not supported with live updates"
"""keepUpToDate=True streams the bar being built now, so it takes no endDateTime (321 with this cause)."""
LIVE_UPDATE_WHAT_TO_SHOW = frozenset({"TRADES", "MIDPOINT", "BID", "ASK"})
"""The whatToShow values IB documents for keepUpToDate subscriptions."""
LIVE_UPDATES_TYPE_CAUSE = "keepUpToDate is not supported for {what_to_show}"
"""The simulator's wording (IB's text for this case is not documented) for keepUpToDate with another type."""


def request_conflict(what_to_show: str, end: str, keep_up_to_date: bool) -> str | None:
    """The cause TWS gives (error 321) for a whatToShow / endDateTime / keepUpToDate combination it refuses, or
    None when the combination is allowed. An empty (or blank) `end` means now."""
    has_end = bool(end.strip())
    if has_end and what_to_show in EMPTY_END_REQUIRED:
        return EMPTY_END_REQUIRED[what_to_show]
    if keep_up_to_date and has_end:
        return LIVE_UPDATES_END_CAUSE
    if keep_up_to_date and what_to_show not in LIVE_UPDATE_WHAT_TO_SHOW:
        return LIVE_UPDATES_TYPE_CAUSE.format(what_to_show=what_to_show)
    return None
