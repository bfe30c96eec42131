"""Order requests: the simulator, like this project, never trades.

Open orders, completed orders and executions are always empty (their end markers only), and placing an order is
refused with 201. With the read-only fault the session answers order requests with 321 before they reach here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.versions import order_id_field

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

PLACE_ORDER, CANCEL_ORDER = 3, 4
"""The order-placing message ids (ibapi's `OUT.PLACE_ORDER`, `CANCEL_ORDER`). They live on the server side only:
the simulator recognises them to refuse them; no client code of this project knows them."""
ORDER_CALLS = {PLACE_ORDER: "placeOrder", CANCEL_ORDER: "cancelOrder"}
"""Their API names, for the simulator's request counters."""


def open_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.OPEN_ORDER_END, 1])


def completed_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.COMPLETED_ORDERS_END])


def executions(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.EXECUTION_DATA_END, 1, int(fields[2])])


def order_id(fields: list[str], server_version: int) -> int:
    """The order id of a placeOrder (`3, orderId, ...`; before version 145, `3, version, orderId`), or
    `NO_REQUEST` when it cannot be read."""
    at = order_id_field(server_version)
    value = fields[at] if len(fields) > at else ""
    return int(value) if value.isdigit() else msg.NO_REQUEST


def reject_order(session: Session, fields: list[str]) -> None:
    """placeOrder gets error 201 for its order id."""
    session.send(msg.error(order_id(fields, session.server_version), msg.ORDER_REJECTED))
