"""IB's historical-data vocabulary: bar sizes, what-to-show values, durations and their limits. The simulator
enforces these, the ingestion planner stays within them and the quality checks read them, from this one place.

Source: https://interactivebrokers.github.io/tws-api/historical_limitations.html and IB's TWS API documentation
("Market Data: Historical").
"""

from __future__ import annotations

from datetime import timedelta
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
MAX_REQUEST_SECONDS: dict[str, int] = {
    "1 secs": 1800, "5 secs": 3600, "10 secs": 14400, "15 secs": 14400, "30 secs": 28800,
}
"""IB's documented duration steps for small bars; every other intraday size fits a whole session (86400 S)."""
MAX_INTRADAY_REQUEST_S = 86400
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
