"""The account a simulation fills orders into: cash, the one open position, and the trades it closed.

Both fill loops (the engine's, over target changes only, and `exits.simulate_with_exits`, bar by bar) open and
close through it, so a fill, its slippage and its commission are computed in one place, with the same
floating-point operations in the same order whichever loop runs (the grid kernel reproduces them bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ibkr_flows.backtest.costs import CommissionModel, slipped_price
from ibkr_flows.backtest.sizing import Sizing


@dataclass(frozen=True)
class Simulation:
    """A fill loop's output: one entry per trade in the trade arrays, one per bar in `equity` and `position`."""

    entry_bar: np.ndarray
    exit_bar: np.ndarray
    side: np.ndarray
    size: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    commission: np.ndarray
    borrow_fee: np.ndarray
    """Short-borrow fees charged while the trade was open (0 for longs and when no fee is set)."""
    equity: np.ndarray
    position: np.ndarray
    """Signed shares held at each bar's close."""


class Account:
    """Cash and at most one position; `close` and `open` fill at a price before slippage."""

    def __init__(self, cash: float, commission: CommissionModel, slippage_bps: float, sizing: Sizing) -> None:
        self.cash = cash
        self.shares = 0
        """Signed: negative when short."""
        self.side = 0
        self.entry_bar = 0
        self.entry_price = 0.0
        self.entry_fee = 0.0
        self.borrow_fee = 0.0
        self._commission = commission
        self._slippage_bps = slippage_bps
        self._sizing = sizing
        self._trades: list[tuple[int, int, int, int, float, float, float, float]] = []

    def close(self, bar: int, price: float) -> None:
        """Close the open position at `price` (slipped against the trader) and record the trade."""
        fill = slipped_price(price, -self.side, self._slippage_bps)
        fee = self._commission.commission(abs(self.shares), fill)
        self.cash += self.shares * fill - fee
        self._trades.append((self.entry_bar, bar, self.side, abs(self.shares), self.entry_price, fill,
                             self.entry_fee + fee, self.borrow_fee))
        self.shares = 0

    def open(self, bar: int, price: float, side: int) -> None:
        """Enter `side` (+1 long, -1 short) at `price` with the shares the sizing rule affords; none: no entry."""
        fill = slipped_price(price, side, self._slippage_bps)
        size = self._sizing.shares(self.cash, fill, self._commission)
        if size:
            self.entry_fee = self._commission.commission(size, fill)
            self.cash -= side * size * fill + self.entry_fee
            self.shares, self.side, self.entry_bar, self.entry_price = side * size, side, bar, fill
            self.borrow_fee = 0.0

    def charge_borrow(self, fee: float) -> None:
        """Pay a short-borrow fee from cash, booked on the open trade."""
        self.cash -= fee
        self.borrow_fee += fee

    def simulation(self, equity: np.ndarray, position: np.ndarray) -> Simulation:
        columns = list(zip(*self._trades, strict=True)) or [()] * 8
        entry_bars, exit_bars, sides, sizes, entry_prices, exit_prices, fees, borrow = columns
        return Simulation(
            entry_bar=np.array(entry_bars, dtype=np.int64), exit_bar=np.array(exit_bars, dtype=np.int64),
            side=np.array(sides, dtype=np.int8), size=np.array(sizes, dtype=np.int64),
            entry_price=np.array(entry_prices, dtype=np.float64), exit_price=np.array(exit_prices, dtype=np.float64),
            commission=np.array(fees, dtype=np.float64), borrow_fee=np.array(borrow, dtype=np.float64),
            equity=equity, position=position)
