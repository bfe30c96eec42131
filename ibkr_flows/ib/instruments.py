"""Instrument ids: one parseable text form for every IB contract the tool reads, shared by the CLI, the flows, the
grid and the tables.

    [CLASS:]SYMBOL[@EXCHANGE][:QUALIFIER]

| id | IB contract |
|---|---|
| `AAPL` | STK AAPL, SMART, USD (the default: a US stock) |
| `STK:SAP@IBIS:EUR` | STK SAP on IBIS in EUR (the qualifier of a stock or index is its currency) |
| `STK:SHOP@SMART` | STK SHOP in whichever currency TWS lists it (ambiguous when it lists two) |
| `STK:7203@TSEJ:JPY` | STK 7203 on TSEJ in JPY |
| `FUT:ES@CME:202503` | the dated future ES expiring in March 2025 on CME (the qualifier is the contract month) |
| `CONTFUT:ES@CME` | IB's continuous ES series |
| `CASH:EUR.USD@IDEALPRO` | the EUR.USD currency pair (IDEALPRO is the default exchange for CASH) |
| `IND:SPX@CBOE` | the S&P 500 index on CBOE |
| `CONID:265598` | the contract with that IB conId (how to pick one of several matches) |

Parsing never connects: a malformed id, an unknown class or a currency that is not three letters is refused before
anything is sent or written. Which contract an id names is TWS's answer (`reqContractDetails`); an ambiguous one is
resolved by adding the exchange and currency, or by conId.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from ib_async import Contract


class InstrumentClass(StrEnum):
    """IB's security types this tool reads (`secType`)."""

    STK = "STK"
    FUT = "FUT"
    CONTFUT = "CONTFUT"
    CASH = "CASH"
    IND = "IND"
    CONID = "CONID"
    """Not a security type: an id given by conId, whose class TWS's answer tells."""


class InvalidInstrumentId(ValueError):
    """The text is not an instrument id; the message shows the forms that are."""


DEFAULT_EXCHANGE = {InstrumentClass.STK: "SMART", InstrumentClass.CASH: "IDEALPRO"}
"""Classes whose exchange may be left out; futures, continuous futures and indices must name theirs."""
DEFAULT_WHAT_TO_SHOW = {InstrumentClass.CASH: "MIDPOINT"}
"""IB has no TRADES for currency pairs: MIDPOINT, BID, ASK and BID_ASK only."""
REFUSED_WHAT_TO_SHOW = {InstrumentClass.CASH: frozenset({"TRADES", "ADJUSTED_LAST"})}

