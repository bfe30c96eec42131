"""Buy and hold: the benchmark every other strategy has to beat after costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import polars as pl

from ibkr_flows.backtest.strategies.base import Entry, Strategy


@dataclass(frozen=True)
class BuyAndHold(Strategy):
    """Long from the first bar's close on (filled at the second bar's open), with the engine's costs and sizing,
    unlike the metrics' frictionless buy-and-hold return."""

    name: ClassVar[str] = "buy_and_hold"

    @property
    def warmup_bars(self) -> int:
        return 0

    def target(self) -> pl.Expr:
        return pl.lit(1, dtype=pl.Int8)

    @classmethod
    def grid_targets(cls, bars: pl.DataFrame, strategies: Sequence[Self], out: np.ndarray, entry: Entry = "state"
                     ) -> None:
        out[:] = 1
