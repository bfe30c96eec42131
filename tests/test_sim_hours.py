"""Trading and liquid hours in the simulator's contract details, through the real ib_async client: every listing's
come from its session calendar (`ib.calendars`) for the week from the request date, in TWS's format and the
contract's time zone: holidays closed (Labour Day on Xetra, Japan's equinox, Canada Day, Good Friday on CME, the
4th of July), early closes (CME's 12:00 Chicago halt on Martin Luther King Day, NYSE's half day), Tokyo's lunch as
two ranges a day, CME Globex's daily maintenance hour, and FX 24/5 trading through Christmas."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
from ib_async import IB, Contract, Forex, Future, Index, Stock

from tests.helpers_instruments import client_at_now

CLOCK = [datetime(2025, 1, 10, 17, tzinfo=UTC)]
"""The simulator's clock, moved by each test to the request date it asks about."""


@pytest.fixture(scope="module")
def ib() -> Iterator[IB]:
    with client_at_now(64, clock=lambda: CLOCK[0]) as client:
        yield client


def hours_on(ib: IB, contract: Contract, day: date) -> tuple[str, str]:
    """tradingHours and liquidHours of `contract` asked on `day` (16:00 UTC: that day in New York, where the
    simulator's request date is counted)."""
    CLOCK[0] = datetime.combine(day, time(16), tzinfo=UTC)
    [details] = ib.reqContractDetails(contract)
    return details.tradingHours, details.liquidHours


def days(*parts: str) -> str:
    return ";".join(parts)


SAP = Stock("SAP", "IBIS", "EUR")
TOYOTA = Stock("7203", "TSEJ", "JPY")
ES = Future("ES", "202506", "CME")
CL = Future("CL", "202506", "NYMEX")


@pytest.mark.parametrize(("contract", "day", "trading", "liquid"), [
    pytest.param(SAP, date(2025, 4, 28), days(  # Frankfurt time (MET); Xetra: one session, all hours regular
        "20250428:0900-20250428:1730", "20250429:0900-20250429:1730", "20250430:0900-20250430:1730",
        "20250501:CLOSED", "20250502:0900-20250502:1730", "20250503:CLOSED", "20250504:CLOSED"), None,
        id="xetra-labour-day"),
    pytest.param(TOYOTA, date(2025, 3, 17), days(  # Tokyo time: morning and afternoon sessions, lunch 11:30-12:30
        "20250317:0900-20250317:1130", "20250317:1230-20250317:1530",
        "20250318:0900-20250318:1130", "20250318:1230-20250318:1530",
        "20250319:0900-20250319:1130", "20250319:1230-20250319:1530", "20250320:CLOSED",  # Vernal Equinox Day
        "20250321:0900-20250321:1130", "20250321:1230-20250321:1530", "20250322:CLOSED", "20250323:CLOSED"), None,
        id="tokyo-lunch-and-equinox"),
    pytest.param(Stock("SHOP", "TSE", "CAD"), date(2025, 6, 30), days(
        "20250630:0930-20250630:1600", "20250701:CLOSED", "20250702:0930-20250702:1600",  # Canada Day
        "20250703:0930-20250703:1600", "20250704:0930-20250704:1600", "20250705:CLOSED", "20250706:CLOSED"), None,
        id="toronto-canada-day"),
    pytest.param(Index("SPX", "CBOE"), date(2025, 7, 1), days(  # NYSE's hours, in Chicago time
        "20250701:0300-20250701:1900", "20250702:0300-20250702:1900", "20250703:0300-20250703:1600",
        "20250704:CLOSED", "20250705:CLOSED", "20250706:CLOSED", "20250707:0300-20250707:1900"), days(
        "20250701:0830-20250701:1500", "20250702:0830-20250702:1500", "20250703:0830-20250703:1200",
        "20250704:CLOSED", "20250705:CLOSED", "20250706:CLOSED", "20250707:0830-20250707:1500"),
        id="us-index-half-day-and-4th-of-july"),
    pytest.param(ES, date(2025, 1, 17), days(  # Chicago time; MLK Day (01-20) trades until a 12:00 halt
        "20250116:1700-20250117:1600", "20250118:CLOSED", "20250119:1700-20250120:1200",
        "20250120:1700-20250121:1600", "20250121:1700-20250122:1600", "20250122:1700-20250123:1600"), days(
        "20250117:0830-20250117:1500", "20250118:CLOSED", "20250119:CLOSED", "20250120:0830-20250120:1200",
        "20250121:0830-20250121:1500", "20250122:0830-20250122:1500", "20250123:0830-20250123:1500"),
        id="globex-mlk-early-halt"),
    pytest.param(ES, date(2025, 4, 16), days(
        "20250415:1700-20250416:1600", "20250416:1700-20250417:1600", "20250418:CLOSED", "20250419:CLOSED",
        "20250420:1700-20250421:1600", "20250421:1700-20250422:1600"), days(
        "20250416:0830-20250416:1500", "20250417:0830-20250417:1500", "20250418:CLOSED", "20250419:CLOSED",
        "20250420:CLOSED", "20250421:0830-20250421:1500", "20250422:0830-20250422:1500"),
        id="globex-good-friday"),
    pytest.param(Forex("EURUSD"), date(2024, 12, 23), days(  # New York time: 24/5, no holiday
        "20241222:1700-20241223:1700", "20241223:1700-20241224:1700", "20241224:1700-20241225:1700",
        "20241225:1700-20241226:1700", "20241226:1700-20241227:1700", "20241228:CLOSED"), None,
        id="fx-24-5-through-christmas"),
])
def test_hours_come_from_the_listings_calendar(ib: IB, contract: Contract, day: date, trading: str,
                                               liquid: str | None) -> None:
    """A day that is no trade date is CLOSED unless a session opens on it (Globex and FX on Sunday evening)."""
    assert hours_on(ib, contract, day) == (trading, liquid or trading)


