"""The instruments the simulator knows, and their CONTRACT_DATA encoding at server version 178.

Real conIds and listing data are used for the US names so that code which caches conIds against a real TWS
keeps working when pointed at the simulator; the other classes (a German and a Japanese stock, CME equity index futures
and NYMEX crude oil futures, IDEALPRO currency pairs, CBOE indices, a symbol listed on two exchanges) carry IB's
real listing fields (exchange, currency, time zone, multiplier, tick, local symbol) with conIds of the simulator's
own, from `LISTING_CON_ID_BASE`. Trading and liquid hours come from each listing's session calendar
(`ib.calendars`), for the week from the request date.
A request's contract must agree with an instrument on every field it sets, as TWS requires:
`Future('AAPL', exchange='CME')` or `Stock('AAPL', 'IBIS', 'EUR')` is no instrument (200).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, time, timedelta

from ibkr_flows.ib.calendars import NYSE, UnknownSessionCalendarError, calendar_for, calendar_named
from ibkr_flows.ib.sessions import session_hours_text
from ibkr_flows.sim.requests import ContractRef

ROUTABLE_EXCHANGES: tuple[str, ...] = (
    "SMART", "AMEX", "NYSE", "CBOE", "PHLX", "ISE", "CHX", "ARCA", "ISLAND", "DRCTEDGE", "BEX", "BATS", "EDGEA",
    "BYX", "IEX", "EDGX", "FOXRIVER", "PEARL", "NYSENAT", "LTSE", "MEMX", "IBEOS", "OVERNIGHT", "TPLUS0", "PSX",
)
"""The venues TWS lists in validExchanges for a US stock (SMART routes to any of them)."""
HOURS_DAYS = 7
"""How many calendar days of sessions TWS puts in tradingHours / liquidHours, starting today."""
EQUITY_INDEX_LAST_TRADE = time(9, 30)
"""CME equity index futures stop trading at the open (New York) of their last trading day (the final settlement is
the special opening quotation)."""


@dataclass(frozen=True)
class Instrument:
    symbol: str
    con_id: int
    primary_exchange: str
    long_name: str
    isin: str = ""
    sec_type: str = "STK"
    currency: str = "USD"
    exchange: str = "SMART"
    trading_class: str = ""
    min_tick: float = 0.01
    time_zone_id: str = "US/Eastern"
    stock_type: str = "COMMON"
    local_symbol: str = ""
    """IB's local symbol (ESH5, EUR.USD); the symbol when left empty."""
    last_trade_date: str = ""
    """A future's last trading day, YYYYMMDD."""
    month: str = ""
    """A future's contract month, YYYYMM, where it is not its last trading day's (CL of March trades until
    February); empty: the last trading day's month."""
    last_trade_time: time = EQUITY_INDEX_LAST_TRADE
    """When, New York time, a dated future stops trading on its last trading day (it has no bars from then on): CME
    equity index futures at the open, CL at its 14:30 close."""
    multiplier: str = ""
    venues: tuple[str, ...] = ()
    """Where a non-US-stock instrument can be asked for (its validExchanges); US stocks: SMART and every venue."""
    first_trade: date | None = None
    """The first day the simulator has bars for (its head timestamp); None: the bar generator's own default."""
    level: float = 0.0
    """The price the generated bars start from and pass through again (0: the generator's own level)."""
    price_scale: float = 1.0
    """The generator works on a cent grid: a pair quoted at 1.08 is generated at 1080 and divided by 1000."""

    def __post_init__(self) -> None:
        if not self.local_symbol:
            object.__setattr__(self, "local_symbol", self.symbol)

    @property
    def market_name(self) -> str:
        return self.trading_class or self.symbol

    @property
    def valid_exchanges(self) -> tuple[str, ...]:
        """Where the instrument can be asked for: SMART, every routable venue and its listing exchange."""
        if self.venues:
            return self.venues
        extra = () if self.primary_exchange in ROUTABLE_EXCHANGES else (self.primary_exchange,)
        return ROUTABLE_EXCHANGES + extra

    @property
    def us_stock(self) -> bool:
        """A stock on the NYSE calendar: its bars are the bar source's own (price anchors, replay files, splits)."""
        return self.sec_type == "STK" and self.calendar == NYSE

    @property
    def series(self) -> str:
        """The key of the instrument's bar series in the simulator's bar source: a US stock's symbol (the bar
        source's own keys, replay files included); for anything else its local symbol and listing exchange, so
        each dated future, and each listing of a symbol on two exchanges, has its own series; a continuous future
        has one series per root, whichever contract is the front."""
        if self.us_stock:
            return self.symbol
        if self.sec_type == "CONTFUT":
            return f"{self.symbol}@{self.primary_exchange}:CONTFUT"
        return f"{self.local_symbol}@{self.primary_exchange}"

    @property
    def calendar(self) -> str:
        """The session calendar the instrument trades on (`ib.calendars`), the NYSE's where none is known: its
        bars are generated on it and "N D" durations count its sessions."""
        try:
            return calendar_for(self.sec_type, self.exchange, self.primary_exchange, self.time_zone_id)
        except UnknownSessionCalendarError:
            return NYSE

    @property
    def contract_month(self) -> str:
        return self.month or self.last_trade_date[:6]

    def expired(self, today: date) -> bool:
        """Whether a dated future's last trading day is before `today` (TWS then lists it only with
        includeExpired)."""
        return bool(self.last_trade_date) and self.last_trade_date < f"{today:%Y%m%d}"

    def matches(self, ref: ContractRef) -> bool:
        """Whether a request's contract names this instrument: each field it sets (non-empty, non-zero) must
        agree, and the exchange must be one the instrument trades on. The expiry may be given as the contract
        month (YYYYMM) or the last trading day. An instrument without expiry, strike, right or multiplier (a
        stock) is not named by a request setting any of them."""
        wanted = (
            (ref.con_id, self.con_id),
            (ref.symbol.upper(), self.symbol),
            (ref.sec_type.upper(), self.sec_type),
            (ref.currency.upper(), self.currency),
            (ref.primary_exchange.upper(), self.primary_exchange),
            (ref.local_symbol.upper(), self.local_symbol),
            (ref.trading_class.upper(), self.trading_class),
            (ref.strike, 0.0),
            (ref.right, ""),
            (ref.multiplier, self.multiplier),
        )
        if any(given and given != own for given, own in wanted):
            return False
        expiry = ref.last_trade_date.strip()
        own = self.contract_month if len(expiry) <= len("YYYYMM") else self.last_trade_date
        if expiry and not (self.last_trade_date and own.startswith(expiry)):
            return False
        return not ref.exchange or ref.exchange.upper() in self.valid_exchanges

    def hours_text(self, today: date, *, liquid: bool) -> str:
        """TWS's tradingHours (or liquidHours: regular hours) for `HOURS_DAYS` days from `today`, from the
        instrument's session calendar (holidays and early closes included), in its timeZoneId."""
        return session_hours_text(today, HOURS_DAYS, use_rth=liquid, calendar=self.calendar,
                                  time_zone=self.time_zone_id)


