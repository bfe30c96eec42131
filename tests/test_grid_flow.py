"""Grid backtests end to end on bars ingested from the simulator: the Prefect flow's chunks, artifacts and
grid_results rows, and the CLI; the best cell equals a single run with its parameters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
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


@pytest.mark.usefixtures("prefect_harness")
def test_grid_flow_on_several_symbols_equals_one_grid_per_symbol(stored: TableLocation) -> None:  # noqa: F811
    """`symbols` fans the grid out per symbol in one run: each symbol's report equals `run_grid` on its own bars
    in this process, the rows are ranked within each symbol under one run id, and the artifacts show each
    symbol's best cell."""
    from prefect.artifacts import Artifact

    from flows.grid import backtest_grid
    from ibkr_flows.backtest.catalog import rerun
    from ibkr_flows.backtest.grid import run_grid
    from ibkr_flows.backtest.runner import grid_config

    request = GridRequest(grid=GRID, symbols=["msft", "AAPL"], start=START, end=NOW, holdout=0.3, folds=2, chunks=2)
    state = backtest_grid(request=request, data_dir=str(stored.root), return_state=True)
    assert state.is_completed(), state.message
    reports = state.result()
    assert list(reports) == ["MSFT", "AAPL"]
    rows = read_grid_results(stored)
    rows = rows.filter(run_id=rows.sort("created_at")["run_id"][-1])
    for symbol, report in reports.items():
        one = GridRequest(grid=GRID, symbol=symbol, start=START, end=NOW, holdout=0.3, folds=2)
        bars, _ = load_bars(stored, one, symbol, None)
        alone = run_grid(bars, "1 min", one.spec(), grid_config(stored, one), holdout=0.3, folds=2)
        assert report.results.equals(alone.results) and report.best_params == alone.best_params
        assert report.walk_forward is not None and alone.walk_forward is not None
        assert report.walk_forward.folds.equals(alone.walk_forward.folds)
        mine = rows.filter(symbol=symbol)
        assert mine["rank"].to_list() == list(range(1, 10)) and json.loads(mine["params"][0]) == alone.best_params
        assert GridRequest.model_validate_json(mine["request"][0]).grid_symbols == (symbol,)
    assert rows.height == 18
    again = rerun(stored, rows["run_id"][0])  # each symbol re-run from its own row's request, bit for bit
    assert again.rows_compared == 18 and again.differences == []
    summary = Artifact.get("grid-summary")
    assert summary is not None and "on 2 symbols: best cell of each" in summary.data
    assert all(f"| {s} | `{json.dumps(r.best_params, sort_keys=True)}`" in summary.data for s, r in reports.items())
    assert summary.data.count("data:image/png;base64,") == 2
    top = Artifact.get("grid-top")
    assert top is not None and '"symbol": "MSFT"' in top.data and '"symbol": "AAPL"' in top.data


@pytest.mark.parametrize(("holdout", "folds"), [(0.3, 2), (None, 3), (0.2, None), (None, None)])
def test_chunks_submitted_up_front_are_the_slices_run_grid_evaluates(stored: TableLocation,  # noqa: F811
                                                                     holdout: float | None, folds: int | None
                                                                     ) -> None:
    """The flow submits every slice's chunks before awaiting any; they must be exactly the slices `run_grid`
    then asks for, or symbols would not overlap (the flow would fall back to submitting late)."""
    from flows.grid import grid_slices
    from ibkr_flows.backtest.grid import evaluate_grid, run_grid

    request = GridRequest(grid=GRID, symbol="AAPL", start=START, end=NOW)
    bars, _ = load_bars(stored, request, "AAPL", None)
    asked: list[range] = []

    def evaluate(train: pl.DataFrame) -> pl.DataFrame:
        offset = bars["ts"].search_sorted(train["ts"][0])
        asked.append(range(offset, offset + train.height))
        return evaluate_grid(train, "1 min", request.spec())

    run_grid(bars, "1 min", request.spec(), holdout=holdout, folds=folds, evaluate=evaluate)
    assert asked == grid_slices(bars.height, request.spec(), holdout, folds)
    assert len(asked) == 1 + (folds or 0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"symbol": "AAPL", "symbols": ["MSFT"]}, "not both"),
    ({"symbols": []}, "at least 1"),
    ({"symbols": ["aapl", "AAPL"]}, "more than once"),
])
def test_grid_request_takes_symbol_or_symbols(fields: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        GridRequest(**fields)  # type: ignore[arg-type]
    assert GridRequest().grid_symbols == ("AAPL",)
    saved = GridRequest(symbol="msft").model_dump_json()  # old saved parameters: one symbol
    assert GridRequest.model_validate_json(saved).grid_symbols == ("MSFT",)


def test_chunks_read_each_series_once_per_process(stored: TableLocation) -> None:  # noqa: F811
    """A chunk names its bars; the process that runs it reads the series on first use and keeps it."""
    from tasks.grid import BarsSeries, series_bars

    request = GridRequest(grid=GRID, symbol="AAPL", start=START, end=NOW)
    version = load_bars(stored, request, "AAPL", None)[1]
    series = BarsSeries(stored, request, "AAPL", version)
    first = series_bars(series)
    assert series_bars(BarsSeries(stored, request, "AAPL", version)) is first
    assert first.equals(load_bars(stored, request, "AAPL", version)[0])
    other = series_bars(BarsSeries(stored, request, "MSFT", version))
    assert other is not first and not other.equals(first)


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


def test_grid_cli_on_several_symbols_stores_one_run_equal_to_the_flow(stored: TableLocation,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """`--symbol` repeated: one run id, each symbol ranked on its own and equal to the one-symbol grid, one heatmap
    per symbol, and the run re-runs bit for bit from its rows."""
    from ibkr_flows.backtest.catalog import rerun
    from ibkr_flows.backtest.grid import run_grid
    from ibkr_flows.backtest.runner import grid_config

    heatmap = tmp_path / "heat.png"
    result = CliRunner().invoke(app, [
        "backtest", "grid", "--symbol", "AAPL", "--symbol", "msft", "--start", "2024-07-10", "--end", "2024-07-13",
        "--range", "fast_period=3:9:3", "--range", "slow_period=10,20,30", "--holdout", "0.3",
        "--heatmap", str(heatmap)], env={"IBKR_DATA_DIR": str(stored.root), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("top 9 of 9 by sharpe") == 2
    run_id = result.output.rsplit("run ", 1)[1].split()[0]
    rows = read_grid_results(stored).filter(run_id=run_id)
    assert rows.height == 18 and sorted(rows["symbol"].unique()) == ["AAPL", "MSFT"]
    for symbol in ("AAPL", "MSFT"):
        assert (tmp_path / f"heat-{symbol}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        one = GridRequest(grid={"fast_period": [3, 6, 9], "slow_period": [10, 20, 30]}, symbol=symbol,
                          start=START, end=datetime(2024, 7, 13, tzinfo=UTC), holdout=0.3)
        bars, _ = load_bars(stored, one, symbol, None)
        alone = run_grid(bars, "1 min", one.spec(), grid_config(stored, one), holdout=0.3)
        best = rows.filter(symbol=symbol, rank=1)
        assert json.loads(best["params"][0]) == alone.best_params
        assert best["sharpe"][0] == alone.top(1)["sharpe"][0]
    again = rerun(stored, run_id)
    assert again.rows_compared == 18 and again.differences == []


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
