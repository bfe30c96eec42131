"""Trading costs charged at each fill: broker commission per order and slippage on the fill price.

Commission models take the order's share count and fill price and return USD for that one order; an order of zero
shares is no order and costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from ibkr_flows.backtest.errors import BacktestError


class CommissionModel(Protocol):
    def commission(self, shares: int, price: float) -> float:
        """USD charged for one order of `shares` (> 0) filled at `price`."""
        ...


def _per_share_order(shares: int, price: float, per_share: float, minimum: float, max_rate: float) -> float:
    """IBKR's per-share schedule: a minimum per order, but never more than `max_rate` of the trade value (so a
    small order in a cheap stock pays the cap, not the minimum)."""
    if shares == 0:
        return 0.0
    return min(max(shares * per_share, minimum), max_rate * shares * price)


@dataclass(frozen=True)
class IBKRFixed:
    """IBKR Pro Fixed pricing for US stocks: USD 0.005 per share, minimum USD 1.00 per order, maximum 1% of the
    trade value. Fixed pricing already includes exchange and regulatory fees (except pass-through FINRA/SEC fees on
    sales, which are ignored here)."""

    per_share: float = 0.005
    minimum: float = 1.00
    max_rate: float = 0.01

    def commission(self, shares: int, price: float) -> float:
        return _per_share_order(shares, price, self.per_share, self.minimum, self.max_rate)


@dataclass(frozen=True)
class IBKRTiered:
    """IBKR Pro Tiered pricing for US stocks, broker commission only: the per-share rate falls with the month's
    traded volume; minimum USD 0.35 per order, maximum 1% of the trade value.

    Exchange, clearing and regulatory fees (which Tiered passes through on top) are ignored, so this understates
    Tiered costs a little. `monthly_volume` is a fixed assumption of the account's monthly share volume (it is not
    accumulated during the backtest); the default 0 uses the highest rate, the one a small account pays.
    """

    TIERS: ClassVar[tuple[tuple[float, float], ...]] = (
        (300_000, 0.0035), (3_000_000, 0.002), (20_000_000, 0.0015), (100_000_000, 0.001), (float("inf"), 0.0005))
    """(monthly shares up to and including, USD per share)."""

    monthly_volume: int = 0
    minimum: float = 0.35
    max_rate: float = 0.01

    @property
    def per_share(self) -> float:
        return next(rate for ceiling, rate in self.TIERS if self.monthly_volume <= ceiling)

    def commission(self, shares: int, price: float) -> float:
        return _per_share_order(shares, price, self.per_share, self.minimum, self.max_rate)


@dataclass(frozen=True)
class PercentCommission:
    """A fraction of the trade value per order, e.g. 0.001 for 10 bps (backtesting.py's `commission=` semantics)."""

    rate: float

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise BacktestError(f"commission rate is a fraction of trade value in [0, 1), got {self.rate}")

    def commission(self, shares: int, price: float) -> float:
        return self.rate * shares * price


@dataclass(frozen=True)
class NoCommission:
    """Frictionless fills, for isolating a strategy's gross edge."""

    def commission(self, shares: int, price: float) -> float:
        return 0.0


def slipped_price(price: float, side: int, slippage_bps: float) -> float:
    """The price actually paid (`side` +1, a buy) or received (-1, a sell): `slippage_bps` worse than `price`."""
    return price * (1 + side * slippage_bps / 10_000)
