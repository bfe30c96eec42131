"""Backtests and grids on continuous futures: ES's dated contracts ingested from the simulator, rolled by
`ibkr data roll`, then `ibkr backtest run` / `grid` / the `backtest` flow on `CONTFUT:ES@CME` with `--roll`, which
read the continuous table and charge each roll at ES's terms (x50, tick 0.25); and IB's own CONTFUT series, whose
terms come from the front contract its ingestion records."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.backtest.catalog import rerun
from ibkr_flows.backtest.contract_terms import read_contract_terms
from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.request import BacktestRequest, GridRequest
from ibkr_flows.backtest.runner import MissingBarsError, run_request
from ibkr_flows.backtest.sizing import FixedShares
from ibkr_flows.cli.app import app
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.continuous_table import continuous_version, read_series
from storage.grid_results_table import read_grid_results
from storage.instruments_table import read_instruments
from storage.location import TableLocation
from storage.results_table import read_backtest_results
from tests.test_continuous_futures import ROLL_CLOCK, ingest

RANGE = ("2025-03-03", "2025-03-21")
START, END = (datetime.fromisoformat(d).replace(tzinfo=UTC) for d in RANGE)
ROLLED = ["--symbol", "CONTFUT:ES@CME", "--roll", "days:5", "--roll-adjust", "ratio", "--cash", "1500000"]
"""A rolled ES series, with the cash for a few contracts at full value."""
ES_KEY = {"root": "ES", "exchange": "CME", "bar_size": "1 hour", "what_to_show": "TRADES", "use_rth": True,
          "rule": "days:5", "adjustment": "ratio"}


@dataclass(frozen=True)
class Stored:
    rolled: TableLocation
    """ESH5 and ESM5 1-hour bars of 03-03..03-21, rolled days:5 with ratio back-adjustment."""
    ib_series: TableLocation
    """IB's CONTFUT:ES@CME alone (no dated contract ingested)."""


