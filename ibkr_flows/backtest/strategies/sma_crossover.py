"""Simple-moving-average crossover on closes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from ibkr_flows.backtest.strategies.base import AverageCrossover


def sma(column: str, period: int) -> pl.Expr:
    """Mean of the last `period` values, null before that.

    Computed as a difference of running sums times the reciprocal of the period (polars `cum_sum` adds
    sequentially, bit-identical to `numpy.cumsum`; the reciprocal is written out because polars turns a division by
    a literal into that multiplication anyway), so `sma_rows` gets exactly the same values and crossings.
    """
    running = pl.col(column).cum_sum()
    mean = (running - running.shift(period, fill_value=0.0)) * (1 / period)
    return pl.when(pl.int_range(pl.len()) >= period - 1).then(mean)


def sma_rows(values: np.ndarray, periods: Sequence[int]) -> np.ndarray:
    """`sma` of a float64 array for each period, operation for operation, NaN where `sma` is null: one running sum,
    then each row written in one compiled pass (`grid.indicators.sma_block`)."""
    from ibkr_flows.backtest.grid import indicators  # the grid package loads numba: only grids pay for it

    running = indicators.running_sums(np.ascontiguousarray(values, dtype=np.float64))
    rows = np.empty((len(periods), running.shape[0]))
    indicators.sma_block(running, np.asarray(periods, dtype=np.int64), 0, running.shape[0], rows)
    return rows


@dataclass(frozen=True)
class SmaCrossover(AverageCrossover):
    """SMA crossover: long while SMA(fast) > SMA(slow), short (flat in long-only mode) while below."""

    name: ClassVar[str] = "sma_crossover"
    fast_period: int = 5
    slow_period: int = 10

    @staticmethod
    def average(column: str, period: int) -> pl.Expr:
        return sma(column, period)

    @staticmethod
    def average_rows(values: np.ndarray, periods: Sequence[int]) -> np.ndarray:
        return sma_rows(values, periods)
