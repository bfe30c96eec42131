"""IB's error and notice codes: one table of what each means, which class of problem it is, and how a client
should react. The doctor, the ingestion and the simulator all read it, so a code means the same thing everywhere.

TWS reuses code 162 for several historical-data problems and tells them apart only by text; `classify` reads
both. The texts below are the ones real TWS sends (the simulator sends them verbatim, and code that matches on them
behaves the same against either).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorClass(StrEnum):
    """What kind of problem a code reports; the retry policy follows from it."""

    CONNECTIVITY = "connectivity"
    """The socket, TWS's link to IB, or a data farm is down: reconnect or wait, then retry."""
    PACING = "pacing"
    """IB's historical-data pacing was broken: back off for tens of seconds, then retry."""
    NO_DATA = "no-data"
    """IB has no bars for the range (a holiday, a halt): an empty answer, not a failure."""
    PERMISSIONS = "permissions"
    """The account lacks market data permissions: retrying cannot help."""
    CLIENT_ID = "client-id"
    """The client id is held by another connection: connect again with another id."""
    REQUEST = "request"
    """The request itself is wrong (unknown contract, invalid bar size or date): retrying cannot help."""
    NOTICE = "notice"
    """Informational (farm connection OK, connectivity restored): nothing to do."""
    UNKNOWN = "unknown"
    """A code this table does not know: worth a few retries before giving up."""


class Retry(StrEnum):
    """How a client reacts to a class of error."""

    NEVER = "never"
    BACKOFF = "backoff"
    """Short exponential backoff (after reconnecting, if the socket dropped)."""
    PACING_BACKOFF = "pacing-backoff"
    """Long exponential backoff: IB's pacing penalty lasts tens of seconds."""
    NEXT_CLIENT_ID = "next-client-id"


RETRY_POLICY: dict[ErrorClass, Retry] = {
    ErrorClass.CONNECTIVITY: Retry.BACKOFF,
    ErrorClass.PACING: Retry.PACING_BACKOFF,
    ErrorClass.NO_DATA: Retry.NEVER,
    ErrorClass.PERMISSIONS: Retry.NEVER,
    ErrorClass.CLIENT_ID: Retry.NEXT_CLIENT_ID,
    ErrorClass.REQUEST: Retry.NEVER,
    ErrorClass.NOTICE: Retry.NEVER,
    ErrorClass.UNKNOWN: Retry.BACKOFF,
}


class ErrorCode(IntEnum):
    """The codes this project meets, with IB's meaning and their class (for 162, the class of its commonest
    text; `classify` reads the text)."""

    meaning: str
    error_class: ErrorClass

    def __new__(cls, code: int, meaning: str, error_class: ErrorClass) -> ErrorCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        member.error_class = error_class
        return member

    HISTORICAL_DATA_SERVICE = 162, "historical data service error (pacing, no data, permissions, ...)", \
        ErrorClass.REQUEST
    UNKNOWN_CONTRACT = 200, "no security definition found for the request", ErrorClass.REQUEST
    ORDER_REJECTED = 201, "order rejected", ErrorClass.REQUEST
    REQUEST_UNREADABLE = 320, "error reading an API client request (malformed fields, unknown message id)", \
        ErrorClass.REQUEST
    REQUEST_INVALID = 321, "error validating request (bad parameter, or Read-Only API for orders)", \
        ErrorClass.REQUEST
    CLIENT_ID_IN_USE = 326, "client id already in use", ErrorClass.CLIENT_ID
    MARKET_DATA_NOT_SUBSCRIBED = 354, "requested market data is not subscribed", ErrorClass.PERMISSIONS
    HISTORICAL_QUERY_NOT_FOUND = 366, "no historical data query found for the ticker id", ErrorClass.CONNECTIVITY
    REALTIME_QUERY_INVALID = 420, "invalid real-time query (no market data permissions for real-time bars)", \
        ErrorClass.PERMISSIONS
    CONNECTIVITY_LOST = 1100, "connectivity between IB and TWS has been lost", ErrorClass.CONNECTIVITY
    CONNECTIVITY_RESTORED_DATA_LOST = 1101, "connectivity restored, data lost", ErrorClass.NOTICE
    CONNECTIVITY_RESTORED = 1102, "connectivity restored, data maintained", ErrorClass.NOTICE
    MARKET_FARM_BROKEN = 2103, "market data farm connection is broken", ErrorClass.CONNECTIVITY
    MARKET_FARM_OK = 2104, "market data farm connection is OK", ErrorClass.NOTICE
    HMDS_FARM_BROKEN = 2105, "historical data farm connection is broken", ErrorClass.CONNECTIVITY
    HMDS_FARM_OK = 2106, "historical data farm connection is OK", ErrorClass.NOTICE
    HMDS_FARM_INACTIVE = 2107, "historical data farm connection is inactive, available on demand", ErrorClass.NOTICE
    MARKET_FARM_INACTIVE = 2108, "market data farm connection is inactive, available on demand", ErrorClass.NOTICE
    SECDEF_FARM_BROKEN = 2157, "sec-def data farm connection is broken", ErrorClass.CONNECTIVITY
    SECDEF_FARM_OK = 2158, "sec-def data farm connection is OK", ErrorClass.NOTICE
    DELAYED_DATA_DISPLAYED = 10167, "not subscribed to live data: delayed market data is displayed instead", \
        ErrorClass.NOTICE
    INVALID_END_DATE = 10314, "end date/time is invalid", ErrorClass.REQUEST


FARM_BROKEN = frozenset({ErrorCode.MARKET_FARM_BROKEN, ErrorCode.HMDS_FARM_BROKEN, ErrorCode.SECDEF_FARM_BROKEN})
FARM_NOTICES = FARM_BROKEN | {ErrorCode.MARKET_FARM_OK, ErrorCode.HMDS_FARM_OK, ErrorCode.HMDS_FARM_INACTIVE,
                              ErrorCode.MARKET_FARM_INACTIVE, ErrorCode.SECDEF_FARM_OK}
CONNECTIVITY_RESTORED = frozenset({ErrorCode.CONNECTIVITY_RESTORED_DATA_LOST, ErrorCode.CONNECTIVITY_RESTORED})

HMDS_PREFIX = "Historical Market Data Service error message:"
PACING_VIOLATION_TEXT = "Historical data request pacing violation"
NO_DATA_TEXT = "HMDS query returned no data"
NO_PERMISSIONS_TEXT = "No market data permissions"
TIME_LENGTH_TEXT = "Time length exceed max."
"""The 162 texts that tell its cases apart (TWS sends them after `HMDS_PREFIX`)."""


WARNING_CODES = range(2100, 2200)
"""IB's 21xx codes are warnings and notices sent alongside an answer (2174: an end date without a time zone),
never a request's answer; the ones listed above (a broken farm) keep their own class."""


def classify(code: int, text: str) -> ErrorClass:
    """The class of an error as TWS reported it (code and text)."""
    if code == ErrorCode.HISTORICAL_DATA_SERVICE:
        lowered = text.lower()
        if PACING_VIOLATION_TEXT.lower() in lowered:
            return ErrorClass.PACING
        if NO_DATA_TEXT.lower() in lowered:
            return ErrorClass.NO_DATA
        if NO_PERMISSIONS_TEXT.lower() in lowered:
            return ErrorClass.PERMISSIONS
        return ErrorClass.REQUEST
    try:
        return ErrorCode(code).error_class
    except ValueError:
        return ErrorClass.NOTICE if code in WARNING_CODES else ErrorClass.UNKNOWN
