"""The economics of the instrument a backtest trades: what one unit is worth, the price grid fills land on, and the
currency money is counted in.

A backtest of ES must know that one contract moves USD 50 per index point and trades in 0.25 steps; one of EUR.USD
that its units are euros and its PnL dollars. Ingestion records every resolved contract in the instruments table
(`storage.instruments_table`), keyed by the same instrument id the bars' `symbol` column holds, so the runner reads
the terms from there (`read_contract_terms`) instead of asking TWS again. A symbol without a row (bars stored before
the table existed) is what those ingestions could store: a US stock, multiplier 1, USD, on NYSE sessions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from ibkr_flows.backtest.continuous_bars import is_continuous, root_and_exchange
from ibkr_flows.backtest.errors import BacktestError
from storage.instruments_table import read_instruments
from storage.location import TableLocation

US_VENUES = frozenset({"NYSE", "NASDAQ", "ARCA", "AMEX", "ISLAND", "BATS", "IEX", "NYSENAT", "CBOE"})
"""IB's US listing exchanges, which `ib.calendars.EXCHANGE_CALENDARS` puts on NYSE sessions (tests hold the two
equal): a US stock's calendar is known without loading exchange_calendars and pandas (0.3 s of a backtest)."""
ON_TICK_TOLERANCE = 1e-9
"""Relative distance from the tick grid still read as on it: `232.64 / 0.01` is 23263.999999999996 in floating
point, and must not be pushed a whole tick away."""


@dataclass(frozen=True)
class ContractTerms:
    """One instrument's trading terms, as IB describes its contract (`secType`, `symbol`, `multiplier`, `minTick`,
    `currency`) and its session calendar. The defaults are a US stock on SMART: multiplier 1, no tick rounding, USD,
    NYSE sessions."""

    sec_type: str = "STK"
    symbol: str = ""
    """IB's symbol: ES for an ES future, EUR for the EUR.USD pair (its base currency)."""
    exchange: str = "SMART"
    """The listing venue (the primary exchange where IB names one): picks the exchange's fee schedule."""
    currency: str = "USD"
    """The contract's currency; for a currency pair IB's contract currency is the quote currency (USD for
    EUR.USD), which is the currency its PnL, and so the backtest's cash and results, are in."""
    multiplier: float = 1.0
    """Money per unit of price per contract: 50 for ES; 1 for stocks and pairs (a pair's size is in base units)."""
    min_tick: float | None = None
    """The price grid fills are rounded to; None: no rounding (bars stored before the instruments table)."""
    calendar: str = "XNYS"
    """The session calendar the instrument trades on (`ib.calendars.calendar_for`: XNYS, XETR, XTKS, CME_GLOBEX,
    FX_24_5, ...): its sessions and hours annualize the metrics (`metrics.annualization`)."""

    def __post_init__(self) -> None:
        if not (self.multiplier > 0 and math.isfinite(self.multiplier)):
            raise ValueError(f"multiplier must be a positive number, got {self.multiplier!r} for {self.symbol!r}")
        if self.min_tick is not None and not (self.min_tick > 0 and math.isfinite(self.min_tick)):
            raise ValueError(f"min_tick must be positive or None, got {self.min_tick!r} for {self.symbol!r}")

    def describe(self) -> str:
        """One line a reader checks the run's economics against, e.g. `FUT ES@CME x50, tick 0.25, USD`."""
        tick = f", tick {self.min_tick:g}" if self.min_tick else ""
        units = f", sized in {self.symbol}" if self.sec_type == "CASH" else ""
        name = f"{self.sec_type} {self.symbol or '?'}@{self.exchange}"
        return f"{name} x{self.multiplier:g}{tick}, {self.currency}{units}"

    @property
    def ticks_per_unit(self) -> int:
        """How many ticks make one unit of price when that is a whole number (100 for 0.01, 4 for 0.25), else 0:
        a price on the grid is then `whole ticks / ticks_per_unit`, one correctly rounded division (23276 / 100 is
        the double nearest 232.76, where 23276 * 0.01 is not) that numba's twin in the grid kernel repeats bit for
        bit."""
        if self.min_tick is None:
            return 0
        per = round(1 / self.min_tick)
        return per if abs(1 / self.min_tick - per) <= ON_TICK_TOLERANCE * per else 0

    def on_tick(self, price: float, side: int) -> float:
        """`price` on the tick grid: unchanged when it already is (bar prices are); otherwise rounded against the
        trader, up for a buy (`side` +1) and down for a sell (-1), because an order filled between two ticks
        would really have filled at the worse one. `grid.kernel.on_tick` is the compiled twin."""
        if self.min_tick is None:
            return price
        steps = price / self.min_tick
        if abs(steps - round(steps)) <= ON_TICK_TOLERANCE * max(1.0, abs(steps)):
            return price
        whole = math.ceil(steps) if side > 0 else math.floor(steps)
        per = self.ticks_per_unit
        return whole / per if per else whole * self.min_tick


