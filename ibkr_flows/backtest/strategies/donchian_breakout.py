"""Donchian channel breakout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import polars as pl

from ibkr_flows.backtest.strategies.base import Entry, Strategy, hold, require_positive


@dataclass(frozen=True)
class DonchianBreakout(Strategy):
    """Long when the close breaks above the highest high of the previous `lookback` bars, short (flat in long-only
    mode) when it breaks below their lowest low; otherwise keep the position.

    The channel excludes the current bar: a close can never exceed a high that includes its own bar.
    """

    name: ClassVar[str] = "donchian_breakout"
    lookback: int = 20

    def validate(self) -> None:
        require_positive(self, "lookback")

    @property
    def warmup_bars(self) -> int:
        return self.lookback

    def target(self) -> pl.Expr:
        prior_high = pl.col("high").rolling_max(self.lookback).shift(1)
        prior_low = pl.col("low").rolling_min(self.lookback).shift(1)
        close = pl.col("close")
        return hold(pl.when(close > prior_high).then(1).when(close < prior_low).then(-1))

    @classmethod
    def grid_targets(cls, bars: pl.DataFrame, strategies: Sequence[Self], out: np.ndarray, entry: Entry = "state"
                     ) -> None:
        """Every lookback's channel in one compiled pass (`grid.indicators.breakout_targets`: a sparse table of the
        highs and lows per range of bars, max and min being exact whatever the algorithm)."""
        from ibkr_flows.backtest.grid import indicators  # the grid package loads numba: only grids pay for it
        from ibkr_flows.backtest.grid.compiled import kernel_column

        high, low, close = (kernel_column(bars, c) for c in ("high", "low", "close"))
        lookbacks = np.array([strategy.lookback for strategy in strategies], dtype=np.int64)
        indicators.breakout_targets(close, high, low, lookbacks, out)
