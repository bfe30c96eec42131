"""Server -> client messages at server version 178, built as field lists for `ib.wire.encode_frame`.

Texts are the ones real TWS sends, so code that matches on them (ib_async's logs, the doctor, users' own
handlers) behaves the same against the simulator. Codes and the texts that tell 162's cases apart come from
`ib.codes`, the one table the clients read too.
"""

from __future__ import annotations

from ibkr_flows.ib.codes import (
    HMDS_PREFIX,
    NO_DATA_TEXT,
    NO_PERMISSIONS_TEXT,
    PACING_VIOLATION_TEXT,
    TIME_LENGTH_TEXT,
    ErrorCode,
)
from ibkr_flows.ib.message_ids import ServerMessage

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
