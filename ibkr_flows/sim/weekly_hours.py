"""Trading and liquid hours of the simulator's non-NYSE listings, as a plain weekly schedule in TWS's text format.

NYSE-listed instruments get their hours from the exchange calendar (`ib.sessions.session_hours_text`: holidays,
half days). The others (Xetra, Tokyo, CME Globex, IDEALPRO, CBOE indices) use the weekly schedule below: the right
hours on every weekday, but no exchange holidays or half days. A session that opens the evening before (Globex,
FX) is listed under its trading day as `20250112:1700-20250113:1600`, as TWS lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time, timedelta

WEEKDAYS = frozenset(range(5))


@dataclass(frozen=True)
class WeeklyHours:
    """One trading day's sessions in exchange-local time; a segment whose open is after its close opens the
    previous evening."""

    segments: tuple[tuple[time, time], ...]
    weekdays: frozenset[int] = WEEKDAYS

    def text(self, first_day: date, days: int) -> str:
        """TWS's hours text for `days` calendar days from `first_day`: `YYYYMMDD:HHMM-YYYYMMDD:HHMM` per segment,
        `YYYYMMDD:CLOSED` on a day without a session."""
        parts = []
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            if day.weekday() not in self.weekdays:
                parts.append(f"{day:%Y%m%d}:CLOSED")
                continue
            for start, end in self.segments:
                opened = day - timedelta(days=1) if start > end else day
                parts.append(f"{opened:%Y%m%d}:{start:%H%M}-{day:%Y%m%d}:{end:%H%M}")
        return ";".join(parts)


XETRA = WeeklyHours(((time(9, 0), time(17, 30)),))
"""Xetra (IBIS) continuous trading, Frankfurt time."""
TOKYO = WeeklyHours(((time(9, 0), time(11, 30)), (time(12, 30), time(15, 30))))
"""Tokyo Stock Exchange: morning and afternoon sessions (15:30 close since November 2024), Tokyo time."""
GLOBEX = WeeklyHours(((time(17, 0), time(16, 0)),))
"""CME Globex equity futures: 17:00 the evening before to 16:00 Chicago time, a one-hour daily break."""
GLOBEX_LIQUID = WeeklyHours(((time(8, 30), time(15, 0)),))
"""The regular (pit-hours) part of a Globex day, Chicago time: TWS's liquidHours for CME equity futures."""
IDEALPRO = WeeklyHours(((time(17, 15), time(17, 0)),))
"""IDEALPRO FX: 17:15 the evening before to 17:00 New York time, Sunday evening to Friday."""
CBOE_INDEX = WeeklyHours(((time(8, 30), time(15, 15)),))
"""CBOE index values, Chicago time (08:30-15:15, the SPX options day)."""
CBOE_INDEX_LIQUID = WeeklyHours(((time(8, 30), time(15, 0)),))
TORONTO = WeeklyHours(((time(9, 30), time(16, 0)),))
"""Toronto Stock Exchange, Toronto time."""
