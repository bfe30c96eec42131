"""startApi and the small requests around it: what turns an accepted socket into a ready API session.

startApi is where TWS refuses a client id (326), names the managed accounts, hands out the first order id and
reports its data farms; the connect-time faults (busy ids, empty accounts, a broken farm, a timed drop) act here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.faults import ConnectFault

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

log = logging.getLogger("ibkr.sim")


def start_api(session: Session, fields: list[str]) -> None:
    sim = session.sim
    client_id = int(fields[2])
    if client_id in sim.live_client_ids() or client_id in sim.faults.busy_client_ids:
        session.send(msg.error(msg.NO_REQUEST, msg.CLIENT_ID_IN_USE))
        session.close()
        return
    session.client_id = client_id
    accounts = "" if sim.faults.connect is ConnectFault.EMPTY_ACCOUNTS else ",".join(sim.accounts)
    session.send([ServerMessage.MANAGED_ACCTS, 1, accounts])
    session.send([ServerMessage.NEXT_VALID_ID, 1, sim.next_order_id()])
    for notice in msg.FARM_OK:
        if notice[0] == ErrorCode.HMDS_FARM_OK and sim.faults.farm_down:
            notice = msg.FARM_HMDS_BROKEN
        session.send(msg.error(msg.NO_REQUEST, notice))
    session.ready = True
    if sim.connectivity_lost:
        session.send(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_LOST))
    if sim.faults.drop_after_seconds is not None:
        asyncio.get_running_loop().call_later(sim.faults.drop_after_seconds, _drop_on_time, session)


def _drop_on_time(session: Session) -> None:
    log.info("dropping client %s: its connection time is up (fault)", session.client_id)
    session.close()


def current_time(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.CURRENT_TIME, 1, int(session.sim.clock().timestamp())])


def req_ids(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.NEXT_VALID_ID, 1, session.sim.next_order_id()])
