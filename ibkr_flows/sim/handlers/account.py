"""The account requests ib_async makes while connecting, answered with just their end markers.

The simulator holds no account, so positions, portfolio values and summaries are empty; ib_async still waits for
each end marker before it calls the connection ready, so each must arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ServerMessage

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session


def positions(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.POSITION_END, 1])


def account_updates(session: Session, fields: list[str]) -> None:
    """Subscribing (`fields[2] == "1"`) gets the update time and the download end; unsubscribing gets nothing."""
    account = fields[3] if len(fields) > 3 else ""
    if fields[2] == "1":
        local_time = session.sim.clock().astimezone(session.sim.tws_zone)
        session.send([ServerMessage.ACCT_UPDATE_TIME, 1, local_time.strftime("%H:%M")])
        session.send([ServerMessage.ACCT_DOWNLOAD_END, 1, account])


def account_updates_multi(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.ACCOUNT_UPDATE_MULTI_END, 1, int(fields[2])])


def account_summary(session: Session, fields: list[str]) -> None:
    session.send([ServerMessage.ACCOUNT_SUMMARY_END, 1, int(fields[2])])