US_STOCK = ContractTerms()


class UnknownTermsError(BacktestError):
    """An instrument whose terms cannot be defaulted (a future is no US stock) and which the instruments table
    does not know."""


def read_contract_terms(location: TableLocation, symbols: Sequence[str]) -> dict[str, ContractTerms]:
    """The terms of each instrument stored under one of `symbols` (instrument ids, e.g. `FUT:ES@CME:202503`), from
    the instruments table (read once); a symbol the table does not know is a US stock."""
    instruments = read_instruments(location)
    return {symbol: terms_from_instruments(instruments, symbol) for symbol in symbols}


def terms_from_instruments(instruments: pl.DataFrame, symbol: str) -> ContractTerms:
    """`symbol`'s terms from instruments-table rows: its latest row (several conIds may share an id, e.g. the
    contracts of a continuous series, whose terms are the same), or a US stock without one. The calendar is the
    one ingestion planned the bars on: the listing's (`calendar_for`), NYSE's for a listing none is known for."""
    rows = instruments.filter(pl.col("instrument_id") == symbol)
    if is_continuous(symbol):
        rows = continuous_contracts(instruments, symbol)
    if rows.is_empty():
        return ContractTerms(symbol=symbol)
    row = rows.sort("last_updated").row(-1, named=True)
    return ContractTerms(
        sec_type=row["sec_type"] or "STK",
        symbol=row["symbol"] or symbol,
        exchange=row["primary_exchange"] or row["exchange"] or "SMART",
        currency=row["currency"] or "USD",
        multiplier=row["multiplier"] or 1.0,  # IB gives stocks, pairs and indices none
        min_tick=row["min_tick"] or None,  # 0 where IB gives none
        calendar=listing_calendar(row["sec_type"] or "STK", row["exchange"] or "", row["primary_exchange"] or "",
                                  row["time_zone_id"] or ""),
    )


def continuous_contracts(instruments: pl.DataFrame, symbol: str) -> pl.DataFrame:
    """The dated contracts of a continuous future (`CONTFUT:ES@CME`): every contract of a root shares its terms,
    and a continuous series has no row of its own (IB describes it as its front contract)."""
    root, exchange = root_and_exchange(symbol)
    rows = instruments.filter(pl.col("sec_type") == "FUT", pl.col("symbol") == root,
                              (pl.col("exchange") == exchange) | (pl.col("primary_exchange") == exchange))
    if rows.is_empty():
        raise UnknownTermsError(f"no dated {root} future on {exchange} in the instruments table, so {symbol}'s "
                                f"multiplier and tick are unknown. Fix: ingest the series again "
                                f"(`ibkr data ingest {symbol}` records its front contract) or one of its dated "
                                f"contracts (FUT:{root}@{exchange}:YYYYMM)")
    return rows


def listing_calendar(sec_type: str, exchange: str, primary_exchange: str, time_zone_id: str) -> str:
    """The session calendar the instrument's bars were planned and checked on (`ib.calendars.planning_calendar`);
    a US stock's or index's without loading the calendars."""
    if sec_type.upper() in ("STK", "IND") and (primary_exchange or exchange).upper() in US_VENUES:
        return "XNYS"
    from ibkr_flows.ib.calendars import planning_calendar  # loads exchange_calendars: other instruments pay

    return planning_calendar(sec_type, exchange, primary_exchange, time_zone_id)
