"""The instruments the simulator knows, and their CONTRACT_DATA encoding at server version 178.

Real conIds and listing data are used for the common names so that code which caches conIds against a real TWS
keeps working when pointed at the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """Symbol lookup as TWS does it for `secType=STK, exchange=SMART, currency=USD` requests."""

    instruments: dict[str, Instrument] = field(
        default_factory=lambda: {i.symbol: i for i in DEFAULT_UNIVERSE}
    )

    def resolve(self, symbol: str, con_id: int = 0) -> Instrument | None:
        if con_id:
            return next((i for i in self.instruments.values() if i.con_id == con_id), None)
        return self.instruments.get(symbol.upper())

    def add(self, instrument: Instrument) -> None:
        self.instruments[instrument.symbol] = instrument


_LIQUID_HOURS = "20250115:0930-20250115:1600;20250116:0930-20250116:1600"
_TRADING_HOURS = "20250115:0400-20250115:2000;20250116:0400-20250116:2000"


def contract_data_fields(req_id: int, inst: Instrument) -> list[object]:
    """CONTRACT_DATA (10) at server version >= 164: no version field; 40 + 2 x secIdCount fields.

    ib_async's decoder throws on a missing trailing field and the request then never completes, so every field
    is present even when empty.
    """
    sec_ids = [("ISIN", inst.isin)] if inst.isin else []
    fields: list[object] = [
        10, req_id, inst.symbol, inst.sec_type, "", 0.0, "", inst.exchange, inst.currency, inst.local_symbol,
        inst.market_name, inst.trading_class, inst.con_id, inst.min_tick, "",
        "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP,TRAIL",  # orderTypes
        f"SMART,{inst.primary_exchange},ARCA,BATS,IEX",  # validExchanges
        1, 0, inst.long_name, inst.primary_exchange, "", "Technology", "Computers", "Computers",
        inst.time_zone_id, _TRADING_HOURS, _LIQUID_HOURS, "", "", len(sec_ids),
    ]
    for tag, value in sec_ids:
        fields += [tag, value]
    fields += [1, "", "", "26,26", "", inst.stock_type, "0.0001", "0.0001", "100"]
    return fields
