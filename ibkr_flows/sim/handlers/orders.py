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


def open_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.OPEN_ORDER_END, 1])


def completed_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.COMPLETED_ORDERS_END])


def executions(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.EXECUTION_DATA_END, 1, int(fields[2])])


def reject_order(session: Session, fields: list[str]) -> None:
    """placeOrder gets error 201 for its order id (`3, orderId, ...`; before version 145, `3, version, orderId`)."""
    at = order_id_field(session.server_version)
    order_id = fields[at] if len(fields) > at else ""
    session.send(msg.error(int(order_id) if order_id.isdigit() else msg.NO_REQUEST, msg.ORDER_REJECTED))
