"""Parameter-grid backtests: one pinned read of the bars, combinations fanned out in coarse chunks, the best
cell with its overfitting checks, every combination stored."""

from __future__ import annotations

import os
import uuid

import polars as pl
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ibkr_flows.backtest.grid import GridReport, run_grid
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import grid_config
from storage.location import TableLocation
from tasks.grid import load_grid_bars, publish_grid, store_grid_results, submit_chunks


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
    request: GridRequest = GridRequest(),  # noqa: B008 - Prefect shows the default in the UI form
    data_dir: str | None = None,
) -> GridReport:
    """Backtest every combination of `request.grid` on one symbol's stored bars, rank by `rank_by`, and report the
    best cell with an out-of-sample holdout, an optional walk-forward (`folds`), the deflated Sharpe ratio and a
    plateau score. Artifacts: grid-summary (with a heatmap of heatmap_x x heatmap_y), grid-top (table), and a
    live progress bar; every combination goes to the grid_results table. Empty `data_dir` = IBKR_DATA_DIR.
    """
    location = TableLocation.at(data_dir)
    spec, base = request.spec(), grid_config(location, request)
    bars, version = load_grid_bars(request, location)
    batches = spec.chunks(request.chunks)
    evaluations = 1 + (request.folds or 0)
    progress = create_progress_artifact(0.0, key="grid-progress", description=f"{spec.size} combinations")
    done = 0

    def evaluate(train: pl.DataFrame) -> pl.DataFrame:
        nonlocal done
        futures = submit_chunks(train, request, spec, base, batches, table=f"{location.bars}@{version}")
        parts = []
        for future in futures:
            parts.append(future.result())
            done += 1
            update_progress_artifact(progress, 100.0 * done / (len(batches) * evaluations))
        return pl.concat(parts)

    report = run_grid(bars, request.bar_size, spec, base, holdout=request.holdout, folds=request.folds,
                      evaluate=evaluate)
    run_id = uuid.uuid4().hex[:12]
    publish_grid(report, request, table_version=version, run_id=run_id)
    store_grid_results(report, location, request, table_version=version, run_id=run_id)
    print(f"{report.combinations_tried} combinations in {report.elapsed_s:.2f} s; best {report.best_params} "
          f"{report.rank_by}={report.results[report.rank_by][0]}; deflated Sharpe {report.deflated_sharpe}")
    return report
