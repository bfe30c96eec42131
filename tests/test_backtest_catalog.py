"""The catalog of stored runs: `ibkr backtest results | show | rerun` and the notebook API, on real Delta tables.

Bars are written straight into the bars table (a random walk of 1-minute bars over three days), so the tests
check the catalog, not the ingestion. Every `--json` output goes through a strict parser that refuses NaN and
Infinity.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.api import list_series, load_bars, load_results
from ibkr_flows.cli.app import app
from storage.bars_table import merge_bars, table_version
from storage.location import TableLocation
from storage.results_table import RESULTS_SCHEMA, read_backtest_results
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS
from storage.trades_table import read_trades

START = datetime(2024, 7, 10, 13, 30, tzinfo=UTC)
RANGE = ["--start", "2024-07-10 13:30", "--end", "2024-07-13 00:00"]


def _bars(start: datetime, minutes: int, seed: int) -> pl.DataFrame:
    close = 190 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.001, minutes)))
    return pl.DataFrame({
        "symbol": "AAPL", "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
        "ts": [start + timedelta(minutes=i) for i in range(minutes)], "open": close, "high": close * 1.001,
        "low": close * 0.999, "close": close, "volume": 1000.0, "wap": close, "bar_count": 10,
        "ingested_at": datetime.now(UTC), "flow_run_id": "test", "request": "test",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS})


def strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def location() -> Iterator[TableLocation]:
    with tempfile.TemporaryDirectory(prefix="ibkr-catalog-") as tmp:
        where = TableLocation(Path(tmp))
        for day in range(3):
            merge_bars(where, _bars(START + timedelta(days=day), 390, seed=day))
        yield where


def cli(location: TableLocation, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    return result.exit_code, result.stdout if "--json" in args else result.output


def run_backtest(location: TableLocation, *args: str) -> str:
    code, output = cli(location, "backtest", "run", *RANGE, *args, "--json")
    assert code == 0, output
    return strict(output)["run_id"]


@pytest.fixture(scope="module")
def runs(location: TableLocation) -> dict[str, str]:
    """Three single runs and one grid run, stored."""
    ids = {
        "sma": run_backtest(location, "--fast-period", "5", "--slow-period", "30"),
        "sma_costly": run_backtest(location, "--fast-period", "5", "--slow-period", "30", "--slippage-bps", "5",
                                   "--commission", "percent", "--commission-rate", "0.001"),
        "rsi": run_backtest(location, "--strategy", "rsi_reversion", "--param", "period=14"),
    }
    code, output = cli(location, "backtest", "grid", *RANGE, "--range", "fast_period=5,10",
                       "--range", "slow_period=20,40", "--holdout", "0.3")
    assert code == 0, output
    ids["grid"] = output.split("run ")[-1].split()[0]
    return ids


def test_results_lists_every_run_newest_first_filtered_and_sorted(location: TableLocation,
                                                                  runs: dict[str, str]) -> None:
    code, output = cli(location, "backtest", "results", "--json")
    assert code == 0, output
    listed = strict(output)
    assert [row["run_id"] for row in listed[:3]] == [runs["rsi"], runs["sma_costly"], runs["sma"]]
    assert all("sharpe" in row and "request" in row for row in listed)

    code, output = cli(location, "backtest", "results", "--strategy", "sma_crossover", "--sort-by",
                       "total_return_pct", "--json")
    by_return = strict(output)
    assert {row["run_id"] for row in by_return} == {runs["sma"], runs["sma_costly"]}
    assert by_return[0]["total_return_pct"] >= by_return[1]["total_return_pct"]
    # the same strategy and parameters with costs cannot do better than without
    assert by_return[0]["run_id"] == runs["sma"]

    code, output = cli(location, "backtest", "results", "--grid", "--json")
    (grid_row,) = strict(output)
    assert grid_row["run_id"] == runs["grid"] and grid_row["combinations"] == 4 and grid_row["rank"] == 1

    code, output = cli(location, "backtest", "results")
    assert code == 0 and runs["rsi"] in output and "sharpe" in output


def test_results_refuses_an_unknown_sort_column_and_lists_the_columns(location: TableLocation,
                                                                     runs: dict[str, str]) -> None:
    code, output = cli(location, "backtest", "results", "--sort-by", "sharp")
    assert code == 2
    assert "cannot sort by 'sharp'" in output and "sharpe" in output


def test_show_gives_the_stored_metrics_and_trades(location: TableLocation, runs: dict[str, str]) -> None:
    code, output = cli(location, "backtest", "show", runs["sma"][:6], "--json")
    assert code == 0, output
    shown = strict(output)
    stored = read_backtest_results(location).filter(pl.col("run_id") == runs["sma"]).row(0, named=True)
    (row,) = shown["rows"]
    assert shown["run_id"] == runs["sma"] and shown["kind"] == "backtest"
    assert row["sharpe"] == stored["sharpe"] and row["trades"] == stored["trades"] > 0
    assert len(shown["trades"]) == stored["trades"] == read_trades(location, runs["sma"]).height
    assert shown["request"]["params"] == {"fast_period": 5, "slow_period": 30}
    assert shown["request"]["table_version"] == stored["bars_version"]

    code, output = cli(location, "backtest", "show", runs["sma"])
    assert code == 0 and "trade(s)" in output and "total_return_pct" in output

    code, output = cli(location, "backtest", "show", runs["grid"], "--json")
    shown = strict(output)
    assert shown["kind"] == "grid" and [r["rank"] for r in shown["rows"]] == [1, 2, 3, 4] and shown["trades"] == []


def test_show_of_an_unknown_run_names_the_latest_ones(location: TableLocation, runs: dict[str, str]) -> None:
    code, output = cli(location, "backtest", "show", "nosuchrun")
    assert code == 2
    assert "'nosuchrun' is not a stored run" in output and runs["rsi"] in output


def test_rerun_is_identical_bit_for_bit_even_after_new_bars(location: TableLocation, runs: dict[str, str]) -> None:
    merge_bars(location, _bars(START + timedelta(days=1, minutes=100), 50, seed=99))  # rewrites bars in the range
    for name in ("sma", "sma_costly", "rsi", "grid"):
        code, output = cli(location, "backtest", "rerun", runs[name], "--json")
        assert code == 0, output
        report = strict(output)
        assert report["identical"] and report["differences"] == []
        assert report["values_compared"] >= 20 and report["code_changed"] is False
        assert report["trades_equal"] is (None if name == "grid" else True)
        assert report["bars_version"] < table_version(location)
    code, output = cli(location, "backtest", "rerun", runs["sma"])
    assert code == 0 and "identical, bit for bit" in output


def test_rerun_reports_a_stored_result_that_the_data_does_not_reproduce(location: TableLocation,
                                                                       runs: dict[str, str]) -> None:
    """A row whose Sharpe ratio is one ulp off what its request computes is caught and named."""
    stored = read_backtest_results(location).filter(pl.col("run_id") == runs["sma"])
    forged = stored.with_columns(run_id=pl.lit("forged000001"), sharpe=pl.col("sharpe").map_elements(
        lambda v: float(np.nextafter(v, np.inf)), return_dtype=pl.Float64))
    forged.write_delta(location.backtest_results, mode="append")
    code, output = cli(location, "backtest", "rerun", "forged000001", "--json")
    assert code == 1
    report = strict(output)
    assert not report["identical"] and [d["metric"] for d in report["differences"]] == ["sharpe"]
    # the trades table has none for the forged id: that is a difference too
    assert report["trades_equal"] is False


def test_a_table_from_before_request_recording_gains_the_column_and_says_why_it_cannot_rerun(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    merge_bars(location, _bars(START, 390, seed=0))
    old_schema = pl.Schema({k: v for k, v in RESULTS_SCHEMA.items() if k != "request"})
    first = run_backtest(location, "--fast-period", "5", "--slow-period", "30")
    old = read_backtest_results(location).drop("request").with_columns(run_id=pl.lit("old000000001"))
    Path(location.backtest_results).rename(tmp_path / "moved")
    old.cast(dict(old_schema)).write_delta(location.backtest_results)

    run_backtest(location, "--fast-period", "5", "--slow-period", "30")  # appends into the older table
    table = read_backtest_results(location)
    assert "request" in table.columns and table.height == 2
    assert table.filter(pl.col("run_id") == "old000000001")["request"].to_list() == [None]
    code, output = cli(location, "backtest", "rerun", "old000000001")
    assert code == 2 and "before runs recorded their request" in output
    assert first  # the first run's table was moved away; only the old row and the new run remain


def test_notebook_api_reads_bars_and_results(location: TableLocation, runs: dict[str, str]) -> None:
    (series,) = list_series(data_dir=str(location.root)).iter_rows(named=True)
    assert series["symbol"] == "AAPL" and series["rows"] >= 3 * 390 and series["sessions_missing"] == 0
    bars = load_bars("aapl", start="2024-07-10", end="2024-07-11", data_dir=str(location.root))
    assert bars.height == 390 and bars["ts"].is_sorted() and bars["ts"].dtype.time_zone == "UTC"
    results = load_results(strategy="rsi_reversion", data_dir=str(location.root))
    assert results["run_id"].to_list() == [runs["rsi"]]
    best = load_results(kind="grid", sort_by="sharpe", data_dir=str(location.root))
    assert best["run_id"].to_list() == [runs["grid"]]


def test_the_trades_table_holds_every_column_of_the_engine_but_the_derived_duration(location: TableLocation) -> None:
    from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
    from storage.trades_table import TRADE_COLUMNS

    bars = load_bars("AAPL", start="2024-07-10", end="2024-07-11", data_dir=str(location.root))
    trades = run_backtest(bars, "1 min", BacktestConfig("sma_crossover", {"fast_period": 5, "slow_period": 30})).trades
    assert [c for c in trades.columns if c != "duration"] == list(TRADE_COLUMNS)
