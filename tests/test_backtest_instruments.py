"""Each instrument class's economics in backtests (issue 15): multipliers and ticks in fills, sizing and PnL, each
class's commission schedule, futures rolls, and the runner reading the terms from a real instruments table.

Every expected number is worked by hand in the comment next to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ibkr_flows.backtest.contract_terms import US_STOCK, ContractTerms
from ibkr_flows.backtest.costs import (
    IBKRExchangeStock,
    IBKRFixed,
    IBKRForex,
    IBKRFutures,
    NoCommission,
    UnknownScheduleError,
    default_commission,
)
from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.report import metric_rows, run_markdown
from ibkr_flows.backtest.request import BacktestRequest
from ibkr_flows.backtest.runner import run_request, store_run
from ibkr_flows.backtest.sizing import AllIn, FixedShares
from storage.bars_table import merge_bars
from storage.instruments_table import upsert_instruments
from storage.location import TableLocation
from storage.results_table import RESULTS_SCHEMA, read_backtest_results
from storage.schema import BAR_COLUMNS, INSTRUMENTS_SCHEMA, LINEAGE_COLUMNS
from storage.tables import write

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
ES = ContractTerms(sec_type="FUT", symbol="ES", exchange="CME", currency="USD", multiplier=50.0, min_tick=0.25)
EURUSD = ContractTerms(sec_type="CASH", symbol="EUR", exchange="IDEALPRO", currency="USD", min_tick=0.00005)
ES_FEE = 0.85 + 1.38 + 0.02  # IBKR Fixed + CME exchange fee + NFA fee, per contract and order


def bars(opens: list[float], **extra: list[int]) -> pl.DataFrame:
    """Daily bars whose closes equal the next opens (the last close its own open)."""
    closes = [*opens[1:], opens[-1]]
    return pl.DataFrame({
        "ts": [START + timedelta(days=i) for i in range(len(opens))], "open": opens,
        "high": [max(o, c) for o, c in zip(opens, closes, strict=True)],
        "low": [min(o, c) for o, c in zip(opens, closes, strict=True)], "close": closes,
        "volume": [100.0] * len(opens), **extra,
    }, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def hold(terms: ContractTerms, cash: float, **options: object) -> BacktestConfig:
    """Buy and hold: long from the second bar's open to the last bar's open."""
    settings: dict = {"commission": NoCommission(), "sizing": FixedShares(1), **options}
    return BacktestConfig("buy_and_hold", cash=cash, terms=terms, **settings)


def test_an_es_contract_from_5000_to_5010_25_makes_512_50_before_costs() -> None:
    result = run_backtest(bars([4990.0, 5000.0, 5004.0, 5010.25]), "1 day", hold(ES, 300_000))
    trade = result.trades.row(0, named=True)
    assert (trade["size"], trade["entry_price"], trade["exit_price"]) == (1, 5000.0, 5010.25)
    assert trade["pnl"] == 512.50  # 10.25 points x 50
    assert trade["return_pct"] == pytest.approx(512.50 / 250_000 * 100)  # over the notional, 5000 x 50
    assert result.metrics.final_equity == 300_512.50
    assert result.equity["equity"].to_list()[1] == 300_000 + 4 * 50  # marked at bar 1's close, 5004, x 50
    assert result.currency == "USD"


def test_futures_fills_land_on_the_tick_grid_against_the_trader() -> None:
    result = run_backtest(bars([4990.0, 5000.25, 5004.0, 5010.25]), "1 day", hold(ES, 300_000, slippage_bps=1))
    trade = result.trades.row(0, named=True)
    assert trade["entry_price"] == 5001.00  # 5000.25 x 1.0001 = 5000.750025: a buy rounds up to 5001.00
    assert trade["exit_price"] == 5009.50  # 5010.25 x 0.9999 = 5009.748975: a sell rounds down to 5009.50
    assert trade["pnl"] == 425.0  # (5009.50 - 5001.00) x 50


def test_prices_already_on_the_grid_are_not_moved() -> None:
    tick = ContractTerms(min_tick=0.01)
    assert tick.on_tick(232.64, 1) == 232.64 and tick.on_tick(232.64, -1) == 232.64  # 23263.999999999996 ticks
    assert tick.on_tick(232.641, 1) == 232.65 and tick.on_tick(232.649, -1) == 232.64
    assert US_STOCK.on_tick(232.641, 1) == 232.641  # no tick known: no rounding


def test_futures_are_sized_in_whole_contracts_from_the_notional() -> None:
    config = hold(ES, 600_000, sizing=AllIn(), commission=IBKRFutures(exchange_fee=1.38))
    result = run_backtest(bars([4990.0, 5000.0, 5004.0, 5010.25]), "1 day", config)
    # one contract is worth 5000 x 50 = 250,000: two (500,004.50 with fees) fit in 600,000, three do not
    assert result.trades["size"].to_list() == [2]
    assert result.trades["pnl"].item() == pytest.approx(2 * 512.50 - 2 * 2 * ES_FEE)


def test_a_currency_pair_is_sized_in_base_units_and_its_pnl_is_in_the_quote_currency() -> None:
    config = hold(EURUSD, 200_000, sizing=FixedShares(100_000), commission=IBKRForex("EUR", "USD"))
    result = run_backtest(bars([1.0840, 1.0850, 1.0870, 1.0900]), "1 day", config)
    trade = result.trades.row(0, named=True)
    assert trade["size"] == 100_000  # EUR
    # USD: (1.0900 - 1.0850) x 100,000 = 500; commissions 0.2 bps of 108,500 (2.17) and of 109,000 (2.18)
    assert trade["commission"] == pytest.approx(2.17 + 2.18)
    assert trade["pnl"] == pytest.approx(500 - 4.35)
    assert result.currency == "USD"


def test_all_in_on_a_pair_buys_the_base_units_the_quote_cash_pays_for() -> None:
    config = hold(EURUSD, 100_000, sizing=AllIn(), commission=IBKRForex("EUR", "USD"))
    result = run_backtest(bars([1.0840, 1.0850, 1.0870, 1.0900]), "1 day", config)
    # 92,165 EUR cost 99,999.03 USD + the USD 2 minimum: too much; 92,164 cost 99,997.94 + 2 = 99,999.94
    assert result.trades["size"].to_list() == [92_164]


@pytest.mark.parametrize(("terms", "quantity", "unit_value", "expected"), [
    (("FUT", "ES", "CME", "USD"), 2, 250_000.0, 2 * ES_FEE),  # per contract, whatever the price: 4.50
    (("CONTFUT", "MES", "CME", "USD"), 3, 25_000.0, 3 * (0.85 + 0.35 + 0.02)),  # micro: 3.66
    (("CASH", "EUR", "IDEALPRO", "USD"), 100_000, 1.085, 2.17),  # 0.2 bps of 108,500 USD
    (("CASH", "EUR", "IDEALPRO", "USD"), 10_000, 1.085, 2.00),  # 0.217: the USD 2 minimum
    (("CASH", "USD", "IDEALPRO", "JPY"), 10_000, 150.0, 300.0),  # 30 JPY, minimum USD 2 = JPY 300 at 150
    (("STK", "SAP", "IBIS", "EUR"), 100, 200.0, 10.0),  # 0.05 % of EUR 20,000
    (("STK", "SAP", "IBIS", "EUR"), 10, 100.0, 1.25),  # 0.50: the EUR 1.25 minimum
    (("STK", "SAP", "IBIS", "EUR"), 1_000, 100.0, 29.0),  # 50.00: capped at EUR 29
    (("STK", "7203", "TSEJ", "JPY"), 100, 2_800.0, 224.0),  # 0.08 % of JPY 280,000
    (("STK", "7203", "TSEJ", "JPY"), 100, 500.0, 80.0),  # 40: the JPY 80 minimum
    (("STK", "AAPL", "SMART", "USD"), 100, 200.0, 1.0),  # US: 0.50 per 100 shares, the USD 1 minimum
    (("IND", "SPX", "CBOE", "USD"), 1, 5_000.0, 0.0),  # not tradable: frictionless
])
def test_each_class_pays_its_schedule(terms: tuple[str, str, str, str], quantity: int, unit_value: float,
                                      expected: float) -> None:
    assert default_commission(*terms).commission(quantity, unit_value) == pytest.approx(expected)


def test_the_model_is_picked_from_the_class() -> None:
    assert type(default_commission("STK", "AAPL", "NASDAQ", "USD")) is IBKRFixed
    assert type(default_commission("STK", "SAP", "IBIS", "EUR")) is IBKRExchangeStock
    assert default_commission("FUT", "ES", "CME", "USD") == IBKRFutures(exchange_fee=1.38)
    assert default_commission("CASH", "EUR", "IDEALPRO", "USD") == IBKRForex("EUR", "USD")
    assert type(default_commission("IND", "SPX", "CBOE", "USD")) is NoCommission


@pytest.mark.parametrize(("terms", "message"), [
    (("STK", "AIR", "SBF", "EUR"), "no commission schedule for AIR stock on SBF in EUR"),
    (("FUT", "ZB", "CBOT", "USD"), "no exchange fee for the ZB future on CBOT"),
    (("OPT", "AAPL", "SMART", "USD"), "no commission schedule for instrument class 'OPT'"),
])
def test_a_venue_without_published_numbers_is_refused_with_the_fix(terms: tuple[str, str, str, str],
                                                                  message: str) -> None:
    with pytest.raises(UnknownScheduleError, match=message) as raised:
        default_commission(*terms)
    assert "pick a commission model explicitly" in str(raised.value)


def test_a_contract_change_under_an_open_position_charges_a_roll() -> None:
    es = IBKRFutures(exchange_fee=1.38)
    series = bars([4990.0, 5000.0, 5004.0, 5008.0, 5010.25], contract=[1, 1, 2, 2, 2])
    rolled = run_backtest(series, "1 day", hold(ES, 300_000, commission=es))
    trade = rolled.trades.row(0, named=True)
    # entry, exit, and the roll at bar 2's open (close and re-open one contract): four orders of 2.25
    assert rolled.metrics.trades == 1 and trade["commission"] == pytest.approx(4 * ES_FEE)
    assert trade["pnl"] == pytest.approx(10.25 * 50 - 4 * ES_FEE)
    assert rolled.metrics.final_equity == pytest.approx(300_000 + trade["pnl"])
    assert rolled.equity["equity"][2] == pytest.approx(300_000 - 3 * ES_FEE + 8 * 50)  # roll paid at bar 2


def test_a_roll_pays_both_orders_slippage_on_the_tick_grid() -> None:
    series = bars([4990.0, 5000.0, 5000.25, 5008.0, 5010.0], contract=[1, 1, 2, 2, 2])
    plain = run_backtest(series.drop("contract"), "1 day", hold(ES, 300_000, slippage_bps=1))
    rolled = run_backtest(series, "1 day", hold(ES, 300_000, slippage_bps=1))
    # at 5000.25 the closing sell fills at 4999.50 (4999.749975 down) and the re-opening buy at 5001.00
    # (5000.750025 up): 1.50 points x 50 = 75 paid to roll
    assert plain.trades["pnl"].item() - rolled.trades["pnl"].item() == pytest.approx(75.0)
    assert plain.metrics.final_equity - rolled.metrics.final_equity == pytest.approx(75.0)


def test_no_roll_is_charged_when_the_position_opens_or_closes_at_the_change() -> None:
    es = IBKRFutures(exchange_fee=1.38)
    opens = [4990.0, 5000.0, 5004.0, 5010.25]
    at_entry = run_backtest(bars(opens, contract=[1, 2, 2, 2]), "1 day", hold(ES, 300_000, commission=es))
    at_exit = run_backtest(bars(opens, contract=[1, 1, 1, 2]), "1 day", hold(ES, 300_000, commission=es))
    for result in (at_entry, at_exit):
        assert result.trades["commission"].item() == pytest.approx(2 * ES_FEE)


def test_realism_options_mark_futures_with_the_multiplier_and_refuse_rolls() -> None:
    series = bars([4990.0, 5000.0, 5004.0, 5008.0, 5010.25])
    wide_stop = ExitRules(stop_loss_pct=50.0)  # never reached: the bar-by-bar loop, the same fills
    fast = run_backtest(series, "1 day", hold(ES, 300_000))
    by_bar = run_backtest(series, "1 day", hold(ES, 300_000, exits=wide_stop))
    assert by_bar.equity["equity"].to_list() == pytest.approx(fast.equity["equity"].to_list())
    assert by_bar.metrics.final_equity == 300_512.50
    with pytest.raises(BacktestError, match="cannot charge rolls yet"):
        run_backtest(series.with_columns(contract=pl.Series([1, 1, 2, 2, 2])), "1 day",
                     hold(ES, 300_000, exits=wide_stop))


def test_a_contract_column_with_gaps_is_refused() -> None:
    series = bars([4990.0, 5000.0, 5004.0, 5010.25]).with_columns(contract=pl.Series([1, None, 2, 2]))
    with pytest.raises(BacktestError, match="'contract' column must hold each bar's conId"):
        run_backtest(series, "1 day", hold(ES, 300_000))


def stored(symbol: str, con_id: int, currency: str, opens: list[float]) -> pl.DataFrame:
    daily = bars(opens)
    return daily.with_columns(
        symbol=pl.lit(symbol), con_id=pl.lit(con_id), exchange=pl.lit("SMART"), primary_exchange=pl.lit("SMART"),
        currency=pl.lit(currency), bar_size=pl.lit("1 day"), what_to_show=pl.lit("TRADES"), use_rth=pl.lit(True),
        wap=pl.col("close"), bar_count=pl.lit(10), ingested_at=pl.lit(START), flow_run_id=pl.lit("test"),
        request=pl.lit("test"),
    ).select(list({**BAR_COLUMNS, **LINEAGE_COLUMNS}))


def instrument(con_id: int, sec_type: str, symbol: str, exchange: str, currency: str, multiplier: float | None,
               min_tick: float, instrument_id: str) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(INSTRUMENTS_SCHEMA)
    row.update(con_id=con_id, sec_type=sec_type, symbol=symbol, exchange=exchange, primary_exchange=exchange,
               currency=currency, multiplier=multiplier, min_tick=min_tick, instrument_id=instrument_id,
               first_seen=START, last_updated=START)
    return row


def test_the_runner_reads_each_symbols_terms_from_the_instruments_table(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    before = {k: v for k, v in RESULTS_SCHEMA.items() if k != "currency"}  # a results table from before `currency`
    write(location.backtest_results, pl.DataFrame({**{name: [None] for name in before}, "run_id": ["older"],
                                                   "symbol": ["MSFT"]}, schema=before), mode="error")
    es_id, sap_id = "FUT:ES@CME:202503", "STK:SAP@IBIS:EUR"
    for frame in (stored(es_id, 551601503, "USD", [4990.0, 5000.0, 5004.0, 5010.25]),
                  stored(sap_id, 14204, "EUR", [199.0, 200.0, 201.0, 204.0]),
                  stored("AAPL", 265598, "USD", [229.0, 230.0, 231.0, 232.0])):
        merge_bars(location, frame)
    upsert_instruments(location, pl.DataFrame([
        instrument(551601503, "FUT", "ES", "CME", "USD", 50.0, 0.25, es_id),
        instrument(14204, "STK", "SAP", "IBIS", "EUR", None, 0.01, sap_id),
    ], schema=INSTRUMENTS_SCHEMA))  # AAPL has no row: stored before the instruments table existed
    request = BacktestRequest(symbols=(es_id, sap_id, "AAPL"), strategy="buy_and_hold", params={}, start=START,
                              end=START + timedelta(days=4), bar_size="1 day", cash=3_000_000, sizing="fixed_shares",
                              size=10)
    assert request.commission == "auto"
    run = run_request(request, location)
    by_symbol = {s.symbol: s for s in run.results}

    es = by_symbol[es_id]
    assert (es.terms.multiplier, es.terms.min_tick, es.commission, es.result.currency) == (50.0, 0.25,
                                                                                          "ibkr_futures", "USD")
    # ten contracts: 10.25 points x 50 x 10 = 5125, less two orders of ten contracts at 2.25 each
    assert es.result.trades["pnl"].item() == pytest.approx(5125.0 - 2 * 10 * ES_FEE)

    sap = by_symbol[sap_id]
    assert (sap.commission, sap.result.currency) == ("ibkr_exchange", "EUR")
    # ten shares: (204 - 200) x 10 = 40 EUR; 0.05 % of 2000 and 2040 is under the minimum: 1.25 twice
    assert sap.result.trades["pnl"].item() == pytest.approx(40.0 - 2.5)

    aapl = by_symbol["AAPL"]
    assert (aapl.terms, aapl.commission, aapl.result.currency) == (ContractTerms(symbol="AAPL"), "ibkr_fixed", "USD")
    assert aapl.result.trades["pnl"].item() == pytest.approx(20.0 - 2.0)  # 10 x 2, USD 1 per order

    currency_row = metric_rows(run)[-1]
    assert currency_row == {"metric": "currency", es_id: "USD", sap_id: "EUR", "AAPL": "USD"}
    assert "FUT ES@CME x50, tick 0.25, USD; commission ibkr_futures" in run_markdown(run)

    store_run(location, run, "flow-run")
    rows = read_backtest_results(location).sort("symbol")
    assert rows.select("symbol", "commission", "currency").rows() == [
        ("AAPL", "ibkr_fixed", "USD"), (es_id, "ibkr_futures", "USD"), ("MSFT", None, None),
        (sap_id, "ibkr_exchange", "EUR")]  # the older row kept, its currency null


def test_an_explicit_commission_choice_overrides_the_class_default() -> None:
    request = BacktestRequest(symbols=("FUT:ES@CME:202503",), strategy="buy_and_hold", params={},
                              commission="percent", commission_rate=0.001)
    config = request.config(terms=ES)
    assert config.commission.commission(1, 250_000.0) == pytest.approx(250.0)  # 0.1 % of the notional
