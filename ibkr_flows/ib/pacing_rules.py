"""IB's historical-data pacing rules, stated once: the simulator enforces them, the ingestion's client-side budget
stays within them.

Source: TWS API docs, "Historical Data Limitations". The hard limits (the three windows and the identical-request
rule) apply to bars of 30 seconds or less (`historical.SMALL_BAR_MAX`) and to reqHeadTimeStamp; for 1-minute and
larger bars IB "lifts" them and only a soft throttle remains (answers slow down), with the 50-open cap. TWS counts
requests per login, not per client.
"""

from __future__ import annotations

from ibkr_flows.ib.historical import BAR_SIZES, SMALL_BAR_MAX

IDENTICAL_WINDOW_S = 15.0
"""No identical request within 15 seconds."""
BURST_WINDOW_S = 2.0
BURST_LIMIT = 6
"""Six or more requests for one contract/exchange/tick type within two seconds is a violation (five is the most)."""
LONG_WINDOW_S = 600.0
LONG_LIMIT = 60
"""More than 60 requests within any ten minutes is a violation."""
MAX_OPEN = 50
"""At most 50 historical requests open at once, whatever the bar size."""
DOUBLE_WEIGHT_WHAT_TO_SHOW = "BID_ASK"
"""BID_ASK requests count twice towards every limit."""


def request_weight(what_to_show: str) -> int:
    return 2 if what_to_show.upper() == DOUBLE_WEIGHT_WHAT_TO_SHOW else 1


def hard_limits_apply(bar_size: str | None) -> bool:
    """Whether IB's hard limits cover a request: bars of 30 seconds or less, and a head timestamp (`None`: it has
    no bar size, and IB counts it under the small-bar rules). A bar size IB does not know is treated as small, the
    safe side: TWS refuses it anyway."""
    if bar_size is None:
        return True
    step = BAR_SIZES.get(bar_size)
    return step is None or step <= SMALL_BAR_MAX
