"""IB's historical-data pacing rules, stated once: the simulator enforces them, the ingestion's client-side budget
stays within them.

Source: TWS API docs, "Historical Data Limitations". The hard limits apply to bars of 30 seconds or less
(`historical.SMALL_BAR_MAX`); larger bars get a soft throttle. TWS counts requests per login, not per client.
"""

from __future__ import annotations

IDENTICAL_WINDOW_S = 15.0
"""No identical request within 15 seconds."""
BURST_WINDOW_S = 2.0
BURST_LIMIT = 6
"""Six or more requests for one contract/exchange/tick type within two seconds is a violation (five is the most)."""
LONG_WINDOW_S = 600.0
LONG_LIMIT = 60
"""More than 60 requests within any ten minutes is a violation."""
MAX_OPEN = 50
"""At most 50 historical requests open at once."""
DOUBLE_WEIGHT_WHAT_TO_SHOW = "BID_ASK"
"""BID_ASK requests count twice towards every limit."""


def request_weight(what_to_show: str) -> int:
    return 2 if what_to_show.upper() == DOUBLE_WEIGHT_WHAT_TO_SHOW else 1
