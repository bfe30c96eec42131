"""The account requests: positions, account updates and the account summary.

The simulated account is a fresh paper account: USD 1,000,000 in cash and no positions. Positions and portfolio
values are therefore empty (ib_async still waits for each end marker before it calls the connection ready, so
each must arrive); the account summary reports the standard tags with the values such an account has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.sim import messages as msg

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


CASH = "1000000.00"
"""A new IB paper account's starting equity."""
FLAT = "0.00"

SUMMARY: dict[str, tuple[str, str]] = {
    "AccountType": ("INDIVIDUAL", ""),
    "NetLiquidation": (CASH, "USD"),
    "TotalCashValue": (CASH, "USD"),
    "SettledCash": (CASH, "USD"),
    "AccruedCash": (FLAT, "USD"),
    "BuyingPower": ("4000000.00", "USD"),  # Reg T margin: 4 x excess liquidity intraday
    "EquityWithLoanValue": (CASH, "USD"),
    "PreviousDayEquityWithLoanValue": (CASH, "USD"),
    "GrossPositionValue": (FLAT, "USD"),
    "RegTEquity": (CASH, "USD"),
    "RegTMargin": (FLAT, "USD"),
    "SMA": (CASH, "USD"),
    "InitMarginReq": (FLAT, "USD"),
    "MaintMarginReq": (FLAT, "USD"),
    "AvailableFunds": (CASH, "USD"),
    "ExcessLiquidity": (CASH, "USD"),
    "Cushion": ("1", ""),
    "FullInitMarginReq": (FLAT, "USD"),
    "FullMaintMarginReq": (FLAT, "USD"),
    "FullAvailableFunds": (CASH, "USD"),
    "FullExcessLiquidity": (CASH, "USD"),
    "LookAheadNextChange": ("0", ""),
    "LookAheadInitMarginReq": (FLAT, "USD"),
    "LookAheadMaintMarginReq": (FLAT, "USD"),
    "LookAheadAvailableFunds": (CASH, "USD"),
    "LookAheadExcessLiquidity": (CASH, "USD"),
    "HighestSeverity": ("0", ""),
    "DayTradesRemaining": ("-1", ""),  # -1: unlimited, the account is above the USD 25,000 PDT threshold
    "DayTradesRemainingT+1": ("-1", ""),
    "DayTradesRemainingT+2": ("-1", ""),
    "DayTradesRemainingT+3": ("-1", ""),
    "DayTradesRemainingT+4": ("-1", ""),
    "Leverage": ("0.00", ""),
}
"""IB's account summary tags (`ibapi.account_summary_tags`) for a flat USD 1,000,000 paper account."""

LEDGER: dict[str, str] = {
    "CashBalance": CASH,
    "TotalCashBalance": CASH,
    "AccruedCash": FLAT,
    "StockMarketValue": FLAT,
    "NetLiquidationByCurrency": CASH,
    "UnrealizedPnL": FLAT,
    "RealizedPnL": FLAT,
    "ExchangeRate": "1.00",
}
"""The per-currency cash tags a `$LEDGER` request adds (the only currency held is USD, the base)."""


def account_summary(session: Session, fields: list[str]) -> None:
    """`62, 1, reqId, group, tags`: one row per account and known tag, then the end marker. `$LEDGER` adds the
    cash tags in the base currency (`BASE`), `$LEDGER:USD` in USD, `$LEDGER:ALL` in both."""
    req_id = int(fields[2])
    tags = [tag.strip() for tag in fields[4].split(",") if tag.strip()]
    for account in session.sim.accounts:
        for tag in tags:
            if tag in SUMMARY:
                session.send(msg.account_summary(req_id, account, tag, *SUMMARY[tag]))
            elif tag.startswith("$LEDGER"):
                for currency in _ledger_currencies(tag):
                    for ledger_tag, value in LEDGER.items():
                        session.send(msg.account_summary(req_id, account, ledger_tag, value, currency))
    session.send([ServerMessage.ACCOUNT_SUMMARY_END, 1, req_id])


def _ledger_currencies(tag: str) -> list[str]:
    """`$LEDGER` -> base currency; `$LEDGER:ALL` -> base and every held currency; `$LEDGER:USD` -> USD."""
    _, _, which = tag.partition(":")
    if not which:
        return ["BASE"]
    if which.upper() == "ALL":
        return ["BASE", "USD"]
    return ["USD"] if which.upper() == "USD" else []
