"""reqContractDetails, and the contract lookup every data request starts with.

Contracts resolve against the simulator's `Universe` on every field the request sets (conId, symbol, secType,
exchange, primaryExchange, currency, expiry, localSymbol, tradingClass, multiplier); one that names no instrument
is answered with 200, as TWS does, by whichever request asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.sessions import session_day
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.requests import ContractDetailsRequest, ContractRef
from ibkr_flows.sim.universe import Instrument, contract_data_fields

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session


def resolve(session: Session, req_id: int, contract: ContractRef) -> Instrument | None:
    """The instrument a request names, or None after answering 200 for `req_id`."""
    inst = session.sim.universe.resolve(contract)
    if inst is None:
        session.send(msg.error(req_id, msg.UNKNOWN_CONTRACT))
    return inst


def contract_details(session: Session, fields: list[str]) -> None:
    req = ContractDetailsRequest.from_fields(fields)

    async def work() -> None:
        inst = resolve(session, req.req_id, req.contract)
        if inst is not None:
            today = session_day(session.sim.clock())
            session.send(contract_data_fields(req.req_id, inst, req.contract.exchange.upper(), today))
            session.send([ServerMessage.CONTRACT_DATA_END, 1, req.req_id])

    session.spawn(req.req_id, work)
