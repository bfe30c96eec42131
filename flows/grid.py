"""Parameter-grid backtests: one pinned read of the bars, combinations fanned out in coarse chunks, the best
cell with its overfitting checks, every combination stored."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import polars as pl
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.ingest import BarSize, WhatToShow
from ibkr_flows.backtest.engine import Mode
from ibkr_flows.backtest.grid import GridReport, GridSpec, run_grid
from ibkr_flows.backtest.runner import BacktestRequest, CommissionName, SizingName
from tasks.grid import evaluate_chunk, load_grid_bars, publish_grid, store_grid_results
from tasks.ingest import table_location

DEFAULT_GRID = {"fast_period": {"start": 5, "stop": 50, "step": 5}, "slow_period": {"start": 20, "stop": 200,
                                                                                   "step": 10}}


def grid_task_runner() -> TaskRunner:
    """Threads by default (numba and polars release the GIL; two cores, two threads). `IBKR_GRID_RUNNER=dask`
    selects prefect-dask: `IBKR_DASK_ADDRESS=tcp://host:8786` for an existing cluster (its workers need this
    project importable and PREFECT_API_URL set), otherwise a temporary LocalCluster. Read when the flow module is
    imported, so a deployment sets it in its work pool's environment."""
    if os.environ.get("IBKR_GRID_RUNNER", "threads") != "dask":
        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("IBKR_GRID_THREADS", "2")))
    from prefect_dask import DaskTaskRunner

    address = os.environ.get("IBKR_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": int(os.environ.get("IBKR_DASK_WORKERS", "2")),
                                          "threads_per_worker": 1, "dashboard_address": None})


@flow(name="backtest-grid", log_prints=True, task_runner=grid_task_runner())
def backtest_grid(
    strategy: str = "sma_crossover",
    grid: dict[str, Any] = DEFAULT_GRID,
    symbol: str = "AAPL",
    start: datetime = datetime.fromisoformat("2024-07-01T00:00:00+00:00"),  # noqa: B008
    end: datetime = datetime.fromisoformat("2024-07-13T00:00:00+00:00"),  # noqa: B008
    bar_size: BarSize = "1 min",
    what_to_show: WhatToShow = "TRADES",
    use_rth: bool = True,
    rank_by: str = "sharpe",
    holdout: float | None = 0.3,
    folds: int | None = None,
    chunks: int = 8,
    top_n: int = 20,
    heatmap_x: str = "fast_period",
    heatmap_y: str = "slow_period",
    cash: float = 100_000.0,
    commission: CommissionName = "ibkr_fixed",
    commission_rate: float = 0.0,
    slippage_bps: float = 0.0,
    sizing: SizingName = "all_in",
    size: float = 0.0,
    mode: Mode = "long_only",
    table_version: int | None = None,
    data_dir: str | None = None,
) -> GridReport:
    """Backtest every combination of `grid` (per parameter: a list, or {start, stop, step} with stop included)
    on one symbol's stored bars, rank by `rank_by`, and report the best cell with an out-of-sample holdout
    (`holdout`, share of the bars at the end), an optional walk-forward (`folds`), the deflated Sharpe ratio and
    a plateau score. Artifacts: grid-summary (with a heatmap of heatmap_x x heatmap_y), grid-top (table), and a
    live progress bar; every combination goes to the grid_results table.
    """
    spec = GridSpec(strategy, grid, rank_by)
    request = BacktestRequest(
        strategy=strategy, symbols=(symbol.strip().upper(),), start=start, end=end, bar_size=bar_size,
        what_to_show=what_to_show, use_rth=use_rth, cash=cash, commission=commission,
        commission_rate=commission_rate, slippage_bps=slippage_bps, sizing=sizing, size=size, mode=mode,
        table_version=table_version)
    location = table_location(data_dir)
    bars, version = load_grid_bars(request, location)
    base = request.config()
    batches = spec.chunks(chunks)
    evaluations = 1 + (folds or 0)
    progress = create_progress_artifact(0.0, key="grid-progress", description=f"{spec.size} combinations")
    done = 0

    def evaluate(train: pl.DataFrame) -> pl.DataFrame:
        nonlocal done
        futures = [evaluate_chunk.submit(train, bar_size, spec, base, batch, len(batch)) for batch in batches]
        parts = []
        for future in futures:
            parts.append(future.result())
            done += 1
            update_progress_artifact(progress, 100.0 * done / (len(batches) * evaluations))
        return pl.concat(parts)

    report = run_grid(bars, bar_size, spec, base, holdout=holdout, folds=folds, evaluate=evaluate)
    run_id = uuid.uuid4().hex[:12]
    publish_grid(report, symbol=request.symbols[0], table_version=version, run_id=run_id,
                 heatmap_axes=(heatmap_x, heatmap_y), top_n=top_n)
    store_grid_results(report, location, request=request, spec=spec, table_version=version, run_id=run_id)
    print(f"{report.combinations_tried} combinations in {report.elapsed_s:.2f} s; best {report.best_params} "
          f"{report.rank_by}={report.results[report.rank_by][0]}; deflated Sharpe {report.deflated_sharpe}")
    return report
