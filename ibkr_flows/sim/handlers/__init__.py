"""The simulator's answer to each client message it understands, keyed by `ClientMessage`.

A message of the protocol without an entry is counted and ignored, as TWS ignores requests it has nothing to say
about (cancels of subscriptions the simulator does not keep, for instance); an id outside the protocol is answered
with 320 by the session. Each handler takes the session and the frame's fields and answers through
`Session.send`; a handler that cannot read its fields raises ValueError or IndexError, which the session answers
with 320 while the connection stays up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ibkr_flows.ib.message_ids import ClientMessage
from ibkr_flows.sim.handlers import account, contracts, historical, market_data, orders, startup, symbols

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

Handler: TypeAlias = Callable[["Session", list[str]], None]

HANDLERS: dict[int, Handler] = {
    ClientMessage.REQ_MKT_DATA: market_data.mkt_data,
    ClientMessage.CANCEL_MKT_DATA: market_data.cancel_mkt_data,
    orders.PLACE_ORDER: orders.reject_order,
    ClientMessage.REQ_OPEN_ORDERS: orders.open_orders,
    ClientMessage.REQ_ACCOUNT_UPDATES: account.account_updates,
    ClientMessage.REQ_EXECUTIONS: orders.executions,
    ClientMessage.REQ_IDS: startup.req_ids,
    ClientMessage.REQ_CONTRACT_DETAILS: contracts.contract_details,
    ClientMessage.REQ_HISTORICAL_DATA: historical.historical_data,
    ClientMessage.CANCEL_HISTORICAL_DATA: historical.cancel_historical_data,
    ClientMessage.REQ_CURRENT_TIME: startup.current_time,
    ClientMessage.REQ_REAL_TIME_BARS: market_data.real_time_bars,
    ClientMessage.REQ_MARKET_DATA_TYPE: market_data.market_data_type,
    ClientMessage.REQ_POSITIONS: account.positions,
    ClientMessage.REQ_ACCOUNT_SUMMARY: account.account_summary,
    ClientMessage.START_API: startup.start_api,
    ClientMessage.REQ_ACCOUNT_UPDATES_MULTI: account.account_updates_multi,
    ClientMessage.REQ_MATCHING_SYMBOLS: symbols.matching_symbols,
    ClientMessage.REQ_HEAD_TIMESTAMP: historical.head_timestamp,
    ClientMessage.CANCEL_HEAD_TIMESTAMP: historical.cancel_head_timestamp,
    ClientMessage.REQ_COMPLETED_ORDERS: orders.completed_orders,
}

ORDER_MESSAGES = frozenset({orders.PLACE_ORDER, ClientMessage.REQ_OPEN_ORDERS,
                            ClientMessage.REQ_AUTO_OPEN_ORDERS, ClientMessage.REQ_ALL_OPEN_ORDERS,
                            ClientMessage.REQ_COMPLETED_ORDERS})
"""Requests TWS refuses with 321 when its 'Read-Only API' box is ticked (server side only: no client sends them)."""
