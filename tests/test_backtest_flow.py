"""Backtests on bars ingested from the simulator: the old CLI's flags, the Prefect flow's artifacts, the results
table, time travel, and the errors a user sees instead of tracebacks."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.request import BacktestRequest
from ibkr_flows.backtest.runner import load_bars
from ibkr_flows.cli.app import app
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import table_version
from storage.location import TableLocation
from storage.results_table import read_backtest_results

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
OLD_FLAGS = ["backtest", "run", "--strategy", "sma_crossover", "--symbol", "AAPL", "--start", "2024-07-11 19:01:00",
             "--end", "2024-07-11 20:00:00", "--fast-period", "5", "--slow-period", "10"]


def _ingest(location: TableLocation, sim: EmbeddedSimulator, symbols: tuple[str, ...], start: datetime) -> None:
    request = IngestRequest(symbols=symbols, start=start, end=NOW, quality_engine="polars")
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=70, connect_timeout=2.0)
    budget = PacingBudget(location.root / "pacing.json", time_scale=0.01)
    asyncio.run(ingest_async(request, location, settings, budget=budget))


@pytest.fixture(scope="module")
def stored() -> Iterator[TableLocation]:
    """AAPL and MSFT, 1-minute bars of 2024-07-10..12, ingested from the simulator once for the module."""
    with tempfile.TemporaryDirectory(prefix="ibkr-backtest-") as tmp, EmbeddedSimulator(clock=lambda: NOW) as sim:
        location = TableLocation(Path(tmp))
        _ingest(location, sim, ("AAPL", "MSFT"), datetime(2024, 7, 10, tzinfo=UTC))
        yield location


def _cli(location: TableLocation, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    return result.exit_code, result.output


def test_old_cli_command_prints_metrics_and_execution_time(stored: TableLocation) -> None:
    before = read_backtest_results(stored).height
    code, output = _cli(stored, *OLD_FLAGS)
    assert code == 0, output
    assert "execution time:" in output and "total_return_pct" in output and "sharpe" in output
    assert "59 bars 2024-07-11 19:01" in output  # 19:01..19:59: the end is exclusive
    rows = read_backtest_results(stored)
    assert rows.height == before + 1
    assert rows["strategy"][-1] == "sma_crossover" and json.loads(rows["params"][-1]) == {"fast_period": 5,
                                                                                          "slow_period": 10}
    assert rows["bars_version"][-1] == table_version(stored)


def test_json_metrics_equal_the_engine_on_the_same_bars(stored: TableLocation) -> None:
    code, output = _cli(stored, *OLD_FLAGS, "--json", "--no-store")
    assert code == 0, output
    payload = json.loads(output)
    params = {"fast_period": 5, "slow_period": 10}
    request = BacktestRequest(strategy="sma_crossover", symbols=("AAPL",), params=params,
                              start=datetime(2024, 7, 11, 19, 1, tzinfo=UTC), end=datetime(2024, 7, 11, 20, tzinfo=UTC))
    bars, _ = load_bars(stored, request, "AAPL", None)
    direct = run_backtest(bars, "1 min", BacktestConfig("sma_crossover", params))
    metrics = payload["results"]["AAPL"]
    assert metrics["bars"] == 59 == bars.height
    assert metrics["final_equity"] == direct.metrics.final_equity
    assert metrics["trades"] == direct.metrics.trades


def test_missing_bars_say_which_ingest_command_fetches_them(stored: TableLocation) -> None:
    code, output = _cli(stored, "backtest", "run", "--symbol", "SPY", "--start", "2024-07-11", "--end",
                        "2024-07-12")
    assert code == 3
    assert "no 1 min bars for SPY" in output and "ibkr data ingest SPY" in output
    assert "Traceback" not in output


def test_bad_parameters_are_refused_before_any_read(tmp_path: Path) -> None:
    empty = TableLocation(tmp_path)
    code, output = _cli(empty, *OLD_FLAGS[:-4], "--fast-period", "10", "--slow-period", "5")
    assert code == 2 and "fast_period (10) must be smaller than slow_period (5)" in output
    code, output = _cli(empty, "backtest", "run", "--strategy", "nope")
    assert code == 2 and "known strategies: buy_and_hold" in output
    code, output = _cli(empty, "backtest", "run", "--start", "2024-07-12", "--end", "2024-07-11")
    assert code == 2 and "is not before end" in output
    assert not any(tmp_path.iterdir())


def test_time_travel_reads_the_older_version(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        _ingest(location, sim, ("SPY",), datetime(2024, 7, 12, tzinfo=UTC))
        first = table_version(location)
        _ingest(location, sim, ("QQQ",), datetime(2024, 7, 12, tzinfo=UTC))
    assert first is not None and table_version(location) == first + 1
    args = ["backtest", "run", "--symbol", "QQQ", "--start", "2024-07-12", "--end", "2024-07-13", "--json"]
    assert _cli(location, *args)[0] == 0
    code, output = _cli(location, *args, "--table-version", str(first))
    assert code == 3 and f"bars table version {first}" in output


@pytest.mark.usefixtures("prefect_harness")
def test_backtest_flow_publishes_artifacts_and_stores_a_reproducible_result(stored: TableLocation) -> None:
    from prefect.artifacts import Artifact

    from flows.backtest import backtest_flow

    request = BacktestRequest(strategy="rsi_reversion", params={"period": 14, "lower": 30, "upper": 70},
                              symbols=("AAPL", "MSFT"), start=datetime(2024, 7, 10, tzinfo=UTC), end=NOW)
    kwargs = dict(request=request, data_dir=str(stored.root))
    state = backtest_flow(**kwargs, return_state=True)
    assert state.is_completed(), state.message
    run = state.result()
    summary = Artifact.get("backtest-summary")
    assert summary is not None and "data:image/png;base64," in summary.data
    assert f"bars table version {run.table_version}, prices: splits (split-adjusted)" in summary.data
    assert "rsi_reversion" in summary.data
    trades = Artifact.get("backtest-trades")
    assert trades is not None and "entry_price" in trades.data
    again = backtest_flow(**kwargs)
    rows = read_backtest_results(stored).filter(run_id=again.run_id)
    assert rows.height == 2 and sorted(rows["symbol"]) == ["AAPL", "MSFT"]
    first = {s.symbol: s.result.metrics for s in run.results}
    assert all(first[s.symbol] == s.result.metrics for s in again.results)  # same inputs, same metrics
