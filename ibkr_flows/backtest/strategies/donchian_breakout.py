"""Donchian channel breakout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from ibkr_flows.backtest.strategies.base import Strategy, hold, require_positive


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
