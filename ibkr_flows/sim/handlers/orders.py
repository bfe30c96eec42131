"""Order requests: the simulator, like this project, never trades.

Open orders, completed orders and executions are always empty (their end markers only), and placing an order is
refused with 201. With the read-only fault the session answers order requests with 321 before they reach here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.sim import messages as msg

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session


def open_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.OPEN_ORDER_END, 1])


def completed_orders(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.COMPLETED_ORDERS_END])


def executions(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.EXECUTION_DATA_END, 1, int(fields[2])])


def reject_order(session: Session, fields: list[str]) -> None:
    """placeOrder (`3, orderId, ...`) gets error 201 for that order id."""
    session.send(msg.error(int(fields[1]) if fields[1].isdigit() else msg.NO_REQUEST, msg.ORDER_REJECTED))
