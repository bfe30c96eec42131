"""Exponential-moving-average crossover on closes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from ibkr_flows.backtest.strategies.base import AverageCrossover


def ema(column: str, period: int) -> pl.Expr:
    """EMA with alpha = 2 / (period + 1), seeded with the first close (pandas `adjust=False`), null for the first
    `period - 1` bars so that an average of too few closes never trades."""
    return pl.col(column).ewm_mean(span=period, adjust=False, min_samples=period)


@dataclass(frozen=True)
class EmaCrossover(AverageCrossover):
    """EMA crossover: long while EMA(fast) > EMA(slow), short (flat in long-only mode) while below. Defaults are
    MACD's 12/26."""

    name: ClassVar[str] = "ema_crossover"
    fast_period: int = 12
    slow_period: int = 26

    @staticmethod
    def average(column: str, period: int) -> pl.Expr:
        return ema(column, period)

    @staticmethod
    def average_rows(values: np.ndarray, periods: Sequence[int]) -> np.ndarray:
        """Every period's `ema` in one compiled pass (`grid.indicators.ema_block`, the expression's operations)."""
        from ibkr_flows.backtest.grid import indicators  # the grid package loads numba: only grids pay for it

        rows = np.empty((len(periods), values.shape[0]))
        indicators.ema_block(np.ascontiguousarray(values, dtype=np.float64), np.asarray(periods, dtype=np.int64), 0,
                             values.shape[0], np.empty(len(periods)), rows)
        return rows
