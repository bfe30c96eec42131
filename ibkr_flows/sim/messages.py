"""Server -> client messages in their server-version-178 shape, built as field lists for `ib.wire.encode_frame`
(`versions.for_version` reshapes the few that differ for a client that negotiated an older version).

Texts are the ones real TWS sends, so code that matches on them (ib_async's logs, the doctor, users' own
handlers) behaves the same against the simulator. Codes and the texts that tell 162's cases apart come from
`ib.codes`, the one table the clients read too.
"""

from __future__ import annotations

from collections.abc import Sequence

from ibkr_flows.ib.codes import (
    HMDS_PREFIX,
    NO_DATA_TEXT,
    NO_PERMISSIONS_TEXT,
    PACING_VIOLATION_TEXT,
    TIME_LENGTH_TEXT,
    ErrorCode,
)
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.sim.universe import Instrument

NO_REQUEST = -1

TWSError = tuple[ErrorCode, str]

CLIENT_ID_IN_USE: TWSError = (
    ErrorCode.CLIENT_ID_IN_USE, "Unable to connect as the client id is already in use. Retry with a unique client id.")
READ_ONLY: TWSError = (
    ErrorCode.REQUEST_INVALID,
    "Error validating request.-'bY' : cause - The API interface is currently in Read-Only mode.")
UNKNOWN_CONTRACT: TWSError = (ErrorCode.UNKNOWN_CONTRACT, "No security definition has been found for the request")
PACING_VIOLATION: TWSError = (ErrorCode.HISTORICAL_DATA_SERVICE, HMDS_PREFIX + PACING_VIOLATION_TEXT)
CONNECTIVITY_LOST: TWSError = (
    ErrorCode.CONNECTIVITY_LOST, "Connectivity between IB and Trader Workstation has been lost.")
CONNECTIVITY_RESTORED: TWSError = (
    ErrorCode.CONNECTIVITY_RESTORED,
    "Connectivity between IB and Trader Workstation has been restored - data maintained. "
    "All data farms are connected: usfarm; ushmds; secdefnj.",
)
FARM_OK: tuple[TWSError, ...] = (
    (ErrorCode.MARKET_FARM_OK, "Market data farm connection is OK:usfarm"),
    (ErrorCode.HMDS_FARM_OK, "HMDS data farm connection is OK:ushmds"),
    (ErrorCode.SECDEF_FARM_OK, "Sec-def data farm connection is OK:secdefnj"),
)
FARM_HMDS_BROKEN: TWSError = (ErrorCode.HMDS_FARM_BROKEN, "HMDS data farm connection is broken:ushmds")
DELAYED_DATA_DISPLAYED: TWSError = (
    ErrorCode.DELAYED_DATA_DISPLAYED, "Requested market data is not subscribed. Displaying delayed market data.")
ORDER_REJECTED: TWSError = (
    ErrorCode.ORDER_REJECTED,
    "Order rejected - reason:This simulator serves market data only and never executes orders.")


def error(req_id: int, code_text: TWSError, detail: str = "") -> list[object]:
    """ERR_MSG with the mandatory trailing advancedOrderRejectJson field (without it ib_async drops the error)."""
    code, text = code_text
    return [int(ServerMessage.ERR_MSG), 2, req_id, int(code), text + detail, ""]


def no_data(symbol: str, exchange: str, what_to_show: str) -> TWSError:
    label = what_to_show.replace("_", " ").title().replace(" ", "_")
    return ErrorCode.HISTORICAL_DATA_SERVICE, f"{HMDS_PREFIX}{NO_DATA_TEXT}: {symbol}@{exchange} {label}"


def no_permissions(primary_exchange: str) -> TWSError:
    return ErrorCode.HISTORICAL_DATA_SERVICE, f"{HMDS_PREFIX}{NO_PERMISSIONS_TEXT} for {primary_exchange} STK"


def invalid_bar_size(bar_size: str, legal: str) -> TWSError:
    return (
        ErrorCode.REQUEST_INVALID,
        f"Error validating request.-'bM' : cause - Historical data bar size setting is invalid ({bar_size}). "
        f"Legal ones are: {legal}",
    )


def invalid_request(cause: str) -> TWSError:
    return ErrorCode.REQUEST_INVALID, f"Error validating request.-'bN' : cause - {cause}"


