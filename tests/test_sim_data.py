"""The simulator's data as real TWS serves it: contracts matched on every field, bars on IB's clock grid, IB's
duration limits, session hours and head timestamps from the calendar, real price levels, ADJUSTED_LAST and
keepUpToDate rules. Requests go through the real ib_async client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from ib_async import IB, BarDataList, Contract, Future, RequestError, Stock

from ibkr_flows.ib.historical import (
    LIVE_UPDATES_END_CAUSE,
    MAX_DURATION,
    duration_exceeds_max,
    oldest_available,
    request_conflict,
)
from ibkr_flows.ib.sessions import bar_start, session_hours_text
from ibkr_flows.sim.bars import SyntheticBars, load_price_anchors, round_price
from ibkr_flows.sim.embedded import EmbeddedSimulator

NOW = datetime(2024, 7, 1, 22, 0, tzinfo=UTC)  # Monday evening; Wednesday a half day, Thursday July 4th
AAPL = Stock("AAPL", "SMART", "USD")
SOURCE = SyntheticBars()


def _client(sim: EmbeddedSimulator, client_id: int) -> IB:
    client = IB()
    client.RaiseRequestErrors = True
    client.connect(sim.host, sim.port, clientId=client_id, readonly=True, timeout=5)
    return client


@pytest.fixture
def tws() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def ib(tws: EmbeddedSimulator) -> Iterator[IB]:
    client = _client(tws, 51)
    yield client
    client.disconnect()


def _refusal(ib: IB, request: Callable[[], object]) -> RequestError:
    """The RequestError a request ends with; it carries the request's own id and TWS's code and text."""
    with pytest.raises(RequestError) as info:
        ib.run(request())  # type: ignore[arg-type]
    return info.value


def _warning_321(ib: IB, request: Callable[[], object]) -> str:
    """The text of the 321 a request gets. ib_async treats 321 as a warning and lets the request run into its
    timeout (as against a real TWS), so the request is given a short one and the error is read from errorEvent."""
    seen: list[tuple[int, str]] = []
    handler = lambda _req_id, code, text, _contract: seen.append((code, text))  # noqa: E731
    ib.errorEvent += handler
    try:
        assert not ib.run(request())  # type: ignore[arg-type]
    finally:
        ib.errorEvent -= handler
    codes = [code for code, _ in seen]
    assert codes == [321], seen
    return seen[0][1]


# -- contracts ---------------------------------------------------------------------------------------------------


WRONG_CONTRACTS = [
    pytest.param(Future("AAPL", exchange="CME"), id="future-on-cme"),
    pytest.param(Stock("AAPL", "IBIS", "EUR"), id="xetra-in-eur"),
    pytest.param(Contract(secType="CASH", symbol="MSFT", exchange="IDEALPRO", currency="USD"), id="cash-msft"),
    pytest.param(Stock("AAPL", "SMART", "USD", primaryExchange="NYSE"), id="wrong-primary"),
    pytest.param(Contract(conId=265598, secType="STK", exchange="SMART", currency="EUR"), id="conid-wrong-currency"),
    pytest.param(Stock("AAPL", "SMART", "USD", tradingClass="XYZ"), id="wrong-trading-class"),
    pytest.param(Contract(secType="STK", symbol="AAPL", exchange="SMART", currency="USD",
                          lastTradeDateOrContractMonth="202412"), id="stock-with-expiry"),
    pytest.param(Stock("MSFT", "SMART", "USD", conId=265598), id="conid-of-another-symbol"),
]


@pytest.mark.parametrize("contract", WRONG_CONTRACTS)
def test_a_contract_that_does_not_exist_gets_200_for_its_request(ib: IB, contract: Contract) -> None:
    errors: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, _text, _contract: errors.append((req_id, code))
    requests = [
        lambda: ib.reqContractDetailsAsync(contract),
        lambda: ib.reqHistoricalDataAsync(contract, "", "1 D", "1 hour", "TRADES", True, formatDate=2),
        lambda: ib.reqHeadTimeStampAsync(contract, "TRADES", True, 2),
    ]
    for request in requests:
        error = _refusal(ib, request)
        assert error.code == 200 and "No security definition" in error.message
        assert errors[-1] == (error.reqId, 200)
    assert len({req_id for req_id, _ in errors}) == 3


@pytest.mark.parametrize("contract", [
    pytest.param(Stock("AAPL", "SMART", "USD"), id="smart"),
    pytest.param(Stock("AAPL", "ISLAND", "USD"), id="directed-venue"),
    pytest.param(Stock("AAPL", "SMART", "USD", primaryExchange="NASDAQ"), id="with-primary"),
    pytest.param(Contract(conId=265598), id="conid-only"),
    pytest.param(Contract(conId=265598, exchange="SMART"), id="conid-and-exchange"),
    pytest.param(Stock("AAPL", "SMART", "USD", tradingClass="NMS", localSymbol="AAPL"), id="every-field-right"),
])
def test_contracts_that_exist_still_resolve(ib: IB, contract: Contract) -> None:
    details = ib.reqContractDetails(contract)
    assert [d.contract.conId for d in details] == [265598]
    assert details[0].contract.exchange == (contract.exchange or "SMART")
    assert ib.reqHistoricalData(contract, "", "1 D", "1 hour", "TRADES", True, formatDate=2)


def test_contract_details_carry_the_weeks_sessions_from_the_calendar(ib: IB) -> None:
    details = ib.reqContractDetails(AAPL)[0]
    assert details.timeZoneId == "US/Eastern"
    assert details.liquidHours == (
        "20240701:0930-20240701:1600;20240702:0930-20240702:1600;20240703:0930-20240703:1300;20240704:CLOSED;"
        "20240705:0930-20240705:1600;20240706:CLOSED;20240707:CLOSED")
    assert details.tradingHours.startswith("20240701:0400-20240701:2000;20240702:0400-20240702:2000;"
                                           "20240703:0400-20240703:1700;20240704:CLOSED;")
    assert "ISLAND" in details.validExchanges.split(",") and "IBIS" not in details.validExchanges.split(",")


def test_session_hours_follow_dst_and_holidays() -> None:
    assert session_hours_text(date(2024, 3, 8), 4, use_rth=True) == (
        "20240308:0930-20240308:1600;20240309:CLOSED;20240310:CLOSED;20240311:0930-20240311:1600")
    assert session_hours_text(date(2024, 11, 29), 1, use_rth=False) == "20241129:0400-20241129:1700"


# -- head timestamps ---------------------------------------------------------------------------------------------


def test_head_timestamps_are_each_symbols_first_trading_day(ib: IB) -> None:
    expected = {"AAPL": date(1980, 12, 12), "MSFT": date(1986, 3, 13), "SPY": date(1993, 1, 29),
                "QQQ": date(1999, 3, 10), "IBM": date(1962, 1, 2), "NVDA": date(1999, 1, 22)}
    for symbol, first_day in expected.items():  # formatDate 1 (UTC text): IBM's 1962 is a negative epoch
        head = ib.reqHeadTimeStamp(Stock(symbol, "SMART", "USD"), "TRADES", True, 1)
        assert head == datetime.combine(first_day, datetime.min.time()) + timedelta(hours=14, minutes=30)


def test_no_bar_is_served_before_the_head_timestamp(ib: IB) -> None:
    ibm = Stock("IBM", "SMART", "USD")
    bars = ib.reqHistoricalData(ibm, "19620131 16:00:00 US/Eastern", "1 Y", "1 day", "TRADES", True)
    assert bars[0].date == date(1962, 1, 2) and len(bars) == 22  # January 1962: 22 sessions
    error = _refusal(ib, lambda: ib.reqHistoricalDataAsync(ibm, "19611229 16:00:00 US/Eastern", "1 M", "1 day",
                                                           "TRADES", True))
    assert error.code == 162 and "HMDS query returned no data" in error.message
    minutes = SOURCE.bars("NVDA", "1 min", "TRADES", False, datetime(1999, 1, 21, tzinfo=UTC),
                          datetime(1999, 1, 23, tzinfo=UTC))
    assert minutes["ts"].min() == SOURCE.head_timestamp("NVDA", "TRADES", False)


# -- alignment ---------------------------------------------------------------------------------------------------


def _hhmm(bars: BarDataList) -> list[str]:
    return [b.date.astimezone(UTC).strftime("%H:%M") for b in bars]


def test_intraday_bars_sit_on_the_clock_grid(ib: IB) -> None:
    """IB stamps 1-hour RTH bars 09:30 (the half hour to 10:00), 10:00, 11:00, ...; 30-minute bars every half
    hour from the open; extended hours start at 04:00 on the same grid."""
    hours = ib.reqHistoricalData(AAPL, "20240628-21:00:00", "1 D", "1 hour", "TRADES", True, formatDate=2)
    assert _hhmm(hours) == ["13:30", "14:00", "15:00", "16:00", "17:00", "18:00", "19:00"]  # EDT: 09:30, 10:00..
    halves = ib.reqHistoricalData(AAPL, "20240628-21:00:00", "1 D", "30 mins", "TRADES", True, formatDate=2)
    assert len(halves) == 13 and _hhmm(halves)[:3] == ["13:30", "14:00", "14:30"]
    eth = ib.reqHistoricalData(AAPL, "20240629-01:00:00", "1 D", "4 hours", "TRADES", False, formatDate=2)
    assert _hhmm(eth) == ["08:00", "12:00", "16:00", "20:00"]  # 04:00, 08:00, 12:00, 16:00 New York
    two_hours = ib.reqHistoricalData(AAPL, "20240628-21:00:00", "1 D", "2 hours", "TRADES", True, formatDate=2)
    assert _hhmm(two_hours) == ["13:30", "14:00", "16:00", "18:00"]  # 09:30, 10:00, 12:00, 14:00


def test_grid_bars_aggregate_their_minutes() -> None:
    start, end = datetime(2024, 6, 28, 13, 30, tzinfo=UTC), datetime(2024, 6, 28, 20, tzinfo=UTC)
    minutes = SOURCE.bars("MSFT", "1 min", "TRADES", True, start, end)
    hours = SOURCE.bars("MSFT", "1 hour", "TRADES", True, start, end)
    step = timedelta(hours=1)
    expected = minutes.group_by(
        pl.col("ts").map_elements(lambda t: bar_start(t, step, True), return_dtype=pl.Datetime("us", "UTC")),
        maintain_order=True,
    ).agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
          pl.col("volume").sum())
    assert hours.select(expected.columns).equals(expected)


def test_dated_bars_are_stamped_with_their_first_session(ib: IB) -> None:
    days = ib.reqHistoricalData(AAPL, "", "1 M", "1 day", "TRADES", True)
    assert all(isinstance(b.date, date) for b in days) and days[-1].date == date(2024, 7, 1)
    weeks = ib.reqHistoricalData(AAPL, "", "3 M", "1 week", "TRADES", True)
    week_dates = [b.date for b in weeks]
    assert date(2024, 5, 28) in week_dates  # Memorial Day Monday: the week starts on Tuesday
    assert date(2024, 6, 17) in week_dates and date(2024, 6, 24) in week_dates and week_dates[-1] == date(2024, 7, 1)
    months = ib.reqHistoricalData(AAPL, "", "1 Y", "1 month", "TRADES", True)
    month_dates = [b.date for b in months]
    assert date(2024, 1, 2) in month_dates and date(2024, 4, 1) in month_dates  # New Year's Day: the 2nd
    assert month_dates[-1] == date(2024, 7, 1)
    # a month's bar is its sessions' bar: open of the first, close of the last, the extremes between
    may = SOURCE.bars("AAPL", "1 day", "TRADES", True, datetime(2024, 5, 1, tzinfo=UTC),
                      datetime(2024, 6, 1, tzinfo=UTC))
    bar = next(b for b in months if b.date == date(2024, 5, 1))
    assert (bar.open, bar.close) == (may["open"][0], may["close"][-1])
    assert (bar.high, bar.low) == (may["high"].max(), may["low"].min())


# -- limits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bar_size", "duration"), [
    ("1 min", "1 Y"), ("1 min", "2 D"), ("1 secs", "3600 S"), ("5 mins", "2 W"), ("1 hour", "2 M"),
    ("1 day", "400 D"), ("30 secs", "86400 S"),
])
def test_durations_beyond_the_bar_sizes_limit_get_162(ib: IB, bar_size: str, duration: str) -> None:
    error = _refusal(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "", duration, bar_size, "TRADES", True))
    assert error.code == 162 and error.message == "Historical Market Data Service error message:Time length exceed max."


@pytest.mark.parametrize(("bar_size", "duration", "count"), [
    ("1 min", "1 D", 390), ("1 min", "23400 S", 390), ("5 mins", "1 W", 78 * 5), ("1 hour", "30 D", 7 * 30),
    ("1 day", "10 Y", None), ("1 secs", "1800 S", 1800),
])
def test_durations_within_the_limit_are_served(ib: IB, bar_size: str, duration: str, count: int | None) -> None:
    bars = ib.reqHistoricalData(AAPL, "20240628-20:00:00", duration, bar_size, "TRADES", True, formatDate=2)
    assert len(bars) == count if count is not None else len(bars) > 2400


def test_the_limit_table_is_ibs() -> None:
    assert MAX_DURATION["1 secs"] == "1800 S" and MAX_DURATION["30 secs"] == "28800 S"
    assert MAX_DURATION["1 min"] == "1 D" and MAX_DURATION["2 mins"] == "2 D" and MAX_DURATION["20 mins"] == "1 W"
    assert MAX_DURATION["30 mins"] == MAX_DURATION["8 hours"] == "1 M" and MAX_DURATION["1 day"] == "68 Y"
    assert not duration_exceeds_max("4 W", "1 hour") and duration_exceeds_max("53 W", "1 day")


def test_small_bars_go_back_six_months(ib: IB) -> None:
    assert oldest_available("30 secs", NOW) == datetime(2024, 1, 1, 22, 0, tzinfo=UTC)
    assert oldest_available("1 min", NOW) is None
    error = _refusal(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "20231229-20:00:00", "1800 S", "1 secs", "TRADES",
                                                           True))
    assert error.code == 162 and "HMDS query returned no data" in error.message
    assert len(ib.reqHistoricalData(AAPL, "20240102-20:00:00", "1800 S", "1 secs", "TRADES", True)) == 1800
    assert len(ib.reqHistoricalData(AAPL, "20231229-20:00:00", "1800 S", "1 min", "TRADES", True)) == 30


# -- price levels --------------------------------------------------------------------------------------------------


def test_month_end_closes_are_the_real_ones() -> None:
    """Each daily path passes through the shipped month-end closes (the last session of the month, RTH close, on
    IB's price grid): checked over 2020-2021 and the last anchored month."""
    for symbol, anchor in load_price_anchors().items():
        checked = [(m, c) for m, c in anchor.month_end_closes if m.year in (2020, 2021)] + [anchor.month_end_closes[-1]]
        for first, last in ((checked[0][0], checked[-2][0]), (checked[-1][0], checked[-1][0])):
            days = SOURCE.bars(symbol, "1 day", "TRADES", True, datetime.combine(first, datetime.min.time(), UTC),
                               datetime.combine(last + timedelta(days=31), datetime.min.time(), UTC))
            month_ends = days.group_by(pl.col("ts").dt.strftime("%Y-%m").alias("month"), maintain_order=True).agg(
                pl.col("close").last())
            served = dict(month_ends.iter_rows())
            for month, close in checked:
                if first <= month <= last:
                    assert served[f"{month:%Y-%m}"] == round_price(np.array(close)), (symbol, month)


def test_prices_are_plausible_between_anchors() -> None:
    """SPY through 2023 stays within its real range (about 370-480), not a random level."""
    days = SOURCE.bars("SPY", "1 day", "TRADES", True, datetime(2023, 1, 1, tzinfo=UTC),
                       datetime(2024, 1, 1, tzinfo=UTC))
    assert days.height == 250
    assert days["low"].min() > 330 and days["high"].max() < 530
    again = SyntheticBars().bars("SPY", "1 day", "TRADES", True, datetime(2023, 1, 1, tzinfo=UTC),
                                 datetime(2024, 1, 1, tzinfo=UTC))
    assert again.equals(days)  # deterministic: the same request, the same bars


def test_sub_dollar_history_keeps_four_decimals() -> None:
    minutes = SOURCE.bars("NVDA", "1 min", "TRADES", True, datetime(2015, 3, 2, tzinfo=UTC),
                          datetime(2015, 3, 3, tzinfo=UTC))
    assert minutes.height == 390 and 0.3 < minutes["close"].mean() < 0.9  # split-adjusted NVDA in 2015
    assert (minutes["close"] * 10_000).round(6).equals((minutes["close"] * 10_000).round(0))
    assert (minutes["low"] > 0).all()


# -- ADJUSTED_LAST and keepUpToDate ----------------------------------------------------------------------------------


def test_request_rules_are_data() -> None:
    assert request_conflict("ADJUSTED_LAST", "20240628-20:00:00", False) == "End date not supported with adjusted last"
    assert request_conflict("ADJUSTED_LAST", "", False) is None
    assert request_conflict("TRADES", "20240628-20:00:00", True) == LIVE_UPDATES_END_CAUSE
    assert request_conflict("BID_ASK", "", True) is not None
    assert request_conflict("TRADES", "", True) is None


def test_adjusted_last_is_served_up_to_now_only(ib: IB) -> None:
    bars = ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "ADJUSTED_LAST", True, formatDate=2)
    assert len(bars) == 390 and bars[-1].date == datetime(2024, 7, 1, 19, 59, tzinfo=UTC)
    text = _warning_321(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "20240628-20:00:00", "1 D", "1 min",
                                                              "ADJUSTED_LAST", True, timeout=1))
    assert text.endswith("End date not supported with adjusted last")
    error = _refusal(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "", "2 D", "1 min", "ADJUSTED_LAST", True))
    assert error.code == 162 and "Time length exceed max" in error.message


