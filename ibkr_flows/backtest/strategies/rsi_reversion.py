"""RSI mean reversion: buy oversold, sell when overbought."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import polars as pl

from ibkr_flows.backtest.strategies.base import (
    Entry,
    Strategy,
    above,
    hold,
    require_between,
    require_positive,
    require_smaller,
)


def wilder_average(change: pl.Expr, period: int) -> pl.Expr:
    """Wilder's smoothing: seeded with the plain mean of the first `period` changes, then alpha = 1 / period.

    The seed matters: seeding with the first change instead (a plain EWM) gives different RSI values for many
    periods, and published RSI values (Wilder, TA-Lib) use the mean seed.
    """
    row = pl.int_range(pl.len())
    seeded = pl.when(row == period).then(wilder_seed(change, period)).when(row > period).then(change)
    return seeded.ewm_mean(alpha=1 / period, adjust=False)


def wilder_seed(change: pl.Expr, period: int) -> pl.Expr:
    """The plain mean of the last `period` changes: `wilder_average`'s value at row `period` (an EWM starts from
    its first value as it is)."""
    return change.rolling_mean(period)


def wilder_rsi(column: str, period: int) -> pl.Expr:
    """RSI in 0..100, null for the first `period` bars; 50 when prices did not move at all over the average."""
    change = pl.col(column).diff()
    gain = wilder_average(change.clip(lower_bound=0.0), period)
    loss = wilder_average((-change).clip(lower_bound=0.0), period)
    total = gain + loss
    return pl.when(total > 0).then(100 * gain / total).when(total == 0).then(50.0)


@dataclass(frozen=True)
class RsiReversion(Strategy):
    """Go long when RSI closes below `lower`, go flat when it closes above `upper`; long-only by design. With entry
    "cross", only where RSI crosses the level (an RSI that starts below `lower` waits for the next fall through
    it)."""

    name: ClassVar[str] = "rsi_reversion"
    entries: ClassVar[tuple[Entry, ...]] = ("state", "cross")
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

    def target(self, entry: Entry = "state") -> pl.Expr:
        rsi = wilder_rsi("close", self.period)
        return hold(pl.when(above(pl.lit(self.lower), rsi, entry)).then(1)
                    .when(above(rsi, pl.lit(self.upper), entry)).then(0))

    @classmethod
    def grid_targets(cls, bars: pl.DataFrame, strategies: Sequence[Self], out: np.ndarray, entry: Entry = "state"
                     ) -> None:
        """One RSI per distinct period, compiled; each combination's thresholds applied to it in compiled code.

        The Wilder averages' seeds (a polars rolling mean, whose summation order is polars' business) come from the
        expression itself (`wilder_seeds`); the recursion after them is the compiled twin's,
        `grid.indicators.rsi_block`."""
        from ibkr_flows.backtest.grid import indicators  # the grid package loads numba: only grids pay for it
        from ibkr_flows.backtest.grid.compiled import kernel_column

        close = kernel_column(bars, "close")
        by_period: dict[int, list[int]] = defaultdict(list)
        for k, strategy in enumerate(strategies):
            by_period[strategy.period].append(k)
        periods = np.array(list(by_period), dtype=np.int64)
        gains, losses = wilder_seeds(bars, periods)
        rsi = np.empty((1, close.shape[0]))
        for p, rows in enumerate(by_period.values()):
            indicators.rsi_block(close, periods[p:p + 1], 0, close.shape[0], gains[p:p + 1], losses[p:p + 1], rsi)
            for k in rows:
                indicators.threshold_targets(rsi[0], strategies[k].lower, strategies[k].upper, entry == "cross",
                                             out[k])


def wilder_seeds(bars: pl.DataFrame, periods: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each period's average gain and loss at bar `period`, where `wilder_average` seeds them (0, 0 when there is
    no such bar: the RSI is then null throughout), from one polars query of `wilder_seed` on the bars they depend on
    (the whole `wilder_average` per period took ~1 ms per grid call)."""
    seeded = [p for p in periods.tolist() if p < bars.height]
    gains, losses = np.zeros(len(periods)), np.zeros(len(periods))
    if not seeded:
        return gains, losses
    change = pl.col("close").diff()
    head = bars.head(max(seeded) + 1)
    seeds = head.select(
        *(wilder_seed(change.clip(lower_bound=0.0), p).gather(p).alias(f"gain{p}") for p in seeded),
        *(wilder_seed((-change).clip(lower_bound=0.0), p).gather(p).alias(f"loss{p}") for p in seeded)).row(0)
    for k, p in enumerate(periods.tolist()):
        if p < bars.height:
            gains[k], losses[k] = seeds[seeded.index(p)], seeds[len(seeded) + seeded.index(p)]
    return gains, losses
