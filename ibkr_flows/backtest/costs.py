"""Trading costs charged at each fill: broker commission per order and slippage on the fill price.

Commission models take the order's quantity (shares, contracts, or a currency pair's base units) and the value of
one unit (the fill price times the contract multiplier, so quantity x value is the trade value) and return the
commission for that one order, in the instrument's currency (a pair's quote currency); an order of zero units is no
order and costs nothing.

Every number of a broker schedule lives in this module. They are IBKR Pro **Fixed** pricing as published on
interactivebrokers.com (pricing/commissions-stocks, -futures, -forex, and accounts/fees/CME.php), as read in
January 2025 (NYMEX's CL fee: accounts/fees/NYMEX.php, from an undated copy of the page read later); IB changes
them from time to time, so a run records which model it charged (results' `commission`):

| class | model | schedule |
|---|---|---|
| US stock (USD) | `IBKRFixed` | USD 0.005 per share, min USD 1.00, max 1 % of trade value |
| non-US stock | `IBKRExchangeStock` | IBIS 0.05 % min EUR 1.25 max EUR 29; TSEJ 0.08 % min JPY 80 |
| US future | `IBKRFutures` | USD 0.85 per contract + exchange fee (CME ES: 1.38, NYMEX CL: 1.50) + NFA fee USD 0.02 |
| currency pair | `IBKRForex` | 0.2 bps of trade value, min USD 2.00 |
| index | `NoCommission` | an index is not tradable: its backtest is the frictionless exposure |

The per-venue numbers are `STOCK_EXCHANGE_SCHEDULES` and `FUTURES_EXCHANGE_FEES`. `default_commission` picks
the model from the instrument's class; a user's explicit choice overrides it. A class or venue without numbers
here is refused (`UnknownScheduleError`) rather than charged a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from ibkr_flows.backtest.errors import BacktestError

US_FUTURES_PER_CONTRACT = 0.85
"""IBKR Fixed broker commission per US futures contract, USD (exchange and regulatory fees are added on top)."""
NFA_REGULATORY_FEE = 0.02
"""National Futures Association fee per US futures contract, USD."""
FUTURES_EXCHANGE_FEES: dict[tuple[str, str], float] = {
    ("CME", "ES"): 1.38, ("CME", "NQ"): 1.38, ("CME", "RTY"): 1.38, ("CME", "EMD"): 1.38,
    ("CME", "MES"): 0.35, ("CME", "MNQ"): 0.35, ("CME", "M2K"): 0.35,
    ("NYMEX", "CL"): 1.50,  # accounts/fees/NYMEX.php, futures "CL, HO, RB", Tier I (non-member); undated copy
}
"""Exchange fee per contract, USD, by (exchange, IB symbol): CME Globex non-member rates as IB passes them on."""
FOREX_RATE = 0.2 / 10_000
"""IBKR Fixed on IDEALPRO: 0.2 basis points of the trade value."""
FOREX_MINIMUM_USD = 2.00


@dataclass(frozen=True)
class ExchangeSchedule:
    """A percentage-of-value stock schedule: `rate` of the trade value, at least `minimum`, at most `maximum` (None:
    no cap), all in `currency`, the exchange's trading currency."""

    rate: float
    minimum: float
    maximum: float | None
    currency: str


STOCK_EXCHANGE_SCHEDULES: dict[str, ExchangeSchedule] = {
    "IBIS": ExchangeSchedule(0.0005, 1.25, 29.00, "EUR"),  # Xetra
    "TSEJ": ExchangeSchedule(0.0008, 80.0, None, "JPY"),  # Tokyo Stock Exchange
}
"""Non-US stock schedules by IB's exchange code (the listing's primary exchange)."""


class UnknownScheduleError(BacktestError):
    """No published numbers in this module for an instrument's class or venue; the message says how to run anyway."""


class CommissionModel(Protocol):
    def commission(self, shares: int, price: float) -> float:
        """Commission for one order of `shares` units (> 0) each worth `price` (fill x multiplier), in the
        instrument's currency."""
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

    name: ClassVar[str] = "ibkr_fixed"
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

    name: ClassVar[str] = "ibkr_tiered"
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

    name: ClassVar[str] = "percent"
    rate: float

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise BacktestError(f"commission rate is a fraction of trade value in [0, 1), got {self.rate}")

    def commission(self, shares: int, price: float) -> float:
        return self.rate * shares * price


