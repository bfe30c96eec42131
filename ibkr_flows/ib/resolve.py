"""Which IB contract an instrument id names: TWS's own answer to reqContractDetails, asked before anything is
fetched or written, so an id that names no contract or several fails first, with the ids that would work.

TWS lists expired futures only when a request sets includeExpired. A dated future whose expiry has passed is
therefore asked for again with it, and resolving says so (logged): the caller then knows that the contract's bars
end at its expiry and that its data requests need includeExpired too (the returned contract carries it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ib_async import IB, Contract, ContractDetails, RequestError

from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.instruments import InstrumentClass, InstrumentId

log = logging.getLogger("ibkr.resolve")

NEAREST_MONTHS = 3
"""How many listed contract months an unknown dated future's error suggests."""


class InstrumentResolutionError(LookupError):
    """An instrument id that names no IB contract, or several; the message says which ids name one."""

    def __init__(self, instrument: InstrumentId, message: str) -> None:
        super().__init__(message)
        self.instrument = instrument


class UnknownInstrumentError(InstrumentResolutionError):
    """TWS has no contract for the id (its error 200)."""


class AmbiguousInstrumentError(InstrumentResolutionError):
    """TWS lists several contracts for the id; `candidates` are its answers."""

    def __init__(self, instrument: InstrumentId, candidates: Sequence[ContractDetails]) -> None:
        lines = [f"{instrument} is ambiguous: TWS lists {len(candidates)} contracts. Name one of them:"]
        lines += [f"  {describe(details)}: use {exact_id(details)} or CONID:{details.contract.conId}"
                  for details in candidates]
        super().__init__(instrument, "\n".join(lines))
        self.candidates = tuple(candidates)


async def resolve(ib: IB, instrument: InstrumentId, *, include_expired: bool = False) -> ContractDetails:
    """The one contract `instrument` names, as TWS describes it (conId, exchanges, currency, multiplier, time zone,
    trading hours). A dated future that has expired is found with includeExpired even when `include_expired` is
    False; `include_expired` matters for a conId that names an expired future. Raises `UnknownInstrumentError`
    or `AmbiguousInstrumentError` (both `InstrumentResolutionError`); waits as long as TWS does not answer (wrap
    it in `asyncio.wait_for` for a deadline)."""
    contract = instrument.contract()
    contract.includeExpired = include_expired
    found = await _details(ib, contract)
    if not found and instrument.cls is InstrumentClass.FUT and not include_expired:
        contract.includeExpired = True
        found = await _details(ib, contract)
        if len(found) == 1:
            log.info("%s expired on %s: resolved with includeExpired (TWS lists expired futures only then)",
                     instrument, found[0].contract.lastTradeDateOrContractMonth)
    if len(found) > 1:
        raise AmbiguousInstrumentError(instrument, found)
    if not found:
        raise UnknownInstrumentError(instrument, f"TWS has no contract for {instrument} (error 200): "
                                                 f"{await _nearest_fix(ib, instrument, include_expired)}")
    found[0].contract.includeExpired = contract.includeExpired
    return found[0]


def describe(details: ContractDetails) -> str:
    c = details.contract
    return (f"{c.localSymbol or c.symbol} ({c.secType}) on {c.exchange}, primary exchange "
            f"{c.primaryExchange or c.exchange}, {c.currency}, conId {c.conId}")


def exact_id(details: ContractDetails) -> InstrumentId:
    """The narrowest id naming this contract: its listing exchange and currency, or a future's expiry."""
    c = details.contract
    if c.secType == "STK":
        return InstrumentId(InstrumentClass.STK, c.symbol, c.primaryExchange or c.exchange, c.currency)
    if c.secType == "FUT":
        return InstrumentId(InstrumentClass.FUT, c.symbol, c.exchange, None, c.lastTradeDateOrContractMonth)
    if c.secType == "CASH":
        return InstrumentId(InstrumentClass.CASH, f"{c.symbol}.{c.currency}", c.exchange, c.currency)
    if c.secType == "IND":
        return InstrumentId(InstrumentClass.IND, c.symbol, c.exchange, c.currency)
    return InstrumentId(InstrumentClass.CONID, str(c.conId), "")


async def _details(ib: IB, contract: Contract) -> list[ContractDetails]:
    """TWS's answers; none for its 200 (ib_async answers [] or, with RaiseRequestErrors, raises)."""
    try:
        return list(await ib.reqContractDetailsAsync(contract))
    except RequestError as exc:
        if exc.code == ErrorCode.UNKNOWN_CONTRACT:
            return []
        raise


async def _nearest_fix(ib: IB, instrument: InstrumentId, include_expired: bool) -> str:
    """What to try instead: a future's listed months nearest the one asked for, the listings TWS's symbol search
    finds for a stock, index or pair, includeExpired for a conId."""
    if instrument.cls is InstrumentClass.CONID:
        if include_expired:
            return "check the conId"
        return "check the conId; if it is an expired future, resolve it with include_expired=True"
    if instrument.cls in (InstrumentClass.FUT, InstrumentClass.CONTFUT):
        return await _nearest_months(ib, instrument)
    listed = await _listings(ib, instrument)
    if listed:
        return f"TWS's symbol search lists {', '.join(listed)}"
    return f"check the symbol, exchange and currency of {instrument} (TWS's symbol search finds no such listing)"


async def _nearest_months(ib: IB, instrument: InstrumentId) -> str:
    listed = await _details(ib, Contract(secType="FUT", symbol=instrument.symbol, exchange=instrument.exchange,
                                         includeExpired=True))
    if not listed:
        return (f"TWS lists no future {instrument.symbol} on {instrument.exchange}, expired ones included: check "
                "the symbol and the exchange")
    if instrument.cls is InstrumentClass.CONTFUT:
        return (f"{instrument.symbol} on {instrument.exchange} has no live contract left; use a dated one, e.g. "
                f"{exact_id(max(listed, key=lambda d: d.contract.lastTradeDateOrContractMonth))}")
    wanted = int((instrument.contract_month or "")[:6])

    def contract_month(details: ContractDetails) -> str:
        """Its contractMonth: not always its last trading day's month (CL of March expires in February)."""
        return details.contractMonth or details.contract.lastTradeDateOrContractMonth[:6]

    def distance(details: ContractDetails) -> int:
        month = int(contract_month(details))
        return abs((month // 100 - wanted // 100) * 12 + month % 100 - wanted % 100)

    nearest = sorted(listed, key=distance)[:NEAREST_MONTHS]
    forms = ", ".join(f"FUT:{instrument.symbol}@{instrument.exchange}:{contract_month(d)}" for d in nearest)
    return (f"no contract expires in {instrument.contract_month} (expired ones included); the nearest listed "
            f"contract months are {forms} (the contract month form YYYYMM, or the exact last trading day YYYYMMDD)")


async def _listings(ib: IB, instrument: InstrumentId) -> list[str]:
    """Ids of the listings of the same symbol and class that TWS's symbol search knows."""
    base = instrument.symbol.partition(".")[0] if instrument.cls is InstrumentClass.CASH else instrument.symbol
    found = await ib.reqMatchingSymbolsAsync(base) or []
    ids = []
    for description in found:
        c = description.contract
        if c is None or c.symbol != base or c.secType != instrument.cls.value:
            continue
        details = ContractDetails(contract=Contract(secType=c.secType, symbol=c.symbol, conId=c.conId,
                                                    exchange=c.primaryExchange, primaryExchange=c.primaryExchange,
                                                    currency=c.currency))
        ids.append(str(exact_id(details)))
    return ids