def invalid_end_date(value: str) -> TWSError:
    return (
        ErrorCode.INVALID_END_DATE,
        f"End Date/Time: The date, time, or time-zone entered is invalid ({value!r}). The correct format is "
        "yyyymmdd hh:mm:ss xx/xxxx where yyyymmdd and xx/xxxx are optional. E.g.: 20031126 15:59:00 US/Eastern  "
        "Note that there is a space between the date and time, and between the time and time-zone.  "
        "If no date is specified, current date is assumed. If no time-zone is specified, local time-zone is "
        "assumed(deprecated).  You can also provide yyyymmddd-hh:mm:ss time is in UTC. Note that there is a dash "
        "between the date and time in UTC notation.",
    )


def time_length_exceeded() -> TWSError:
    return ErrorCode.HISTORICAL_DATA_SERVICE, HMDS_PREFIX + TIME_LENGTH_TEXT


def unreadable_request(message_id: int | str, cause: str) -> TWSError:
    """320: TWS could not parse a request's fields; it answers and keeps reading the next frame."""
    return (ErrorCode.REQUEST_UNREADABLE,
            f"Error reading request. Message id {message_id}. Unable to parse data. {cause}")


def unknown_message_id(message_id: str) -> TWSError:
    """320 for a message id the protocol does not have (a garbled or foreign stream)."""
    return ErrorCode.REQUEST_UNREADABLE, f"Error reading request. Unknown message id {message_id!r}."


def market_data_not_subscribed(symbol: str, primary_exchange: str, trading_class: str) -> TWSError:
    """354: live data requested (market data type 1 or 2) without a subscription; delayed data would be there."""
    return (
        ErrorCode.MARKET_DATA_NOT_SUBSCRIBED,
        f"Requested market data is not subscribed.Delayed market data is available.{symbol} "
        f"{primary_exchange}.{trading_class or symbol}/TOP/ALL",
    )


def realtime_no_permissions(primary_exchange: str) -> TWSError:
    """420: real-time bars need a live subscription; they have no delayed form."""
    return ErrorCode.REALTIME_QUERY_INVALID, f"Invalid Real-time Query:{NO_PERMISSIONS_TEXT} for {primary_exchange} STK"


# -- market data ---------------------------------------------------------------------------------------------------

TICK_VERSION = 6
"""The version field TICK_PRICE, TICK_SIZE and TICK_STRING still carry at 178."""


def tick_price(req_id: int, tick_type: int, price: float, size: float | str = "", attr_mask: int = 0) -> list[object]:
    """TICK_PRICE; bid/ask/last (live or delayed) carry their size too, which clients report as a size tick."""
    return [ServerMessage.TICK_PRICE, TICK_VERSION, req_id, tick_type, price, size, attr_mask]


def tick_size(req_id: int, tick_type: int, size: float) -> list[object]:
    return [ServerMessage.TICK_SIZE, TICK_VERSION, req_id, tick_type, size]


def tick_string(req_id: int, tick_type: int, value: str) -> list[object]:
    return [ServerMessage.TICK_STRING, TICK_VERSION, req_id, tick_type, value]


def market_data_type(req_id: int, data_type: int) -> list[object]:
    """MARKET_DATA_TYPE: which kind of data (1 live, 2 frozen, 3 delayed, 4 delayed frozen) the ticks are."""
    return [ServerMessage.MARKET_DATA_TYPE, 1, req_id, data_type]


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int) -> list[object]:
    """TICK_REQ_PARAMS, TWS's first answer to every reqMktData."""
    return [ServerMessage.TICK_REQ_PARAMS, req_id, min_tick, bbo_exchange, snapshot_permissions]


def tick_snapshot_end(req_id: int) -> list[object]:
    return [ServerMessage.TICK_SNAPSHOT_END, 1, req_id]


# -- contracts and account -------------------------------------------------------------------------------------------


STOCK_DERIVATIVES = ("CFD", "OPT", "IOPT", "WAR", "BAG")
"""The derivative sec types TWS lists for a US stock in a symbol search."""


def symbol_samples(req_id: int, matches: Sequence[Instrument]) -> list[object]:
    """SYMBOL_SAMPLES at 178: per match conId, symbol, secType, primaryExchange, currency, the derivative sec types
    (count, then each), description and issuerId."""
    fields: list[object] = [ServerMessage.SYMBOL_SAMPLES, req_id, len(matches)]
    for inst in matches:
        fields += [inst.con_id, inst.symbol, inst.sec_type, inst.primary_exchange, inst.currency,
                   len(STOCK_DERIVATIVES), *STOCK_DERIVATIVES, inst.long_name, ""]
    return fields


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> list[object]:
    return [ServerMessage.ACCOUNT_SUMMARY, 1, req_id, account, tag, value, currency]
