"""IB's barSizeSetting vocabulary, shared by the simulator, the ingestion planner and the quality checks."""

from __future__ import annotations

from datetime import timedelta

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


class UnknownBarSizeError(ValueError):
    """Not one of IB's barSizeSetting strings (IB answers such a request with error 321)."""


def bar_step(bar_size: str) -> timedelta:
    try:
        return BAR_SIZES[bar_size]
    except KeyError:
        raise UnknownBarSizeError(
            f"unknown bar size {bar_size!r}; IB accepts: {', '.join(BAR_SIZES)}") from None


def is_intraday(bar_size: str) -> bool:
    """Intraday bars are stamped with their start instant; daily and longer bars with a date."""
    return bar_step(bar_size) < timedelta(days=1)