@dataclass(frozen=True)
class NoCommission:
    """Frictionless fills, for isolating a strategy's gross edge (and the default for indices, which no one
    trades)."""

    name: ClassVar[str] = "none"

    def commission(self, shares: int, price: float) -> float:
        return 0.0


@dataclass(frozen=True)
class IBKRFutures:
    """IBKR Fixed for US futures: a broker commission, the exchange's fee and the NFA fee, each per contract,
    whatever the contract's price."""

    name: ClassVar[str] = "ibkr_futures"
    exchange_fee: float
    per_contract: float = US_FUTURES_PER_CONTRACT
    regulatory_fee: float = NFA_REGULATORY_FEE

    def commission(self, shares: int, price: float) -> float:
        return shares * (self.per_contract + self.exchange_fee + self.regulatory_fee) if shares else 0.0


@dataclass(frozen=True)
class IBKRForex:
    """IBKR Fixed on IDEALPRO: `rate` of the trade value, at least USD 2, charged here in the pair's quote
    currency. The USD minimum is converted with the pair's own price when USD is one side of it (USD.JPY at 150:
    JPY 300); a cross without USD (EUR.JPY) would need another rate, so it pays the rate alone, which understates
    a small cross order's cost."""

    name: ClassVar[str] = "ibkr_forex"
    base: str
    quote: str
    rate: float = FOREX_RATE
    minimum_usd: float = FOREX_MINIMUM_USD

    def commission(self, shares: int, price: float) -> float:
        if shares == 0:
            return 0.0
        if self.quote == "USD":
            minimum = self.minimum_usd
        elif self.base == "USD":
            minimum = self.minimum_usd * price  # price: quote units per USD
        else:
            minimum = 0.0
        return max(self.rate * shares * price, minimum)


@dataclass(frozen=True)
class IBKRExchangeStock:
    """A non-US exchange's percentage schedule (`STOCK_EXCHANGE_SCHEDULES`), in the exchange's currency."""

    name: ClassVar[str] = "ibkr_exchange"
    schedule: ExchangeSchedule

    def commission(self, shares: int, price: float) -> float:
        if shares == 0:
            return 0.0
        fee = max(self.schedule.rate * shares * price, self.schedule.minimum)
        return fee if self.schedule.maximum is None else min(fee, self.schedule.maximum)


def default_commission(sec_type: str, symbol: str, exchange: str, currency: str) -> CommissionModel:
    """The IBKR Fixed model for an instrument of class `sec_type` (IB's `secType`), by the table in this module's
    docstring. Raises `UnknownScheduleError` for a venue or product without published numbers here."""
    fix = ("pick a commission model explicitly (ibkr_fixed, ibkr_tiered, percent with commission_rate, none), or "
           "add the schedule to ibkr_flows/backtest/costs.py")
    if sec_type == "STK":
        if currency == "USD":
            return IBKRFixed()
        schedule = STOCK_EXCHANGE_SCHEDULES.get(exchange)
        if schedule is None or schedule.currency != currency:
            known = ", ".join(f"{venue} ({s.currency})" for venue, s in STOCK_EXCHANGE_SCHEDULES.items())
            raise UnknownScheduleError(f"no commission schedule for {symbol} stock on {exchange} in {currency} "
                                       f"(known: US stocks in USD, {known}): {fix}")
        return IBKRExchangeStock(schedule)
    if sec_type in ("FUT", "CONTFUT"):
        fee = FUTURES_EXCHANGE_FEES.get((exchange, symbol))
        if fee is None or currency != "USD":
            known = ", ".join(f"{s}@{venue}" for venue, s in FUTURES_EXCHANGE_FEES)
            raise UnknownScheduleError(f"no exchange fee for the {symbol} future on {exchange} in {currency} "
                                       f"(known: {known}): {fix}")
        return IBKRFutures(exchange_fee=fee)
    if sec_type == "CASH":
        return IBKRForex(base=symbol, quote=currency)
    if sec_type == "IND":
        return NoCommission()
    raise UnknownScheduleError(f"no commission schedule for instrument class {sec_type!r} ({symbol}): {fix}")


def slipped_price(price: float, side: int, slippage_bps: float) -> float:
    """The price actually paid (`side` +1, a buy) or received (-1, a sell): `slippage_bps` worse than `price`."""
    return price * (1 + side * slippage_bps / 10_000)