US_STOCKS: tuple[Instrument, ...] = (
    Instrument("AAPL", 265598, "NASDAQ", "APPLE INC", "US0378331005", trading_class="NMS"),
    Instrument("MSFT", 272093, "NASDAQ", "MICROSOFT CORP", "US5949181045", trading_class="NMS"),
    Instrument("SPY", 756733, "ARCA", "SPDR S&P 500 ETF TRUST", "US78462F1030", trading_class="SPY",
               stock_type="ETF"),
    Instrument("QQQ", 320227571, "NASDAQ", "INVESCO QQQ TRUST SERIES 1", "US46090E1038", trading_class="NMS",
               stock_type="ETF"),
    Instrument("IBM", 8314, "NYSE", "INTL BUSINESS MACHINES CORP", "US4592001014", trading_class="IBM"),
    Instrument("NVDA", 4815747, "NASDAQ", "NVIDIA CORP", "US67066G1040", trading_class="NMS"),
)

LISTING_CON_ID_BASE = 800_000_000
"""The non-US-stock listings' conIds start here (the simulator's own numbering, far from real and synthetic
ones)."""
HISTORY_START = date(2015, 1, 2)
"""Where the listings' generated history starts (their head timestamp), futures aside."""
MONTH_CODES = dict(zip(range(1, 13), "FGHJKMNQUVXZ", strict=True))
"""The futures month codes, January (F) to December (Z): ESH5 is March 2025."""
QUARTERLY = (3, 6, 9, 12)
"""The quarterly cycle of CME equity index futures (H, M, U, Z)."""
MONTHLY = tuple(range(1, 13))
FUTURE_YEARS = range(2023, 2028)
"""Dated contracts listed: every contract month of the root's cycle from 2023 to 2027."""
FUTURE_HISTORY = timedelta(days=400)
"""How long before its expiry a dated future's bars start (its own head timestamp)."""


