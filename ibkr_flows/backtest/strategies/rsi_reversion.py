"""RSI mean reversion: buy oversold, sell when overbought."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from ibkr_flows.backtest.strategies.base import Strategy, hold, require_between, require_positive, require_smaller


def wilder_average(change: pl.Expr, period: int) -> pl.Expr:
    """Wilder's smoothing: seeded with the plain mean of the first `period` changes, then alpha = 1 / period.

    The seed matters: seeding with the first change instead (a plain EWM) gives different RSI values for many
    periods, and published RSI values (Wilder, TA-Lib) use the mean seed.
    """
    row = pl.int_range(pl.len())
    seeded = pl.when(row == period).then(change.rolling_mean(period)).when(row > period).then(change)
    return seeded.ewm_mean(alpha=1 / period, adjust=False)


def wilder_rsi(column: str, period: int) -> pl.Expr:
    """RSI in 0..100, null for the first `period` bars; 50 when prices did not move at all over the average."""
    change = pl.col(column).diff()
    gain = wilder_average(change.clip(lower_bound=0.0), period)
    loss = wilder_average((-change).clip(lower_bound=0.0), period)
    total = gain + loss
    return pl.when(total > 0).then(100 * gain / total).when(total == 0).then(50.0)


@dataclass(frozen=True)
class RsiReversion(Strategy):
    """Go long when RSI closes below `lower`, go flat when it closes above `upper`; long-only by design."""

    name: ClassVar[str] = "rsi_reversion"
    period: int = 14
    lower: float = 30.0
    upper: float = 70.0

    def validate(self) -> None:
        require_positive(self, "period")
        require_between(self, "lower", 0, 100)
        require_between(self, "upper", 0, 100)
        require_smaller(self, "lower", "upper")

    @property
    def warmup_bars(self) -> int:
        return self.period

    def target(self) -> pl.Expr:
        rsi = wilder_rsi("close", self.period)
        return hold(pl.when(rsi < self.lower).then(1).when(rsi > self.upper).then(0))