_SYMBOL = r"[A-Z0-9][A-Z0-9.\-]{0,14}"
_ID = re.compile(rf"^(?:(?P<cls>[A-Z]+):)?(?P<symbol>{_SYMBOL})(?:@(?P<exchange>[A-Z0-9]+))?(?::(?P<qual>[A-Z0-9]+))?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MONTH = re.compile(r"^\d{6}(\d{2})?$")
FORMS = ("AAPL", "STK:SAP@IBIS:EUR", "FUT:ES@CME:202503", "CONTFUT:ES@CME", "CASH:EUR.USD@IDEALPRO", "IND:SPX@CBOE",
         "CONID:265598")


@dataclass(frozen=True, order=True)
class InstrumentId:
    cls: InstrumentClass
    symbol: str
    exchange: str
    currency: str | None = None
    """None where TWS's answer decides (futures, indices, continuous futures, conIds, a class-prefixed stock
    without its currency)."""
    contract_month: str | None = None
    """YYYYMM or YYYYMMDD, dated futures only."""

    @classmethod
    def parse(cls, text: str) -> Self:
        raw = text.strip().upper()
        match = _ID.match(raw)
        if match is None:
            raise InvalidInstrumentId(f"invalid instrument id {text!r}: use one of {', '.join(FORMS)}")
        try:
            kind = InstrumentClass(match["cls"] or "STK")
        except ValueError:
            raise InvalidInstrumentId(
                f"unknown instrument class {match['cls']!r} in {text!r}: use one of "
                f"{', '.join(c.value for c in InstrumentClass)}") from None
        return cls._build(text, kind, match["symbol"], match["exchange"], match["qual"], bare=match["cls"] is None)

    @classmethod
    def _build(cls, text: str, kind: InstrumentClass, symbol: str, exchange: str | None, qual: str | None, *,
               bare: bool) -> Self:
        def refuse(why: str) -> InvalidInstrumentId:
            return InvalidInstrumentId(f"invalid instrument id {text!r}: {why}")

        if kind is InstrumentClass.CONID:
            if not symbol.isdigit() or exchange or qual:
                raise refuse("a conId id is CONID:<digits>, e.g. CONID:265598")
            return cls(kind, symbol, "")
        if exchange is None and kind not in DEFAULT_EXCHANGE:
            raise refuse(f"{kind} needs its exchange, e.g. {kind}:{symbol}@CME")
        exchange = exchange or DEFAULT_EXCHANGE[kind]
        if kind is InstrumentClass.FUT:
            if qual is None or not _MONTH.match(qual):
                raise refuse("a dated future needs its contract month, e.g. FUT:ES@CME:202503 (or CONTFUT:ES@CME)")
            return cls(kind, symbol, exchange, None, qual)
        if kind is InstrumentClass.CONTFUT:
            if qual:
                raise refuse("a continuous future has no contract month: CONTFUT:ES@CME")
            return cls(kind, symbol, exchange)
        if kind is InstrumentClass.CASH:
            base, _, quote = symbol.partition(".")
            if not (_CURRENCY.match(base) and _CURRENCY.match(quote)) or qual:
                raise refuse("a currency pair is BASE.QUOTE, e.g. CASH:EUR.USD@IDEALPRO")
            return cls(kind, symbol, exchange, quote)
        if qual is not None and not _CURRENCY.match(qual):
            raise refuse(f"the currency must be three letters (ISO 4217), got {qual!r}")
        currency = qual or ("USD" if bare else None)  # only the bare symbol means a US stock
        return cls(kind, symbol, exchange, currency)

    def __str__(self) -> str:
        """The canonical id: a US stock on SMART is its bare symbol, everything else says its class."""
        if self.cls is InstrumentClass.CONID:
            return f"CONID:{self.symbol}"
        if self.cls is InstrumentClass.STK and self.exchange == "SMART" and self.currency == "USD":
            return self.symbol
        text = f"{self.cls}:{self.symbol}@{self.exchange}"
        qualifier = self.contract_month or (self.currency if self.cls in (InstrumentClass.STK,
                                                                          InstrumentClass.IND) else None)
        return f"{text}:{qualifier}" if qualifier else text

    def contract(self) -> Contract:
        """The contract to ask TWS about: as much as the id says, the rest left for TWS to fill in."""
        if self.cls is InstrumentClass.CONID:
            return Contract(conId=int(self.symbol))
        if self.cls is InstrumentClass.CASH:
            base, _, quote = self.symbol.partition(".")
            return Contract(secType="CASH", symbol=base, currency=quote, exchange=self.exchange)
        return Contract(secType=str(self.cls), symbol=self.symbol, exchange=self.exchange,
                        currency=self.currency or "", lastTradeDateOrContractMonth=self.contract_month or "",
                        includeExpired=self.cls is InstrumentClass.FUT)

    def default_what_to_show(self) -> str:
        return DEFAULT_WHAT_TO_SHOW.get(self.cls, "TRADES")

    def refuses(self, what_to_show: str) -> bool:
        """IB serves no such data for this class (TRADES of a currency pair), so asking would only earn an error."""
        return what_to_show.upper() in REFUSED_WHAT_TO_SHOW.get(self.cls, frozenset())