def _listing(offset: int, symbol: str, **fields: object) -> Instrument:
    return Instrument(symbol=symbol, con_id=LISTING_CON_ID_BASE + offset, **fields)  # type: ignore[arg-type]


def third_friday(year: int, month: int) -> date:
    """The last trading day of a quarterly CME equity index future."""
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def crude_last_trade(year: int, month: int) -> date:
    """The last trading day of NYMEX WTI crude oil (CL) of contract month `month`, by CME's rule: trading
    terminates 3 business days before the 25th calendar day of the month before; when the 25th is no business day,
    3 business days before the business day preceding it (CLH5: 2025-02-20; CLG5: 2025-01-21, the 25th a
    Saturday). Business days are NYSE's sessions (a simplification): the US holidays and Good Friday on which NYMEX
    does no business are closed there, where CME Globex's calendar lists its holiday trading sessions (Memorial Day,
    the 25th of May 2026) as trade dates."""
    the_25th = (date(year, month, 1) - timedelta(days=1)).replace(day=25)
    nyse = calendar_named(NYSE)
    before = nyse.sessions(the_25th - timedelta(days=14), the_25th - timedelta(days=1))
    return before[-3] if nyse.sessions(the_25th, the_25th) else before[-4]


@dataclass(frozen=True)
class FutureRoot:
    """One futures product as IB lists it: its dated contracts (`ESH5`: symbol, month code, last digit of the
    year) trade on CME Globex hours, in Chicago time, on their exchange and QBALGO."""

    symbol: str
    exchange: str
    long_name: str
    multiplier: str
    min_tick: float
    months: tuple[int, ...]
    last_trade_day: Callable[[int, int], date]
    """(year, contract month) -> the contract's last trading day."""
    last_trade_time: time
    level: float
    """The price its generated bars pass through (`Instrument.level`)."""

    def contracts(self, offset: int) -> Iterator[Instrument]:
        """Every contract of `FUTURE_YEARS`, conIds from `LISTING_CON_ID_BASE + offset` in expiry order."""
        for index, (year, month) in enumerate((y, m) for y in FUTURE_YEARS for m in self.months):
            expiry = self.last_trade_day(year, month)
            yield _listing(offset + index, self.symbol, primary_exchange=self.exchange, long_name=self.long_name,
                           sec_type="FUT", exchange=self.exchange, trading_class=self.symbol,
                           min_tick=self.min_tick, time_zone_id="US/Central", stock_type="",
                           local_symbol=f"{self.symbol}{MONTH_CODES[month]}{year % 10}",
                           last_trade_date=f"{expiry:%Y%m%d}", month=f"{year}{month:02d}",
                           last_trade_time=self.last_trade_time, multiplier=self.multiplier,
                           venues=(self.exchange, "QBALGO"), first_trade=expiry - FUTURE_HISTORY, level=self.level)


