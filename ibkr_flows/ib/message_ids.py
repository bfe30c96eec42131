"""Message ids of the TWS API at server version 178, both directions: the simulator answers by them and the
doctor's raw probe reads them, so the two cannot drift apart."""

from __future__ import annotations

from enum import IntEnum


class ServerMessage(IntEnum):
    """Ids of messages TWS sends (ibapi's `IN`)."""

    ERR_MSG = 4
    ACCT_UPDATE_TIME = 8
    NEXT_VALID_ID = 9
    CONTRACT_DATA = 10
    MANAGED_ACCTS = 15
    HISTORICAL_DATA = 17
    CURRENT_TIME = 49
    CONTRACT_DATA_END = 52
    OPEN_ORDER_END = 53
    ACCT_DOWNLOAD_END = 54
    EXECUTION_DATA_END = 55
    POSITION_END = 62
    ACCOUNT_SUMMARY_END = 64
    ACCOUNT_UPDATE_MULTI_END = 74
    HEAD_TIMESTAMP = 88
    COMPLETED_ORDERS_END = 102


class ClientMessage(IntEnum):
    """Ids of messages clients send (ibapi's `OUT`), with the API call that sends each."""

    api_name: str

    def __new__(cls, message_id: int, api_name: str) -> ClientMessage:
        member = int.__new__(cls, message_id)
        member._value_ = message_id
        member.api_name = api_name
        return member

    PLACE_ORDER = 3, "placeOrder"
    CANCEL_ORDER = 4, "cancelOrder"
    REQ_OPEN_ORDERS = 5, "reqOpenOrders"
    REQ_ACCOUNT_UPDATES = 6, "reqAccountUpdates"
    REQ_EXECUTIONS = 7, "reqExecutions"
    REQ_IDS = 8, "reqIds"
    REQ_CONTRACT_DETAILS = 9, "reqContractDetails"
    REQ_AUTO_OPEN_ORDERS = 15, "reqAutoOpenOrders"
    REQ_ALL_OPEN_ORDERS = 16, "reqAllOpenOrders"
    REQ_HISTORICAL_DATA = 20, "reqHistoricalData"
    CANCEL_HISTORICAL_DATA = 25, "cancelHistoricalData"
    REQ_CURRENT_TIME = 49, "reqCurrentTime"
    REQ_POSITIONS = 61, "reqPositions"
    REQ_ACCOUNT_SUMMARY = 62, "reqAccountSummary"
    START_API = 71, "startApi"
    REQ_ACCOUNT_UPDATES_MULTI = 76, "reqAccountUpdatesMulti"
    REQ_HEAD_TIMESTAMP = 87, "reqHeadTimeStamp"
    CANCEL_HEAD_TIMESTAMP = 90, "cancelHeadTimeStamp"
    REQ_COMPLETED_ORDERS = 99, "reqCompletedOrders"


def api_name(message_id: int) -> str:
    """The API call behind a client message id, or `msg<id>` for one this table does not know."""
    try:
        return ClientMessage(message_id).api_name
    except ValueError:
        return f"msg{message_id}"
