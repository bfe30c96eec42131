"""Parsing of the client requests the simulator answers, at client version 178.

Field positions follow ib_async 2.1's `client.py` (and IB's `ibapi`): a contract is 12 fields starting with
conId; historical requests put the bar size before the duration and useRTH before whatToShow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class ContractRef:
    """A contract as a request describes it: every field the client may set (empty / 0 = not set)."""

    con_id: int
    symbol: str
    sec_type: str
    last_trade_date: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str

    @classmethod
    def from_fields(cls, fields: list[str]) -> ContractRef:
        """The 12 contract fields: conId, symbol, secType, lastTrade, strike, right, multiplier, exchange,
        primaryExchange, currency, localSymbol, tradingClass."""
        return cls(
            con_id=int(fields[0] or 0),
            symbol=fields[1],
            sec_type=fields[2],
            last_trade_date=fields[3],
            strike=float(fields[4] or 0),
            right=fields[5],
            multiplier=fields[6],
            exchange=fields[7],
            primary_exchange=fields[8],
            currency=fields[9],
            local_symbol=fields[10],
            trading_class=fields[11],
        )


@dataclass(frozen=True)
class HistoricalRequest:
    req_id: int
    contract: ContractRef
    end: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool

    @classmethod
    def from_fields(cls, fields: list[str]) -> HistoricalRequest:
        """`20, reqId, <12 contract>, includeExpired, end, barSize, duration, useRTH, whatToShow, formatDate,
        keepUpToDate, chartOptions` (non-BAG contracts)."""
        return cls(
            req_id=int(fields[1]),
            contract=ContractRef.from_fields(fields[2:14]),
            end=fields[15],
            bar_size=fields[16],
            duration=fields[17],
            use_rth=fields[18] == "1",
            what_to_show=fields[19].upper(),
            format_date=int(fields[20] or 1),
            keep_up_to_date=fields[21] == "1",
        )


@dataclass(frozen=True)
class HeadTimestampRequest:
    req_id: int
    contract: ContractRef
    use_rth: bool
    what_to_show: str
    format_date: int

    @classmethod
    def from_fields(cls, fields: list[str]) -> HeadTimestampRequest:
        """`87, reqId, <12 contract>, includeExpired, useRTH, whatToShow, formatDate`."""
        return cls(
            req_id=int(fields[1]),
            contract=ContractRef.from_fields(fields[2:14]),
            use_rth=fields[15] == "1",
            what_to_show=fields[16].upper(),
            format_date=int(fields[17] or 1),
        )


@dataclass(frozen=True)
class ContractDetailsRequest:
    req_id: int
    contract: ContractRef

    @classmethod
    def from_fields(cls, fields: list[str]) -> ContractDetailsRequest:
        """`9, 8, reqId, <12 contract>, includeExpired, secIdType, secId, issuerId`."""
        return cls(req_id=int(fields[2]), contract=ContractRef.from_fields(fields[3:15]))


_UTC_DASH = re.compile(r"(\d{8})-(\d{2}:\d{2}:\d{2})")
_ZONED = re.compile(r"(\d{8})(?:\s+(\d{2}:\d{2}:\d{2}))?(?:\s+(\S+))?")


def parse_end_datetime(value: str, tws_zone: ZoneInfo, now: datetime) -> datetime:
    """TWS's endDateTime forms: empty (now), `yyyymmdd-hh:mm:ss` (UTC), `yyyymmdd hh:mm:ss <zone>`, and the
    deprecated zone-less form read in the TWS login time zone. Raises ValueError (TWS answers 10314)."""
    text = value.strip()
    if not text:
        return now
    if match := _UTC_DASH.fullmatch(text):
        return datetime.strptime(" ".join(match.groups()), "%Y%m%d %H:%M:%S").replace(tzinfo=UTC)
    if match := _ZONED.fullmatch(text):
        day, clock, zone_name = match.groups()
        try:
            zone = ZoneInfo(zone_name) if zone_name else tws_zone
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone_name!r}") from exc
        naive = datetime.strptime(f"{day} {clock or '23:59:59'}", "%Y%m%d %H:%M:%S")
        return naive.replace(tzinfo=zone).astimezone(UTC)
    raise ValueError(f"unparseable endDateTime {value!r}")


def format_bar_time(ts: datetime, daily: bool, format_date: int, tws_zone: ZoneInfo) -> str:
    """A bar's time as TWS sends it: `yyyymmdd` for daily and longer bars; otherwise formatDate 1 gives
    `yyyymmdd hh:mm:ss <zone>` in the login zone and formatDate 2 epoch seconds."""
    if daily:
        return ts.strftime("%Y%m%d")
    if format_date == 2:
        return str(int(ts.timestamp()))
    return ts.astimezone(tws_zone).strftime("%Y%m%d %H:%M:%S ") + tws_zone.key


def format_header_time(ts: datetime, tws_zone: ZoneInfo) -> str:
    """The start/end strings of a HISTORICAL_DATA header: two spaces and no zone, as recorded from real TWS."""
    return ts.astimezone(tws_zone).strftime("%Y%m%d  %H:%M:%S")
