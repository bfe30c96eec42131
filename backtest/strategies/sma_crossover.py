"""Simple-moving-average crossover on closes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from backtest.strategies.base import AverageCrossover


def sma(column: str, period: int) -> pl.Expr:
    """Mean of the last `period` values, null before that.

    Computed as a difference of running sums (polars `cum_sum` adds sequentially, bit-identical to `numpy.cumsum`)
    so that a numpy grid kernel computing each average from one cumsum gets exactly the same values and crossings.
    """
    running = pl.col(column).cum_sum()
    mean = (running - running.shift(period, fill_value=0.0)) / period
    return pl.when(pl.int_range(pl.len()) >= period - 1).then(mean)


@dataclass(frozen=True)
class SmaCrossover(AverageCrossover):
    """SMA crossover: long while SMA(fast) > SMA(slow), short (flat in long-only mode) while below."""

    name: ClassVar[str] = "sma_crossover"
    fast_period: int = 5
    slow_period: int = 10

    @staticmethod
    def average(column: str, period: int) -> pl.Expr:
        return sma(column, period)
