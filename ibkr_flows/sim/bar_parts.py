"""Cutting a long window of sessions into pieces that each end where a bar ends, so a window's bars are built piece
by piece (`SyntheticBars.parts`: smaller frames, ~1.7x faster on years of daily bars, less memory) and the pieces
concatenate to exactly the bars of the whole window.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta

PART_SESSIONS = 32
"""Sessions per piece: ~30k generated minutes, ~15 ms of work."""


def bucket_groups(days: Sequence[date], bar_size: str) -> Iterator[list[date]]:
    """`days` in consecutive groups of at least `PART_SESSIONS` (the last may be shorter), each ending where a
    bar of `bar_size` ends: intraday and daily bars never span two sessions, weekly and monthly ones do."""
    group: list[date] = []
    for day in days:
        if len(group) >= PART_SESSIONS and _bucket(day, bar_size) != _bucket(group[-1], bar_size):
            yield group
            group = []
        group.append(day)
    if group:
        yield group


def _bucket(day: date, bar_size: str) -> date:
    """The first day of the bar `day` belongs to."""
    if bar_size == "1 week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if bar_size == "1 month" else day