ES = FutureRoot("ES", "CME", "E-mini S&P 500", "50", 0.25, QUARTERLY, third_friday, EQUITY_INDEX_LAST_TRADE,
                5000.0)
NQ = FutureRoot("NQ", "CME", "E-mini NASDAQ 100", "20", 0.25, QUARTERLY, third_friday, EQUITY_INDEX_LAST_TRADE,
                17500.0)
CL = FutureRoot("CL", "NYMEX", "Light Sweet Crude Oil", "1000", 0.01, MONTHLY, crude_last_trade, time(14, 30), 75.0)
"""WTI crude oil: 1,000 barrels, quoted in dollars a barrel to the cent, a contract every month."""


LISTINGS: tuple[Instrument, ...] = (
    _listing(1, "SAP", primary_exchange="IBIS", long_name="SAP SE", isin="DE0007164600", currency="EUR",
             trading_class="XETRA", time_zone_id="MET", venues=("SMART", "IBIS", "TGATE", "GETTEX"),
             first_trade=HISTORY_START, level=180.0),
    _listing(2, "7203", primary_exchange="TSEJ", long_name="TOYOTA MOTOR CORP", isin="JP3633400001",
             currency="JPY", trading_class="7203", min_tick=0.5, time_zone_id="Japan", venues=("SMART", "TSEJ"),
             first_trade=HISTORY_START, level=2800.0),
    _listing(3, "SHOP", primary_exchange="NYSE", long_name="SHOPIFY INC - CLASS A", isin="CA82509L1076",
             trading_class="SHOP", venues=ROUTABLE_EXCHANGES, first_trade=HISTORY_START, level=75.0),
    _listing(4, "SHOP", primary_exchange="TSE", long_name="SHOPIFY INC - CLASS A", isin="CA82509L1076",
             currency="CAD", trading_class="SHOP", time_zone_id="America/Toronto", venues=("SMART", "TSE"),
             first_trade=HISTORY_START, level=100.0),
    _listing(5, "EUR", primary_exchange="IDEALPRO", long_name="European Monetary Union Euro", sec_type="CASH",
             exchange="IDEALPRO", trading_class="EUR.USD", min_tick=0.00005, local_symbol="EUR.USD",
             stock_type="", venues=("IDEALPRO",), first_trade=HISTORY_START, level=1.08, price_scale=1000.0),
    _listing(6, "USD", primary_exchange="IDEALPRO", long_name="US Dollar", sec_type="CASH", currency="JPY",
             exchange="IDEALPRO", trading_class="USD.JPY", min_tick=0.005, local_symbol="USD.JPY", stock_type="",
             venues=("IDEALPRO",), first_trade=HISTORY_START, level=150.0),
    _listing(7, "SPX", primary_exchange="CBOE", long_name="S&P 500 Stock Index", sec_type="IND", exchange="CBOE",
             trading_class="", time_zone_id="US/Central", stock_type="", venues=("CBOE",),
             first_trade=HISTORY_START, level=5000.0),
    _listing(8, "VIX", primary_exchange="CBOE", long_name="CBOE Volatility Index", sec_type="IND",
             exchange="CBOE", trading_class="", time_zone_id="US/Central", stock_type="", venues=("CBOE",),
             first_trade=HISTORY_START, level=15.0),
    *ES.contracts(100),
    *NQ.contracts(200),
    *CL.contracts(300),
)
"""The instruments beyond US stocks; SHOP is the symbol listed twice (NYSE in USD, Toronto in CAD), so
`Stock('SHOP', 'SMART')` without a currency is ambiguous, as with the real TWS."""
DEFAULT_UNIVERSE: tuple[Instrument, ...] = US_STOCKS + LISTINGS