def test_keep_up_to_date_refuses_an_end_date_and_quote_pairs(ib: IB) -> None:
    text = _warning_321(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "20240628-20:00:00", "1800 S", "1 min",
                                                              "TRADES", True, keepUpToDate=True, timeout=1))
    assert text.endswith(LIVE_UPDATES_END_CAUSE)
    text = _warning_321(ib, lambda: ib.reqHistoricalDataAsync(AAPL, "", "1 D", "1 min", "BID_ASK", True,
                                                              keepUpToDate=True, timeout=1))
    assert "BID_ASK" in text


def test_keep_up_to_date_streams_the_current_bar_until_cancelled() -> None:
    """A clock running 600x (10 simulated minutes per second) and updates every 0.1 s: each update brings a new
    minute bar; after cancelHistoricalData none arrives."""
    opening, started = datetime(2024, 3, 8, 15, 0, tzinfo=UTC), time.monotonic()
    with EmbeddedSimulator(clock=lambda: opening + (time.monotonic() - started) * timedelta(minutes=10)) as tws:
        tws.update_faults(time_scale=0.02)  # LIVE_UPDATE_SECONDS (5 s) x 0.02
        ib = _client(tws, 52)
        try:
            bars = ib.reqHistoricalData(Stock("SPY", "SMART", "USD"), "", "1800 S", "1 min", "TRADES", True,
                                        formatDate=2, keepUpToDate=True)
            first_count = len(bars)
            assert first_count >= 30
            updates: list[bool] = []
            bars.updateEvent += lambda _bars, has_new_bar: updates.append(has_new_bar)
            deadline = time.monotonic() + 2
            while sum(updates) < 3 and time.monotonic() < deadline:
                ib.sleep(0.02)
            assert sum(updates) >= 3 and len(bars) > first_count
            assert all(b.date.second == 0 for b in bars) and bars[-1].date > bars[first_count - 1].date
            ib.cancelHistoricalData(bars)
            ib.sleep(0.1)
            after_cancel = len(bars)
            ib.sleep(0.4)
            assert len(bars) == after_cancel
            assert tws.snapshot()["requests"]["cancelHistoricalData"] == 1
        finally:
            ib.disconnect()
