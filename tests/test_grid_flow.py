"""Grid backtests end to end on bars ingested from the simulator: the Prefect flow's chunks, artifacts and
grid_results rows, and the CLI; the best cell equals a single run with its parameters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import load_bars
from ibkr_flows.cli.app import app
from storage.grid_results_table import read_grid_results
from storage.location import TableLocation
from tests.test_backtest_flow import NOW, stored  # noqa: F401 - the module-scoped table fixture

GRID = {"fast_period": [3, 6, 9], "slow_period": {"start": 10, "stop": 30, "step": 10}}
START = datetime(2024, 7, 10, tzinfo=UTC)


@pytest.mark.usefixtures("prefect_harness")
def test_grid_flow_chunks_reports_and_stores_every_combination(stored: TableLocation) -> None:  # noqa: F811
    from prefect.artifacts import Artifact

    from flows.grid import backtest_grid

    request = GridRequest(grid=GRID, symbol="MSFT", start=START, end=NOW, holdout=0.3, folds=2, chunks=3)
    state = backtest_grid(request=request, data_dir=str(stored.root), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.combinations_tried == 9
    summary = Artifact.get("grid-summary")
    assert summary is not None and "Deflated Sharpe ratio" in summary.data and "data:image/png;base64," in summary.data
    assert "prices: splits (split-adjusted)" in summary.data
    top = Artifact.get("grid-top")
    assert top is not None and "fast_period" in top.data
    rows = read_grid_results(stored).filter(symbol="MSFT")
    assert rows.height == 9 and rows["rank"].to_list() == list(range(1, 10))
    best = json.loads(rows["params"][0])
    assert best == report.best_params
    bars, _ = load_bars(stored, request, "MSFT", None)
    in_sample = bars.head(bars.height - int(bars.height * 0.3))
    single = run_backtest(in_sample, "1 min", BacktestConfig("sma_crossover", best))
    assert single.metrics == report.best_metrics
    assert rows["sharpe"][0] == pytest.approx(single.metrics.sharpe, rel=1e-9)


def test_grid_cli_prints_the_ranking_and_the_overfitting_checks(stored: TableLocation,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    heatmap = tmp_path / "heat.png"
    result = CliRunner().invoke(app, [
        "backtest", "grid", "--symbol", "AAPL", "--start", "2024-07-10", "--end", "2024-07-13",
        "--range", "fast_period=3:9:3", "--range", "slow_period=10,20,30", "--folds", "2", "--no-store",
        "--heatmap", str(heatmap)], env={"IBKR_DATA_DIR": str(stored.root), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "top 9 of 9 by sharpe" in result.output and "deflated Sharpe ratio" in result.output
    assert "walk-forward: 2 folds" in result.output
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_cli_takes_the_realism_options_and_equals_the_single_run(stored: TableLocation,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """Stops, flatten-at-close and the borrow fee reach the grid from the CLI; the one combination's stored row
    equals `ibkr backtest run` with the same options."""
    realism = ["--stop-loss", "0.3", "--take-profit", "0.8", "--trailing-stop", "0.5", "--flatten-at-close",
               "--borrow-fee", "3", "--mode", "long_short"]
    window = ["--symbol", "AAPL", "--start", "2024-07-10", "--end", "2024-07-13"]
    env = {"IBKR_DATA_DIR": str(stored.root), "COLUMNS": "200"}
    grid = CliRunner().invoke(app, ["backtest", "grid", *window, "--range", "fast_period=4", "--range",
                                    "slow_period=12", "--holdout", "0", *realism], env=env)
    assert grid.exit_code == 0, grid.output
    single = CliRunner().invoke(app, ["backtest", "run", *window, "--fast-period", "4", "--slow-period", "12",
                                      "--no-store", "--json", *realism], env=env)
    assert single.exit_code == 0, single.output
    run_id = grid.output.rsplit("run ", 1)[1].split()[0]
    row = read_grid_results(stored).filter(run_id=run_id).row(0, named=True)
    request = json.loads(row["request"])
    assert (request["stop_loss_pct"], request["flatten_at_close"], request["borrow_fee_pct"]) == (0.3, True, 3.0)
    metrics = json.loads(single.output)["results"]["AAPL"]
    assert row["total_return_pct"] == pytest.approx(metrics["total_return_pct"], rel=1e-9)
    assert row["trades"] == metrics["trades"]


@pytest.mark.parametrize(("args", "message"), [
    (["--range", "fast_period=30:40:5", "--range", "slow_period=10:20:5"], "empty"),
    (["--range", "window=1,2"], "window"),
    (["--rank-by", "luck"], "luck"),
])
def test_grid_cli_refuses_bad_grids(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["backtest", "grid", *args], env={"IBKR_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2 and message in result.output.lower(), result.output
    assert not any(tmp_path.iterdir())