def _cli(location: TableLocation, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def stored() -> Iterator[Stored]:
    with tempfile.TemporaryDirectory(prefix="ibkr-contfut-") as tmp, \
            EmbeddedSimulator(clock=lambda: ROLL_CLOCK) as sim:
        rolled, ib_series = TableLocation(Path(tmp) / "rolled"), TableLocation(Path(tmp) / "ib")
        report = ingest(sim, rolled, "FUT:ES@CME:202503", "FUT:ES@CME:202506", start=START, end=END, client_id=86)
        assert [s.status for s in report.symbols] == ["ok", "ok"], report.symbols
        code, output = _cli(rolled, "data", "roll", "ES", "--rule", "days:5", "--adjust", "ratio", "--json")
        assert code == 0, output
        [contfut] = ingest(sim, ib_series, "CONTFUT:ES@CME", lookback_days=10, client_id=87).symbols
        assert contfut.status == "ok" and contfut.rows_inserted > 0, contfut.error
        yield Stored(rolled, ib_series)


def test_a_rolled_series_trades_the_front_contract_and_pays_each_roll(stored: Stored) -> None:
    """Buy and hold 2 contracts through the 03-14 roll (the engine pays a future's full value: cash for 2 x 50 x
    ~5,800): the run reads the continuous table, counts 50 dollars a point, and the roll costs two more orders per
    contract (closing ESH5, opening ESM5): twice the commission of the same bars without the `contract` column,
    the difference taken from the PnL."""
    code, output = _cli(stored.rolled, "backtest", "run", *ROLLED, "--strategy", "buy_and_hold", "--start", RANGE[0],
                        "--end", RANGE[1], "--sizing", "fixed_shares", "--size", "2", "--json")
    assert code == 0, output
    payload = json.loads(output)
    assert (payload["table"], payload["bars_version"], payload["roll"], payload["roll_adjust"]) == (
        "continuous", continuous_version(stored.rolled), "days:5", "ratio")
    metrics = payload["results"]["CONTFUT:ES@CME"]
    series = read_series(stored.rolled, ES_KEY, start=START, end=END)
    assert metrics["bars"] == series.height and series["contract"].n_unique() == 2
    [terms] = read_contract_terms(stored.rolled, ["CONTFUT:ES@CME"]).values()
    assert (terms.sec_type, terms.multiplier, terms.min_tick, terms.calendar) == ("FUT", 50.0, 0.25, "CME_GLOBEX")
    config = BacktestConfig("buy_and_hold", cash=1_500_000, sizing=FixedShares(2), terms=terms,
                            commission=BacktestRequest().commission_model(terms))
    bars = series.select("ts", "open", "high", "low", "close", "volume", "contract")
    rolled = run_backtest(bars, "1 hour", config)
    unrolled = run_backtest(bars.drop("contract"), "1 hour", config)
    [trade] = rolled.trades.iter_rows(named=True)
    [plain] = unrolled.trades.iter_rows(named=True)
    assert trade["commission"] == pytest.approx(2 * plain["commission"])
    assert trade["pnl"] == pytest.approx((trade["exit_price"] - trade["entry_price"]) * 50 * 2 - trade["commission"])
    assert trade["pnl"] == pytest.approx(plain["pnl"] - plain["commission"])
    assert metrics["final_equity"] == pytest.approx(rolled.metrics.final_equity)
    assert metrics["commissions"] == pytest.approx(trade["commission"])


def test_the_run_is_stored_and_reruns_bit_for_bit_on_its_continuous_version(stored: Stored) -> None:
    code, output = _cli(stored.rolled, "backtest", "run", *ROLLED, "--start", RANGE[0], "--end", RANGE[1],
                        "--fast-period", "5", "--slow-period", "20")
    assert code == 0, output
    text = " ".join(output.split())
    assert "continuous table version" in text and "rolled days:5, adjustment ratio" in text
    row = read_backtest_results(stored.rolled).row(-1, named=True)
    assert row["symbol"] == "CONTFUT:ES@CME" and row["bars_version"] == continuous_version(stored.rolled)
    assert json.loads(row["request"])["roll"] == "days:5" and row["trades"] > 0
    again = rerun(stored.rolled, row["run_id"])
    assert again.identical and again.trades_equal, again.differences


def test_ibs_own_series_backtests_with_its_front_contracts_terms(stored: Stored) -> None:
    """Only CONTFUT:ES@CME was ingested: its ingestion recorded the front contract (ESM5 on 2025-04-04) as a dated
    future, so the backtest knows ES's multiplier; IB's bars name no contract, so no roll is charged."""
    instruments = read_instruments(stored.ib_series)
    assert instruments.select("instrument_id", "sec_type", "multiplier").rows() == [
        ("FUT:ES@CME:202506", "FUT", 50.0)]
    request = BacktestRequest(symbols=("CONTFUT:ES@CME",), strategy="buy_and_hold", params={},
                              start=datetime(2025, 3, 20, tzinfo=UTC), end=ROLL_CLOCK, bar_size="1 hour",
                              sizing="fixed_shares", size=1, cash=1_000_000)
    run = run_request(request, stored.ib_series)
    [result] = run.results
    assert (result.terms.multiplier, result.commission) == (50.0, "ibkr_futures")
    assert run.table_version == continuous_version(stored.ib_series)
    [trade] = result.result.trades.iter_rows(named=True)
    assert trade["pnl"] == pytest.approx((trade["exit_price"] - trade["entry_price"]) * 50 - trade["commission"])


def test_a_grid_on_a_rolled_series_equals_single_runs_and_is_stored(stored: Stored) -> None:
    code, output = _cli(stored.rolled, "backtest", "grid", *ROLLED, "--start", RANGE[0], "--end", RANGE[1],
                        "--range", "fast_period=3,5", "--range", "slow_period=20,30", "--holdout", "0")
    assert code == 0, output
    rows = read_grid_results(stored.rolled)
    rows = rows.filter(pl.col("run_id") == rows["run_id"][-1])
    assert rows.height == 4 and set(rows["symbol"]) == {"CONTFUT:ES@CME"}
    assert set(rows["bars_version"]) == {continuous_version(stored.rolled)}
    for cell in rows.iter_rows(named=True):
        params = json.loads(cell["params"])
        single = run_request(BacktestRequest(symbols=("CONTFUT:ES@CME",), params=params, start=START, end=END,
                                             bar_size="1 hour", roll="days:5", roll_adjust="ratio",
                                             cash=1_500_000), stored.rolled)
        assert single.results[0].result.metrics.trades > 0
        assert cell["final_equity"] == pytest.approx(single.results[0].result.metrics.final_equity), params


@pytest.mark.usefixtures("prefect_harness")
def test_the_grid_flow_takes_a_continuous_future(stored: Stored) -> None:
    from flows.grid import backtest_grid

    request = GridRequest(symbol="CONTFUT:ES@CME", roll="days:5", roll_adjust="ratio", start=START, end=END,
                          bar_size="1 hour", grid={"fast_period": [3, 5], "slow_period": [20]}, holdout=None,
                          chunks=2, cash=1_500_000)
    report = backtest_grid(request=request, data_dir=str(stored.rolled.root))
    assert report.combinations_tried == 2
    stored_rows = read_grid_results(stored.rolled).filter(pl.col("symbol") == "CONTFUT:ES@CME")
    assert set(stored_rows["bars_version"]) >= {continuous_version(stored.rolled)}


@pytest.mark.parametrize(("fields", "message"), [
    ({"symbols": ("CONTFUT:ES@CME", "AAPL")}, "separate runs"),
    ({"symbols": ("AAPL",), "roll": "days:5"}, "applies to continuous futures"),
    ({"symbols": ("CONTFUT:ES@CME",), "roll_adjust": "ratio"}, "needs a roll rule"),
    ({"symbols": ("CONTFUT:ES@CME",), "roll": "weeks:1"}, "days:N"),
])
def test_bad_continuous_requests_are_refused_before_any_read(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BacktestRequest(**fields)  # type: ignore[arg-type]


def test_a_series_not_built_says_how_to_build_it(stored: Stored) -> None:
    request = BacktestRequest(symbols=("CONTFUT:ES@CME",), roll="days:3", start=START, end=END, bar_size="1 hour")
    with pytest.raises(MissingBarsError) as raised:
        run_request(request, stored.rolled)
    assert "ibkr data roll ES --exchange CME --rule days:3 --adjust none --bar-size '1 hour'" in str(raised.value)
    code, output = _cli(stored.rolled, "backtest", "run", "--symbol", "CONTFUT:NQ@CME", "--start", RANGE[0],
                        "--end", RANGE[1], "--bar-size", "1 hour")
    assert code == 3 and "ibkr data ingest CONTFUT:NQ@CME --bar-size '1 hour'" in " ".join(output.split()), output
