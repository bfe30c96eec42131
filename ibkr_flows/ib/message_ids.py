"""Message ids of the TWS API's text protocol (server versions below 201), both directions: the simulator answers
by them and the doctor's raw probe reads them, so the two cannot drift apart."""

from __future__ import annotations

from enum import IntEnum


class ServerMessage(IntEnum):
    """Ids of messages TWS sends (ibapi's `IN`)."""

    TICK_PRICE = 1
    TICK_SIZE = 2
    ERR_MSG = 4
    ACCT_UPDATE_TIME = 8
    NEXT_VALID_ID = 9
    CONTRACT_DATA = 10
    MANAGED_ACCTS = 15
    HISTORICAL_DATA = 17
    TICK_STRING = 46
    CURRENT_TIME = 49
    CONTRACT_DATA_END = 52
    OPEN_ORDER_END = 53
    ACCT_DOWNLOAD_END = 54
    EXECUTION_DATA_END = 55
    TICK_SNAPSHOT_END = 57
    MARKET_DATA_TYPE = 58
    POSITION_END = 62
    ACCOUNT_SUMMARY = 63
    ACCOUNT_SUMMARY_END = 64
    ACCOUNT_UPDATE_MULTI_END = 74
    SYMBOL_SAMPLES = 79
    TICK_REQ_PARAMS = 81
    HEAD_TIMESTAMP = 88
    HISTORICAL_DATA_UPDATE = 90
    COMPLETED_ORDERS_END = 102


class ClientMessage(IntEnum):
    """Ids of messages clients send (ibapi's `OUT`), with the API call that sends each. The order-placing ids
    (3, 4) are not here: this project never sends them; the simulator knows them to refuse them
    (`sim.handlers.orders`)."""

    api_name: str

    def __new__(cls, message_id: int, api_name: str) -> ClientMessage:
        member = int.__new__(cls, message_id)
        member._value_ = message_id
        member.api_name = api_name
        return member

    REQ_MKT_DATA = 1, "reqMktData"
    CANCEL_MKT_DATA = 2, "cancelMktData"
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
    REQ_REAL_TIME_BARS = 50, "reqRealTimeBars"
    CANCEL_REAL_TIME_BARS = 51, "cancelRealTimeBars"
    REQ_MARKET_DATA_TYPE = 59, "reqMarketDataType"
    REQ_POSITIONS = 61, "reqPositions"
    REQ_ACCOUNT_SUMMARY = 62, "reqAccountSummary"
    CANCEL_ACCOUNT_SUMMARY = 63, "cancelAccountSummary"
    START_API = 71, "startApi"
    REQ_ACCOUNT_UPDATES_MULTI = 76, "reqAccountUpdatesMulti"
    REQ_MATCHING_SYMBOLS = 81, "reqMatchingSymbols"
    REQ_HEAD_TIMESTAMP = 87, "reqHeadTimeStamp"
    CANCEL_HEAD_TIMESTAMP = 90, "cancelHeadTimeStamp"
    REQ_COMPLETED_ORDERS = 99, "reqCompletedOrders"


PROTOCOL_CLIENT_MESSAGES = frozenset([*range(1, 26), *range(49, 60), *range(61, 106)])
"""Every id a client may send up to server version 178 and a little beyond (IB's `OUT` table: 1-25, 49-59,
61-105). An id in here that the simulator has no answer for is ignored, as TWS ignores requests it has nothing to
say about; an id outside it is a garbled stream, which TWS answers with 320."""


def api_name(message_id: int) -> str:
    """The API call behind a client message id, or `msg<id>` for one this table does not know."""
    try:
        return ClientMessage(message_id).api_name
    except ValueError:
        return f"msg{message_id}"
