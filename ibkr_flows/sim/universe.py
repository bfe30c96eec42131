"""The instruments the simulator knows, and their CONTRACT_DATA encoding at server version 178.

Real conIds and listing data are used for the common names so that code which caches conIds against a real TWS
keeps working when pointed at the simulator. A request's contract must agree with an instrument on every field it
sets, as TWS requires: `Future('AAPL', exchange='CME')` or `Stock('AAPL', 'IBIS', 'EUR')` is no instrument (200).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from ibkr_flows.ib.sessions import session_hours_text
from ibkr_flows.sim.requests import ContractRef

ROUTABLE_EXCHANGES: tuple[str, ...] = (
    "SMART", "AMEX", "NYSE", "CBOE", "PHLX", "ISE", "CHX", "ARCA", "ISLAND", "DRCTEDGE", "BEX", "BATS", "EDGEA",
    "BYX", "IEX", "EDGX", "FOXRIVER", "PEARL", "NYSENAT", "LTSE", "MEMX", "IBEOS", "OVERNIGHT", "TPLUS0", "PSX",
)
"""The venues TWS lists in validExchanges for a US stock (SMART routes to any of them)."""
HOURS_DAYS = 7
"""How many calendar days of sessions TWS puts in tradingHours / liquidHours, starting today."""


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

    @property
    def local_symbol(self) -> str:
        return self.symbol

    @property
    def market_name(self) -> str:
        return self.trading_class or self.symbol

    @property
    def valid_exchanges(self) -> tuple[str, ...]:
        """Where the instrument can be asked for: SMART, every routable venue and its listing exchange."""
        extra = () if self.primary_exchange in ROUTABLE_EXCHANGES else (self.primary_exchange,)
        return ROUTABLE_EXCHANGES + extra

    def matches(self, ref: ContractRef) -> bool:
        """Whether a request's contract names this instrument: each field it sets (non-empty, non-zero) must
        agree, and the exchange must be one the instrument trades on. A stock has no expiry, strike, right or
        multiplier, so a request setting any of them names something else."""
        wanted = (
            (ref.con_id, self.con_id),
            (ref.symbol.upper(), self.symbol),
            (ref.sec_type.upper(), self.sec_type),
            (ref.currency.upper(), self.currency),
            (ref.primary_exchange.upper(), self.primary_exchange),
            (ref.local_symbol.upper(), self.local_symbol),
            (ref.trading_class.upper(), self.trading_class),
            (ref.last_trade_date, ""),
            (ref.strike, 0.0),
            (ref.right, ""),
            (ref.multiplier, ""),
        )
        if any(given and given != own for given, own in wanted):
            return False
        return not ref.exchange or ref.exchange.upper() in self.valid_exchanges


DEFAULT_UNIVERSE: tuple[Instrument, ...] = (
    Instrument("AAPL", 265598, "NASDAQ", "APPLE INC", "US0378331005", trading_class="NMS"),
    Instrument("MSFT", 272093, "NASDAQ", "MICROSOFT CORP", "US5949181045", trading_class="NMS"),
    Instrument("SPY", 756733, "ARCA", "SPDR S&P 500 ETF TRUST", "US78462F1030", trading_class="SPY",
               stock_type="ETF"),
    Instrument("QQQ", 320227571, "NASDAQ", "INVESCO QQQ TRUST SERIES 1", "US46090E1038", trading_class="NMS",
               stock_type="ETF"),
    Instrument("IBM", 8314, "NYSE", "INTL BUSINESS MACHINES CORP", "US4592001014", trading_class="IBM"),
    Instrument("NVDA", 4815747, "NASDAQ", "NVIDIA CORP", "US67066G1040", trading_class="NMS"),
)


@dataclass
class Universe:
    """The instruments TWS knows, looked up as TWS does: by every field a request's contract sets."""

    instruments: dict[str, Instrument] = field(
        default_factory=lambda: {i.symbol: i for i in DEFAULT_UNIVERSE}
    )

    def resolve(self, ref: ContractRef) -> Instrument | None:
        """The instrument `ref` names, or None (TWS: 200 'No security definition has been found')."""
        return next((i for i in self.instruments.values() if i.matches(ref)), None)

    def add(self, instrument: Instrument) -> None:
        self.instruments[instrument.symbol] = instrument

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

    `exchange` is the one the request named (TWS echoes it; SMART when none), `today` the exchange-local date the
    trading and liquid hours start from. ib_async's decoder throws on a missing trailing field and the request
    then never completes, so every field is present even when empty.
    """
    sec_ids = [("ISIN", inst.isin)] if inst.isin else []
    fields: list[object] = [
        10, req_id, inst.symbol, inst.sec_type, "", 0.0, "", exchange or inst.exchange, inst.currency,
        inst.local_symbol, inst.market_name, inst.trading_class, inst.con_id, inst.min_tick, "",
        "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP,TRAIL",  # orderTypes
        ",".join(inst.valid_exchanges),
        1, 0, inst.long_name, inst.primary_exchange, "", "Technology", "Computers", "Computers",
        inst.time_zone_id, session_hours_text(today, HOURS_DAYS, use_rth=False),
        session_hours_text(today, HOURS_DAYS, use_rth=True), "", "", len(sec_ids),
    ]
    for tag, value in sec_ids:
        fields += [tag, value]
    fields += [1, "", "", "26,26", "", inst.stock_type, "0.0001", "0.0001", "100"]
    return fields
