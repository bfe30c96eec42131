"""The simulator's instruments beyond US stocks, through the real ib_async client: a German and a Japanese stock,
CME equity index futures (quarterly) and NYMEX crude oil futures (monthly), dated, expired and continuous, IDEALPRO
currency pairs, CBOE indices and a symbol listed on two exchanges; each with IB's contract fields and the data IB
serves for its class."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from ib_async import IB, ContFuture, Contract, Forex, Future, Index, RequestError, Stock

from tests.helpers_instruments import NOW, client_at_now, listed

TODAY = f"{NOW:%Y%m%d}"


@pytest.fixture(scope="module")
def ib() -> Iterator[IB]:
    with client_at_now(61) as client:
        yield client


def refusal(ib: IB, request: object) -> RequestError:
    with pytest.raises(RequestError) as info:
        ib.run(request)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(("contract", "local_symbol", "primary", "currency", "multiplier", "zone", "tick"), [
    (Stock("SAP", "IBIS", "EUR"), "SAP", "IBIS", "EUR", "", "MET", 0.01),
    (Stock("SAP", "SMART", "EUR"), "SAP", "IBIS", "EUR", "", "MET", 0.01),
    (Stock("7203", "TSEJ", "JPY"), "7203", "TSEJ", "JPY", "", "Japan", 0.5),
    (Future("ES", "202503", "CME"), "ESH5", "CME", "USD", "50", "US/Central", 0.25),
    (Future("NQ", "20250620", "CME"), "NQM5", "CME", "USD", "20", "US/Central", 0.25),
    (Future(localSymbol="ESZ5", exchange="CME"), "ESZ5", "CME", "USD", "50", "US/Central", 0.25),
    (Future("CL", "202503", "NYMEX"), "CLH5", "NYMEX", "USD", "1000", "US/Central", 0.01),
    (Future("CL", "20250220", "NYMEX"), "CLH5", "NYMEX", "USD", "1000", "US/Central", 0.01),
    (Forex("EURUSD"), "EUR.USD", "IDEALPRO", "USD", "", "US/Eastern", 0.00005),
    (Forex("USDJPY"), "USD.JPY", "IDEALPRO", "JPY", "", "US/Eastern", 0.005),
    (Index("SPX", "CBOE"), "SPX", "CBOE", "USD", "", "US/Central", 0.01),
    (Index("VIX", "CBOE"), "VIX", "CBOE", "USD", "", "US/Central", 0.01),
    (Stock("SHOP", "SMART", "CAD"), "SHOP", "TSE", "CAD", "", "America/Toronto", 0.01),
], ids=lambda value: value if isinstance(value, str) else None)
def test_every_listing_resolves_to_its_contract(ib: IB, contract: Contract, local_symbol: str, primary: str,
                                                currency: str, multiplier: str, zone: str, tick: float) -> None:
    [details] = ib.reqContractDetails(contract)
    got = details.contract
    assert got.conId == listed(local_symbol, primary)
    assert (got.localSymbol, got.primaryExchange, got.currency, got.multiplier) == (local_symbol, primary, currency,
                                                                                   multiplier)
    assert (details.timeZoneId, details.minTick) == (zone, tick)
    for hours in (details.tradingHours, details.liquidHours):  # a week from today's session (Globex, FX: from the
        assert f"-{TODAY}:" in hours.split(";")[0]             # evening before)


def test_hours_follow_each_market_in_tws_format(ib: IB) -> None:
    def hours(contract: Contract) -> tuple[str, str]:
        [details] = ib.reqContractDetails(contract)
        return details.tradingHours, details.liquidHours

    assert hours(Stock("SAP", "IBIS", "EUR"))[1].startswith("20250110:0900-20250110:1730;20250111:CLOSED;")
    assert hours(Stock("7203", "TSEJ", "JPY"))[0].startswith("20250110:0900-20250110:1130;20250110:1230-20250110:1530")
    es_trading, es_liquid = hours(Future("ES", "202503", "CME"))
    assert "20250112:1700-20250113:1600" in es_trading  # Globex opens Sunday evening for Monday
    assert es_liquid.startswith("20250110:0830-20250110:1500")
    assert "20250111:CLOSED;20250112:1700-20250113:1700" in hours(Forex("EURUSD"))[0]  # the FX_24_5 calendar


def test_a_future_lists_its_expiry_month_and_underlying(ib: IB) -> None:
    [details] = ib.reqContractDetails(Future("ES", "202503", "CME"))
    assert details.contract.lastTradeDateOrContractMonth == "20250321"  # the third Friday of March
    assert (details.contractMonth, details.realExpirationDate, details.contract.tradingClass) == (
        "202503", "20250321", "ES")
    assert (details.underSymbol, details.underSecType) == ("ES", "IND")


def test_expired_futures_are_found_only_with_include_expired(ib: IB) -> None:
    assert refusal(ib, ib.reqContractDetailsAsync(Future("ES", "202412", "CME"))).code == 200
    [expired] = ib.reqContractDetails(Future("ES", "202412", "CME", includeExpired=True))
    assert expired.contract.localSymbol == "ESZ4"
    live = ib.reqContractDetails(Future("ES", exchange="CME"))
    every = ib.reqContractDetails(Future("ES", exchange="CME", includeExpired=True))
    assert all(d.contract.lastTradeDateOrContractMonth >= TODAY for d in live)
    old = {d.contract.localSymbol for d in every} - {d.contract.localSymbol for d in live}
    assert {"ESH3", "ESZ4"} <= old and len(old) >= 4
    assert "ESH5" in {d.contract.localSymbol for d in live}


def test_a_crude_oil_contract_expires_in_the_month_before_its_contract_month(ib: IB) -> None:
    [march] = ib.reqContractDetails(Future("CL", "202503", "NYMEX"))
    # 3 business days before 2025-02-25 (a Tuesday): the 24th, 21st, 20th
    assert (march.contract.localSymbol, march.contractMonth, march.contract.lastTradeDateOrContractMonth,
            march.realExpirationDate) == ("CLH5", "202503", "20250220", "20250220")
    assert (march.contract.multiplier, march.contract.tradingClass, march.underSymbol) == ("1000", "CL", "CL")
    assert refusal(ib, ib.reqContractDetailsAsync(Future("CL", "202501", "NYMEX"))).code == 200
    # the 25th of December is no business day: 3 business days before the 24th
    [january] = ib.reqContractDetails(Future("CL", "202501", "NYMEX", includeExpired=True))
    assert (january.contract.localSymbol, january.contract.lastTradeDateOrContractMonth) == ("CLF5", "20241219")
    live = ib.reqContractDetails(Future("CL", exchange="NYMEX"))
    every = ib.reqContractDetails(Future("CL", exchange="NYMEX", includeExpired=True))
    assert len(every) == 60 and len({d.contract.conId for d in every}) == 60  # monthly, 2023-2027
    expired = {d.contract.localSymbol for d in every} - {d.contract.localSymbol for d in live}
    assert {"CLF3", "CLZ4", "CLF5"} <= expired and len(expired) == 25  # CLF3 .. CLF5
    assert not {d.contract.conId for d in every} & {listed(f"ES{m}5", "CME") for m in "HMUZ"}


def test_the_crude_oil_continuous_future_is_its_front_month(ib: IB) -> None:
    [details] = ib.reqContractDetails(ContFuture("CL", "NYMEX"))
    assert (details.contract.secType, details.contract.localSymbol) == ("CONTFUT", "CLG5")  # trades to 2025-01-21
    assert details.contract.conId == listed("CLG5", "NYMEX") and details.contract.multiplier == "1000"
    bars = ib.reqHistoricalData(ContFuture("CL", "NYMEX"), "", "5 D", "1 hour", "TRADES", False)
    assert bars and all(40 < b.low <= b.high < 120 for b in bars)


def test_the_continuous_future_is_the_front_contract(ib: IB) -> None:
    [details] = ib.reqContractDetails(ContFuture("ES", "CME"))
    assert details.contract.secType == "CONTFUT"
    assert (details.contract.conId, details.contract.localSymbol) == (listed("ESH5", "CME"), "ESH5")
    bars = ib.reqHistoricalData(ContFuture("ES", "CME"), "", "2 D", "1 hour", "TRADES", True)
    assert bars and all(4000 < b.close < 6500 for b in bars)


def test_a_currency_pair_serves_quotes_and_refuses_trades_as_ib_does(ib: IB) -> None:
    for what in ("MIDPOINT", "BID", "ASK", "BID_ASK"):
        bars = ib.reqHistoricalData(Forex("EURUSD"), "", "2 D", "1 hour", what, True)
        assert bars, what
        assert all(b.volume == -1 and b.barCount == -1 for b in bars)
        assert all(0.9 < b.low <= b.high < 1.3 for b in bars)
    mid = ib.reqHistoricalData(Forex("EURUSD"), "", "2 D", "1 hour", "MIDPOINT", True)
    assert any(round(b.close, 3) != b.close for b in mid)  # quoted in fractions of a pip, not cents
    jpy = ib.reqHistoricalData(Forex("USDJPY"), "", "2 D", "1 hour", "MIDPOINT", True)
    assert all(120 < b.close < 180 for b in jpy)
    error = refusal(ib, ib.reqHistoricalDataAsync(Forex("EURUSD"), "", "2 D", "1 hour", "TRADES", True))
    assert (error.code, error.message) == (
        162, "Historical Market Data Service error message:No historical market data for EUR/CASH@FXSUBPIP Last 3600")
    daily = refusal(ib, ib.reqHistoricalDataAsync(Forex("USDJPY"), "", "1 M", "1 day", "TRADES", True))
    assert daily.message.endswith("USD/CASH@FXSUBPIP Last 1d")
    assert refusal(ib, ib.reqHeadTimeStampAsync(Forex("EURUSD"), "TRADES", True, 1)).code == 162


@pytest.mark.parametrize(("index", "low", "high"), [("SPX", 3500, 6500), ("VIX", 8, 25)])
def test_an_index_serves_trades_without_volume(ib: IB, index: str, low: float, high: float) -> None:
    bars = ib.reqHistoricalData(Index(index, "CBOE"), "", "5 D", "1 day", "TRADES", True)
    assert len(bars) == 5
    assert all(b.volume == 0 and b.barCount == 0 for b in bars)
    assert all(low < b.close < high for b in bars)


@pytest.mark.parametrize(("contract", "low", "high", "tick"), [
    (Future("ES", "202503", "CME"), 4000, 6500, 0.25),
    (Future("NQ", "202503", "CME"), 13000, 22000, 0.25),
    (Future("CL", "202503", "NYMEX"), 40, 120, 0.01),
    (Stock("SAP", "IBIS", "EUR"), 130, 240, 0.01),
    (Stock("7203", "TSEJ", "JPY"), 2000, 3600, 0.5),
])
def test_bars_come_at_the_listing_level_on_its_tick(ib: IB, contract: Contract, low: float, high: float,
                                                     tick: float) -> None:
    bars = ib.reqHistoricalData(contract, "", "3 D", "30 mins", "TRADES", True)
    assert bars and all(b.volume > 0 for b in bars)
    prices = [p for b in bars for p in (b.open, b.high, b.low, b.close)]
    assert all(low < p < high for p in prices)
    assert all(abs(p / tick - round(p / tick)) < 1e-6 for p in prices)


def test_an_expired_future_has_bars_up_to_its_expiry_with_include_expired(ib: IB) -> None:
    end = "20240329 12:00:00 UTC"
    assert refusal(ib, ib.reqHistoricalDataAsync(Future("ES", "202403", "CME"), end, "1 M", "1 day", "TRADES",
                                                 True)).code == 200
    bars = ib.reqHistoricalData(Future("ES", "202403", "CME", includeExpired=True), end, "1 M", "1 day", "TRADES",
                                True)
    assert bars and bars[-1].date == date(2024, 3, 15)  # ESH4's last trading day; nothing after it
    december = Future("CL", "202501", "NYMEX", includeExpired=True)  # CLF5: trades until 14:30 New York, 12-19
    hourly = ib.reqHistoricalData(december, "20241221 12:00:00 UTC", "3 D", "1 hour", "TRADES", False, formatDate=2)
    assert hourly[-1].date == datetime(2024, 12, 19, 19, tzinfo=UTC)  # the 14:00-14:30 New York bar


def test_head_timestamps_are_per_contract(ib: IB) -> None:
    heads = {month: ib.reqHeadTimeStamp(Future("ES", month, "CME", includeExpired=True), "TRADES", True, 2)
             for month in ("202403", "202503", "202506")}
    assert len(set(heads.values())) == 3
    assert heads["202403"] < heads["202503"] < heads["202506"]
    assert heads["202503"] < datetime(2025, 3, 21, tzinfo=UTC)
    sap = ib.reqHeadTimeStamp(Stock("SAP", "IBIS", "EUR"), "TRADES", True, 2)
    assert sap not in heads.values()
    crude = [ib.reqHeadTimeStamp(Future("CL", month, "NYMEX", includeExpired=True), "TRADES", True, 2)
             for month in ("202412", "202501", "202502", "202503")]
    assert crude == sorted(crude) and len(set(crude)) == 4 and crude[-1] < datetime(2025, 2, 20, tzinfo=UTC)


def test_a_symbol_listed_on_two_exchanges_is_ambiguous_as_with_tws(ib: IB) -> None:
    both = ib.reqContractDetails(Stock("SHOP", "SMART"))
    assert {(d.contract.primaryExchange, d.contract.currency) for d in both} == {("NYSE", "USD"), ("TSE", "CAD")}
    assert len({d.contract.conId for d in both}) == 2
    error = refusal(ib, ib.reqHistoricalDataAsync(Stock("SHOP", "SMART"), "", "1 D", "1 hour", "TRADES", True))
    assert (error.code, error.message) == (200, "The contract description specified for SHOP is ambiguous.")
    assert ib.reqHistoricalData(Stock("SHOP", "SMART", "USD"), "", "1 D", "1 hour", "TRADES", True)
