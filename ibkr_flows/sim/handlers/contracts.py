"""reqContractDetails, and the contract lookup every data request starts with.

Contracts resolve against the simulator's `Universe` on every field the request sets (conId, symbol, secType,
exchange, primaryExchange, currency, expiry, localSymbol, tradingClass, multiplier). reqContractDetails lists every
match; a data request needs exactly one and is answered with 200 otherwise, as TWS does: 'No security definition
has been found' for none, '... is ambiguous' for several. Expired futures are found only when the request sets
includeExpired, as with TWS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.sessions import session_day
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.requests import ContractDetailsRequest, ContractRef
from ibkr_flows.sim.universe import Instrument, contract_data_fields

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

INCLUDE_EXPIRED_FIELD = {"details": 15, "data": 14}
"""Where includeExpired sits (right after the 12 contract fields) in reqContractDetails and in reqHistoricalData /
reqHeadTimeStamp; `requests.ContractRef` does not carry it."""


def include_expired(fields: list[str], request: str) -> bool:
    at = INCLUDE_EXPIRED_FIELD[request]
    return len(fields) > at and fields[at] == "1"


def ambiguous(symbol: str) -> msg.TWSError:
    return ErrorCode.UNKNOWN_CONTRACT, f"The contract description specified for {symbol} is ambiguous."


def resolve(session: Session, req_id: int, contract: ContractRef, *, expired: bool = False) -> Instrument | None:
    """The one instrument a data request names, or None after answering 200 for `req_id` (no match, or several).
    `expired`: the request set includeExpired."""
    found = session.sim.universe.matching(contract, session_day(session.sim.clock()), include_expired=expired)
    if len(found) == 1:
        return found[0]
    session.send(msg.error(req_id, ambiguous(contract.symbol.upper()) if found else msg.UNKNOWN_CONTRACT))
    return None


def contract_details(session: Session, fields: list[str]) -> None:
    req = ContractDetailsRequest.from_fields(fields)
    expired = include_expired(fields, "details")

    async def work() -> None:
        today = session_day(session.sim.clock())
        found = session.sim.universe.matching(req.contract, today, include_expired=expired)
        if not found:
            session.send(msg.error(req.req_id, msg.UNKNOWN_CONTRACT))
            return
        for inst in found:
            session.send(contract_data_fields(req.req_id, inst, req.contract.exchange.upper(), today))
        session.send([ServerMessage.CONTRACT_DATA_END, 1, req.req_id])

    session.spawn(req.req_id, work)
