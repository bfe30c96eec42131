"""Parameter-grid backtests: one pinned read of each symbol's bars, symbols and combinations fanned out in coarse
chunks, each symbol's best cell with its overfitting checks, every combination stored."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import polars as pl
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ibkr_flows.backtest.contract_terms import read_contract_terms
from ibkr_flows.backtest.grid import GridReport, GridSpec, holdout_split, run_grid, walk_forward_folds
from ibkr_flows.backtest.request import GridRequest
from storage.location import TableLocation
from tasks.grid import (
    BarsSeries,
    BarsSlice,
    chunks_per_slice,
    grid_spec,
    load_grid_bars,
    publish_grid,
    remember_bars,
    store_grid_results,
    submit_chunks,
)


def grid_task_runner() -> TaskRunner:
    """Threads by default (numba and polars release the GIL; two cores, two threads). `IBKR_GRID_RUNNER=dask`
    selects prefect-dask: `IBKR_DASK_ADDRESS=tcp://host:8786` for an existing cluster (its workers need this
    project importable and PREFECT_API_URL set; started with the preload `flows.grid_preload`,
    its scheduler and workers have imported the flow and warmed numba before the first grid), otherwise a
    temporary LocalCluster. The temporary cluster does without the preload: its workers would import and warm at
    start instead of in their first chunks, no faster (measured), and with an empty numba cache they would compile
    every kernel instead of the grid's. Read when the flow module is imported, so a deployment sets it in its work
    pool's environment."""
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
) -> GridReport | dict[str, GridReport]:
    """Backtest every combination of `request.grid` on each symbol's stored bars, rank by `rank_by`, and report
    each symbol's best cell with an out-of-sample holdout, an optional walk-forward (`folds`), the deflated Sharpe
    ratio and a plateau score. Artifacts: grid-summary (with a heatmap of heatmap_x x heatmap_y per symbol),
    grid-top (table), and a live progress bar; every combination goes to the grid_results table. Empty `data_dir`
    = IBKR_DATA_DIR. Returns the report for `symbol`, or one report per symbol for `symbols`.

    Every symbol's chunks of every slice (in-sample, walk-forward blocks) are submitted before any is awaited, so
    the task runner always has work: symbols fan out as well as chunks."""
    location = TableLocation.at(data_dir)
    spec, symbols = grid_spec(request), request.grid_symbols  # the chunks' own, in this process
    first, version = load_grid_bars(request, location, symbols[0], request.table_version)
    bars = {symbols[0]: first}  # the first read pins the table version for the others
    for symbol in symbols[1:]:
        bars[symbol], _ = load_grid_bars(request, location, symbol, version)
    terms = read_contract_terms(location, list(symbols))  # after the bars: missing bars are the error to report
    slices = {symbol: grid_slices(bars[symbol].height, spec, request.holdout, request.folds) for symbol in symbols}
    batches = spec.chunks(chunks_per_slice(request.chunks, sum(map(len, slices.values()))))
    pending: dict[tuple[str, int, int], list[PrefectFuture[pl.DataFrame]]] = {}
    for symbol in symbols:
        series = BarsSeries(location, request, symbol, version)
        remember_bars(series, bars[symbol])
        for rows in slices[symbol]:
            train = bars[symbol].slice(rows.start, len(rows))
            pending[(symbol, rows.start, len(rows))] = submit_chunks(
                BarsSlice(series, rows.start, len(rows)), train, request.config(terms=terms[symbol]), batches)
    progress = create_progress_artifact(0.0, key="grid-progress", description=f"{spec.size} combinations x "
                                        f"{len(symbols)} symbol(s)")
    done, total = 0, len(pending) * len(batches)

    def evaluator(symbol: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
        def evaluate(train: pl.DataFrame) -> pl.DataFrame:
            nonlocal done
            offset = bars[symbol]["ts"].search_sorted(train["ts"][0])
            futures = pending.pop((symbol, offset, train.height), None)
            if futures is None:  # a slice `grid_slices` did not foresee: submitted now rather than wrong
                futures = submit_chunks(BarsSlice(BarsSeries(location, request, symbol, version), offset,
                                                  train.height), train, request.config(terms=terms[symbol]), batches)
            parts = []
            for future in futures:
                parts.append(future.result())
                done += 1
                update_progress_artifact(progress, min(100.0, 100.0 * done / total))
            return pl.concat(parts)
        return evaluate

    reports = {symbol: run_grid(bars[symbol], request.bar_size, spec, request.config(terms=terms[symbol]),
                                holdout=request.holdout, folds=request.folds, evaluate=evaluator(symbol))
               for symbol in symbols}
    run_id = uuid.uuid4().hex[:12]
    publish_grid(reports, request, table_version=version, run_id=run_id)
    store_grid_results(reports, location, request, table_version=version, run_id=run_id)
    for symbol, report in reports.items():
        print(f"{symbol}: {report.combinations_tried} combinations in {report.elapsed_s:.2f} s; best "
              f"{report.best_params} {report.rank_by}={report.results[report.rank_by][0]}; deflated Sharpe "
              f"{report.deflated_sharpe}")
    return reports if request.symbols is not None else reports[symbols[0]]


def grid_slices(n_bars: int, spec: GridSpec, holdout: float | None, folds: int | None) -> list[range]:
    """The row ranges `run_grid` will evaluate the grid on (in-sample, then each walk-forward training block), so
    their chunks can be submitted up front; a range too short for the grid is left to `run_grid`, which refuses
    it with a message naming the split."""
    in_sample = range(n_bars) if holdout is None else holdout_split(n_bars, holdout)[0]
    slices = [in_sample] + ([] if folds is None else [fold.train for fold in walk_forward_folds(len(in_sample),
                                                                                                 folds)])
    return [rows for rows in slices if len(rows) >= spec.max_warmup_bars + 3]
