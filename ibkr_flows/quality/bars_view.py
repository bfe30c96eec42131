"""Bars as people and notebooks read them: each bar with the date of the exchange session it belongs to.

IB stamps a daily bar with its session's date, stored as 00:00 UTC: a reader who converts that to New York time
sees the previous evening and shifts the bar a day back. The `session` column says which trading day a bar is,
for daily bars (their UTC date) and intraday ones (their session on the instrument's calendar: a Tokyo bar's
Tokyo date, a Globex evening bar's next trade date) alike, so nobody has to work it out.
"""

from __future__ import annotations

import polars as pl

from ibkr_flows.quality.checks import BarSeries

BAR_VALUES = ["ts", "open", "high", "low", "close", "volume", "wap", "bar_count"]
"""A bar's values, without the lineage columns: what `load_bars` returns and `ibkr data show` prints."""


def session_column(bar_size: str, calendar: str = "XNYS") -> pl.Expr:
    """The `session` date of each bar of one bar size, of an instrument trading on `calendar` (`ib.calendars`)."""
    return BarSeries(bar_size, use_rth=True, what_to_show="TRADES", calendar=calendar).session_day().alias("session")


def bars_view(bars: pl.LazyFrame, bar_size: str, calendar: str = "XNYS") -> pl.LazyFrame:
    """`session`, then the bar's values."""
    return bars.select(session_column(bar_size, calendar), *BAR_VALUES)
