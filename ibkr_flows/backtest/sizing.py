"""How many shares an entry buys (or sells short). Sizing happens only when flat (entries, and reversals after the
old position is closed), so the cash on hand is the whole equity.

There is no leverage: every rule is capped at what the cash pays for, fill and commission included, as with
backtesting.py at margin=1. A short is sized like a long of the same value.

"Shares" are whole units of the instrument: shares, futures contracts, or a currency pair's base units. The
`price` every rule gets is one unit's value, fill x multiplier (`Account.open`), so a futures account buys the
contracts whose notional its cash covers: USD 300,000 buys one ES contract at 5000 (notional 250,000), not 60.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ibkr_flows.backtest.costs import CommissionModel
from ibkr_flows.backtest.errors import BacktestError


class Sizing(Protocol):
    def shares(self, cash: float, price: float, commission: CommissionModel) -> int:
        """Unit count (>= 0) to enter with `cash` when one unit is worth `price`; 0 skips the entry."""
        ...


def affordable_shares(budget: float, price: float, commission: CommissionModel) -> int:
    """The largest whole number of shares whose value plus commission fits in `budget`.

    With a percentage commission this is floor(budget / (price * (1 + rate))), backtesting.py's default size; with
    per-share minimums and caps there is no closed form. So: start from the commission-free count, step down by the
    shares the overshoot is worth (which lands on an affordable count, as commission does not rise when shares
    fall), then step up while one more share still fits (the smaller order may pay less commission). Both steps are
    a few iterations, which matters because this runs at every entry.
    """
    if budget <= 0 or price <= 0:
        return 0
    shares = math.floor(budget / price)
    while shares > 0 and (excess := shares * price + commission.commission(shares, price) - budget) > 0:
        shares -= max(1, math.ceil(excess / price))
    shares = max(shares, 0)
    while (shares + 1) * price + commission.commission(shares + 1, price) <= budget:
        shares += 1
    return shares


@dataclass(frozen=True)
class AllIn:
    """All the cash, in whole shares (backtesting.py's default `size`)."""

    def shares(self, cash: float, price: float, commission: CommissionModel) -> int:
        return affordable_shares(cash, price, commission)


@dataclass(frozen=True)
class FixedShares:
    """Always `n` shares, or fewer when the cash does not cover them."""

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise BacktestError(f"FixedShares needs a positive whole number of shares, got {self.n!r}")

    def shares(self, cash: float, price: float, commission: CommissionModel) -> int:
        return min(self.n, affordable_shares(cash, price, commission))


@dataclass(frozen=True)
class FixedFraction:
    """A fraction `f` of equity per entry (0 < f <= 1), in whole shares; the rest stays in cash."""

    f: float

    def __post_init__(self) -> None:
        if not 0 < self.f <= 1:
            raise BacktestError(f"FixedFraction needs 0 < f <= 1 (no leverage), got {self.f}")

    def shares(self, cash: float, price: float, commission: CommissionModel) -> int:
        return affordable_shares(self.f * cash, price, commission)
