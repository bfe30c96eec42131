"""The account a simulation fills orders into: cash, the one open position, and the trades it closed.

Both fill loops (the engine's, over target changes only, and `exits.simulate_with_exits`, bar by bar) open and
close through it, so a fill, its slippage and its commission are computed in one place, with the same
floating-point operations in the same order whichever loop runs (the grid kernel reproduces them bit for bit).

The instrument's terms (`ContractTerms`) enter here: a fill is slipped, then put on the tick grid against the
trader; money is quantity x fill x multiplier; sizing and commissions see one unit's value, fill x multiplier.
A US stock's terms (multiplier 1, no tick) multiply by 1.0, which is exact: its results are bit for bit what they
were before instruments had terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ibkr_flows.backtest.contract_terms import US_STOCK, ContractTerms
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
    roll_cost: np.ndarray
    """Slippage paid rolling a futures position to the next contract while the trade was open (its roll
    commissions are in `commission`)."""
    equity: np.ndarray
    position: np.ndarray
    """Signed shares (contracts, base units) held at each bar's close."""


class Account:
    """Cash (in the instrument's currency) and at most one position; `close`, `open` and `roll` fill at a price
    before slippage."""

    def __init__(self, cash: float, commission: CommissionModel, slippage_bps: float, sizing: Sizing,
                 terms: ContractTerms = US_STOCK) -> None:
        self.cash = cash
        self.shares = 0
        """Signed: negative when short."""
        self.side = 0
        self.entry_bar = 0
        self.entry_price = 0.0
        self.entry_fee = 0.0
        self.borrow_fee = 0.0
        self.roll_cost = 0.0
        self._commission = commission
        self._slippage_bps = slippage_bps
        self._sizing = sizing
        self._terms = terms
        self._trades: list[tuple[int, int, int, int, float, float, float, float, float]] = []

    def fill_price(self, price: float, side: int) -> float:
        """What a buy (`side` +1) or sell (-1) at `price` really fills at: slipped, then on the tick grid."""
        return self._terms.on_tick(slipped_price(price, side, self._slippage_bps), side)

    def close(self, bar: int, price: float) -> None:
        """Close the open position at `price` (slipped against the trader) and record the trade."""
        fill = self.fill_price(price, -self.side)
        unit = fill * self._terms.multiplier
        fee = self._commission.commission(abs(self.shares), unit)
        self.cash += self.shares * unit - fee
        self._trades.append((self.entry_bar, bar, self.side, abs(self.shares), self.entry_price, fill,
                             self.entry_fee + fee, self.borrow_fee, self.roll_cost))
        self.shares = 0

    def open(self, bar: int, price: float, side: int) -> None:
        """Enter `side` (+1 long, -1 short) at `price` with the units the sizing rule affords from one unit's
        value (fill x multiplier: an ES contract at 5000 is worth 250,000); none: no entry."""
        fill = self.fill_price(price, side)
        unit = fill * self._terms.multiplier
        size = self._sizing.shares(self.cash, unit, self._commission)
        if size:
            self.entry_fee = self._commission.commission(size, unit)
            self.cash -= side * size * unit + self.entry_fee
            self.shares, self.side, self.entry_bar, self.entry_price = side * size, side, bar, fill
            self.borrow_fee = 0.0
            self.roll_cost = 0.0

    def roll(self, price: float) -> None:
        """Move the open position to the next futures contract at `price`: close it and open as many contracts
        again, paying both orders' commissions and slippage, booked on the open trade. The trade and its entry
        price go on: a continuous series' prices are one line across contracts, so the position's PnL does too."""
        size = abs(self.shares)
        closing = self.fill_price(price, -self.side) * self._terms.multiplier
        reopening = self.fill_price(price, self.side) * self._terms.multiplier
        fees = self._commission.commission(size, closing) + self._commission.commission(size, reopening)
        slippage = self.side * size * (reopening - closing)
        self.cash -= fees + slippage
        self.entry_fee += fees
        self.roll_cost += slippage

    def mark(self, price: float) -> float:
        """Equity with the position valued at `price`."""
        return self.cash + self.shares * (price * self._terms.multiplier)

    def charge_borrow(self, fee: float) -> None:
        """Pay a short-borrow fee from cash, booked on the open trade."""
        self.cash -= fee
        self.borrow_fee += fee

    def simulation(self, equity: np.ndarray, position: np.ndarray) -> Simulation:
        columns = list(zip(*self._trades, strict=True)) or [()] * 9
        entry_bars, exit_bars, sides, sizes, entry_prices, exit_prices, fees, borrow, rolls = columns
        return Simulation(
            entry_bar=np.array(entry_bars, dtype=np.int64), exit_bar=np.array(exit_bars, dtype=np.int64),
            side=np.array(sides, dtype=np.int8), size=np.array(sizes, dtype=np.int64),
            entry_price=np.array(entry_prices, dtype=np.float64), exit_price=np.array(exit_prices, dtype=np.float64),
            commission=np.array(fees, dtype=np.float64), borrow_fee=np.array(borrow, dtype=np.float64),
            roll_cost=np.array(rolls, dtype=np.float64), equity=equity, position=position)
