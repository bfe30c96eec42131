"""Which prices a backtest sees: as traded, split-adjusted, or adjusted for splits and dividends (total return).

Stored TRADES bars are split-adjusted as of their last re-scale: IB serves them split-adjusted as of the request,
and `storage.bars_rescale` puts older stored bars on the scale of each split it learns of, recording the action
and the bars-table version it produced in `corporate_actions`. So "splits" is the stored data (plus any split
re-scaled after the version being read, when reading an older version), "none" undoes every re-scaled split after
each bar's session (the prices printed that day), and "total" also divides the bars before each recorded ex-date
by the dividend's factor, as a total-return series does.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from ibkr_flows.backtest.request import Adjust
from ibkr_flows.ib.historical import bar_step
from storage.corporate_actions_table import ActionKind

PRICE_COLUMNS = ("open", "high", "low", "close")


def session_dates(bar_size: str, calendar: str = "XNYS") -> pl.Expr:
    """Each bar's session date: dated bars are stamped 00:00 UTC of it; an intraday bar's is its session on the
    instrument's `calendar` (`ib.calendars`): its date in the exchange's time zone (Tokyo's for a Tokyo bar), the
    next day's for a Globex evening bar."""
    if bar_step(bar_size) >= timedelta(days=1):
        return pl.col("ts").dt.date()
    from ibkr_flows.ib.calendars import session_dates as on_calendar  # loads exchange_calendars: only who needs it

    return on_calendar(pl.col("ts"), calendar)


def _applied(action: dict[str, object], read_version: int) -> bool:
    """Whether the bars read (at `read_version`) were re-scaled for this action already. No version after: the
    re-scale found no bar before the action, so any bar before it was fetched later, on the new scale."""
    after = action["bars_version_after"]
    return after is None or int(after) <= read_version  # type: ignore[call-overload]


def adjust_bars(bars: pl.DataFrame, actions: pl.DataFrame, mode: Adjust, *, bar_size: str,
                read_version: int, calendar: str = "XNYS") -> pl.DataFrame:
    """`bars` (ts, open, high, low, close[, volume]) of one instrument's TRADES series, read at `read_version`,
    with prices (and volumes, for splits) as `mode` asks; `actions` are its rows of `corporate_actions`, dated by
    the sessions of its `calendar`."""
    price_factor = pl.lit(1.0)
    volume_factor = pl.lit(1.0)
    day = session_dates(bar_size, calendar)
    for action in actions.iter_rows(named=True):
        before = day < action["effective_date"]
        factor = float(action["factor"])
        if action["kind"] == ActionKind.SPLIT:
            applied = _applied(action, read_version)
            if mode == "none" and applied:  # back to the scale of the day
                step = factor
            elif mode != "none" and not applied:  # re-scaled after the version read: do it here
                step = 1.0 / factor
            else:
                continue
            price_factor = price_factor * pl.when(before).then(step).otherwise(1.0)
            volume_factor = volume_factor / pl.when(before).then(step).otherwise(1.0)
        elif mode == "total":
            price_factor = price_factor * pl.when(before).then(1.0 / factor).otherwise(1.0)
    adjusted = [(pl.col(c) * price_factor).alias(c) for c in PRICE_COLUMNS]
    if "volume" in bars.columns:
        adjusted.append((pl.col("volume") * volume_factor).alias("volume"))
    return bars.with_columns(adjusted)