def ranges(text: str) -> list[tuple[datetime, datetime]]:
    """The open ranges of an hours text (CLOSED days left out), as local times."""
    parsed = []
    for part in text.split(";"):
        if not part.endswith("CLOSED"):
            start, end = part.split("-")
            parsed.append((datetime.strptime(start, "%Y%m%d:%H%M"), datetime.strptime(end, "%Y%m%d:%H%M")))
    return parsed


@pytest.mark.parametrize("contract", [ES, CL], ids=["ES@CME", "CL@NYMEX"])
def test_globex_futures_pause_an_hour_between_sessions(ib: IB, contract: Contract) -> None:
    trading, liquid = hours_on(ib, contract, date(2025, 3, 4))
    assert trading == days("20250303:1700-20250304:1600", "20250304:1700-20250305:1600",
                           "20250305:1700-20250306:1600", "20250306:1700-20250307:1600", "20250308:CLOSED",
                           "20250309:1700-20250310:1600")  # Sunday 17:00 opens Monday's session
    sessions = ranges(trading)
    assert all(close - open_ == timedelta(hours=23) for open_, close in sessions)
    pauses = [later[0] - earlier[1] for earlier, later in itertools.pairwise(sessions)]
    hour = timedelta(hours=1)
    assert pauses == [hour, hour, hour, timedelta(days=2) + hour]  # the 16:00-17:00 maintenance hour; the weekend
    assert liquid.startswith("20250304:0830-20250304:1500;20250305:0830-20250305:1500;")


def test_tokyos_lunch_splits_each_day_in_two(ib: IB) -> None:
    trading, liquid = hours_on(ib, TOYOTA, date(2025, 3, 3))
    assert trading == liquid
    for day in ("20250303", "20250304", "20250305", "20250306", "20250307"):
        assert f"{day}:0900-{day}:1130;{day}:1230-{day}:1530" in trading
    assert len(ranges(trading)) == 10
