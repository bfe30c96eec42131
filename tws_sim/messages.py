"""Server -> client messages at server version 178, built as field lists for `wire.encode_frame`.

Texts are the ones real TWS sends, so code that matches on them (ib_async's logs, the doctor, users' own
handlers) behaves the same against the simulator.
"""

from __future__ import annotations

MANAGED_ACCTS = 15
NEXT_VALID_ID = 9
ERR_MSG = 4
CURRENT_TIME = 49
ACCT_UPDATE_TIME = 8
CONTRACT_DATA_END = 52
HEAD_TIMESTAMP = 88
HISTORICAL_DATA = 17
POSITION_END = 62
OPEN_ORDER_END = 53
ACCT_DOWNLOAD_END = 54
EXECUTION_DATA_END = 55
ACCOUNT_SUMMARY_END = 64
ACCOUNT_UPDATE_MULTI_END = 74
COMPLETED_ORDERS_END = 102

NO_REQUEST = -1

CLIENT_ID_IN_USE = (326, "Unable to connect as the client id is already in use. Retry with a unique client id.")
READ_ONLY = (321, "Error validating request.-'bY' : cause - The API interface is currently in Read-Only mode.")
UNKNOWN_CONTRACT = (200, "No security definition has been found for the request")
PACING_VIOLATION = (162, "Historical Market Data Service error message:Historical data request pacing violation")
CONNECTIVITY_LOST = (1100, "Connectivity between IB and Trader Workstation has been lost.")
CONNECTIVITY_RESTORED = (
    1102,
    "Connectivity between IB and Trader Workstation has been restored - data maintained. "
    "All data farms are connected: usfarm; ushmds; secdefnj.",
)
FARM_OK = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
FARM_HMDS_BROKEN = (2105, "HMDS data farm connection is broken:ushmds")
ORDER_REJECTED = (201, "Order rejected - reason:This simulator serves market data only and never executes orders.")


def error(req_id: int, code_text: tuple[int, str], detail: str = "") -> list[object]:
    """ERR_MSG with the mandatory trailing advancedOrderRejectJson field (without it ib_async drops the error)."""
    code, text = code_text
    return [ERR_MSG, 2, req_id, code, text + detail, ""]


def no_data(symbol: str, exchange: str, what_to_show: str) -> tuple[int, str]:
    label = what_to_show.replace("_", " ").title().replace(" ", "_")
    return 162, f"Historical Market Data Service error message:HMDS query returned no data: {symbol}@{exchange} {label}"


def no_permissions(primary_exchange: str) -> tuple[int, str]:
    return 162, f"Historical Market Data Service error message:No market data permissions for {primary_exchange} STK"


def invalid_bar_size(bar_size: str, legal: str) -> tuple[int, str]:
    return (
        321,
        f"Error validating request.-'bM' : cause - Historical data bar size setting is invalid ({bar_size}). "
        f"Legal ones are: {legal}",
    )


def invalid_request(cause: str) -> tuple[int, str]:
    return 321, f"Error validating request.-'bN' : cause - {cause}"


def invalid_end_date(value: str) -> tuple[int, str]:
    return (
        10314,
        f"End Date/Time: The date, time, or time-zone entered is invalid ({value!r}). The correct format is "
        "yyyymmdd hh:mm:ss xx/xxxx where yyyymmdd and xx/xxxx are optional. E.g.: 20031126 15:59:00 US/Eastern  "
        "Note that there is a space between the date and time, and between the time and time-zone.  "
        "If no date is specified, current date is assumed. If no time-zone is specified, local time-zone is "
        "assumed(deprecated).  You can also provide yyyymmddd-hh:mm:ss time is in UTC. Note that there is a dash "
        "between the date and time in UTC notation.",
    )


def time_length_exceeded() -> tuple[int, str]:
    return 162, "Historical Market Data Service error message:Time length exceed max."
