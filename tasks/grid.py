"""Prefect tasks for grid backtests: read the bars once, evaluate chunks of combinations, publish, store.

Tasks take polars frames, so caching on inputs is off (hashing a million-row frame per call would cost more than
the chunk)."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ibkr_flows.backtest.engine import BacktestConfig
from ibkr_flows.backtest.grid import Combination, GridReport, GridSpec, evaluate_grid
from ibkr_flows.backtest.grid.publish import grid_markdown, heatmap_png
from ibkr_flows.backtest.report import format_value
from ibkr_flows.backtest.runner import BacktestRequest, code_version, load_bars
from storage.grid_results_table import append_grid_results, grid_rows
from storage.location import TableLocation


@task(name="load-grid-bars", cache_policy=NO_CACHE)
def load_grid_bars(request: BacktestRequest, location: TableLocation) -> tuple[pl.DataFrame, int]:
    """One read of one pinned table version: every chunk and every fold sees the same bars."""
    return load_bars(location, request, request.symbols[0], request.table_version)


@task(name="evaluate-grid-chunk", task_run_name="grid chunk of {combinations_count} combinations",
      cache_policy=NO_CACHE)
def evaluate_chunk(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig,
                   combinations: list[Combination], combinations_count: int) -> pl.DataFrame:
    return evaluate_grid(bars, bar_size, spec, base, combinations)


@task(name="publish-grid", cache_policy=NO_CACHE)
def publish_grid(report: GridReport, *, symbol: str, table_version: int, run_id: str, heatmap_axes: tuple[str, str],
                 top_n: int) -> None:
    x, y = heatmap_axes
    heatmap = heatmap_png(report.results, x, y, report.rank_by) if {x, y} <= set(report.results.columns) else None
    create_markdown_artifact(
        key="grid-summary", description=f"{report.combinations_tried} combinations of {report.strategy} on {symbol}",
        markdown=grid_markdown(report, symbol=symbol, table_version=table_version, code_version=code_version(),
                               run_id=run_id, heatmap=heatmap))
    top = report.top(top_n)
    create_table_artifact(key="grid-top", description=f"top {top.height} by {report.rank_by}", table=[
        {k: format_value(k, v) if isinstance(v, float) else v for k, v in row.items()}
        for row in top.iter_rows(named=True)])


@task(name="store-grid-results", cache_policy=NO_CACHE)
def store_grid_results(report: GridReport, location: TableLocation, *, request: BacktestRequest, spec: GridSpec,
                       table_version: int, run_id: str) -> int:
    identity = {
        "run_id": run_id, "flow_run_id": str(flow_run.id or "local"), "symbol": request.symbols[0],
        "strategy": spec.strategy, "rank_by": spec.rank_by, "bar_size": request.bar_size,
        "range_start": request.start, "range_end": request.end, "bars_version": table_version,
        "code_version": code_version(),
    }
    return append_grid_results(location, grid_rows(report.results, list(spec.axes), identity))