@dataclass
class Universe:
    """The instruments TWS knows (by conId), looked up as TWS does: by every field a request's contract sets."""

    instruments: dict[int, Instrument] = field(
        default_factory=lambda: {i.con_id: i for i in DEFAULT_UNIVERSE}
    )

    def matching(self, ref: ContractRef, today: date, *, include_expired: bool = False) -> list[Instrument]:
        """Every instrument `ref` names, as reqContractDetails lists them (a data request needs exactly one: none
        is TWS's 200 'No security definition', several its 200 'ambiguous'): expired futures only with
        `include_expired`; a continuous future (CONTFUT) is its front contract as of `today`, with secType
        CONTFUT, as TWS describes it."""
        if ref.sec_type.upper() == "CONTFUT":
            return self._front_contract(ref, today)
        return [i for i in self.instruments.values()
                if i.matches(ref) and (include_expired or not i.expired(today))]

    def _front_contract(self, ref: ContractRef, today: date) -> list[Instrument]:
        dated = dataclasses.replace(ref, sec_type="FUT", con_id=0, last_trade_date="")
        live = sorted((i for i in self.matching(dated, today) if i.last_trade_date),
                      key=lambda i: i.last_trade_date)
        if not live:
            return []
        front = dataclasses.replace(live[0], sec_type="CONTFUT")
        return [front] if not ref.con_id or ref.con_id == front.con_id else []

    def add(self, instrument: Instrument) -> None:
        self.instruments[instrument.con_id] = instrument

    @classmethod
    def with_synthetic(cls, count: int) -> Universe:
        """The default instruments plus `count` generated stocks (`synthetic_symbol(0)`, ...): for runs at the scale
        of a real nightly (hundreds of symbols), which the handful of real names cannot give. Their bars come from
        the generator like any symbol without price anchors."""
        universe = cls()
        for index in range(count):
            symbol = synthetic_symbol(index)
            universe.add(Instrument(symbol, SYNTHETIC_CON_ID_BASE + index, "NYSE", f"SYNTHETIC STOCK {index}",
                                    trading_class=symbol))
        return universe


SYNTHETIC_CON_ID_BASE = 900_000_000
"""Generated instruments' conIds start here, far from the real ones above."""


def synthetic_symbol(index: int) -> str:
    return f"SYN{index:04d}"


def contract_data_fields(req_id: int, inst: Instrument, exchange: str, today: date) -> list[object]:
    """CONTRACT_DATA (10) at server version >= 164: no version field; 40 + 2 x secIdCount fields.

    `exchange` is the one the request named (TWS echoes it; the instrument's own when none), `today` the
    exchange-local date the trading and liquid hours start from. ib_async's decoder throws on a missing trailing
    field and the request then never completes, so every field is present even when empty.
    """
    sec_ids = [("ISIN", inst.isin)] if inst.isin else []
    fields: list[object] = [
        10, req_id, inst.symbol, inst.sec_type, inst.last_trade_date, 0.0, "", exchange or inst.exchange,
        inst.currency, inst.local_symbol, inst.market_name, inst.trading_class, inst.con_id, inst.min_tick,
        inst.multiplier,
        "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP,TRAIL",  # orderTypes
        ",".join(inst.valid_exchanges),
        1, 0, inst.long_name, inst.primary_exchange, inst.contract_month, "Technology", "Computers", "Computers",
        inst.time_zone_id, inst.hours_text(today, liquid=False), inst.hours_text(today, liquid=True), "", "",
        len(sec_ids),
    ]
    for tag, value in sec_ids:
        fields += [tag, value]
    under = (inst.symbol, "IND") if inst.sec_type in ("FUT", "CONTFUT") else ("", "")
    fields += [1, *under, "26,26", inst.last_trade_date, inst.stock_type, "0.0001", "0.0001", "100"]
    return fields
