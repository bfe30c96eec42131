"""The simulator's answer to each client message it understands, keyed by `ClientMessage`.

A message without an entry is counted and ignored, as TWS ignores requests it has nothing to say about. Each
handler takes the session and the frame's fields and answers through `Session.send`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ibkr_flows.ib.message_ids import ClientMessage
from ibkr_flows.sim.handlers import account, contracts, historical, orders, startup

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

Handler: TypeAlias = Callable[["Session", list[str]], None]

HANDLERS: dict[int, Handler] = {
    ClientMessage.PLACE_ORDER: orders.reject_order,
    ClientMessage.REQ_OPEN_ORDERS: orders.open_orders,
    ClientMessage.REQ_ACCOUNT_UPDATES: account.account_updates,
    ClientMessage.REQ_EXECUTIONS: orders.executions,
    ClientMessage.REQ_IDS: startup.req_ids,
    ClientMessage.REQ_CONTRACT_DETAILS: contracts.contract_details,
    ClientMessage.REQ_HISTORICAL_DATA: historical.historical_data,
    ClientMessage.CANCEL_HISTORICAL_DATA: historical.cancel_historical_data,
    ClientMessage.REQ_CURRENT_TIME: startup.current_time,
    ClientMessage.REQ_POSITIONS: account.positions,
    ClientMessage.REQ_ACCOUNT_SUMMARY: account.account_summary,
    ClientMessage.START_API: startup.start_api,
    ClientMessage.REQ_ACCOUNT_UPDATES_MULTI: account.account_updates_multi,
    ClientMessage.REQ_HEAD_TIMESTAMP: historical.head_timestamp,
    ClientMessage.CANCEL_HEAD_TIMESTAMP: historical.cancel_head_timestamp,
    ClientMessage.REQ_COMPLETED_ORDERS: orders.completed_orders,
}

ORDER_MESSAGES = frozenset({ClientMessage.PLACE_ORDER, ClientMessage.REQ_OPEN_ORDERS,
                            ClientMessage.REQ_AUTO_OPEN_ORDERS, ClientMessage.REQ_ALL_OPEN_ORDERS,
                            ClientMessage.REQ_COMPLETED_ORDERS})
"""Requests TWS refuses with 321 when its 'Read-Only API' box is ticked (server side only: no client sends them)."""
