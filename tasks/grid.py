"""Prefect tasks for grid backtests: read the bars once, evaluate chunks of combinations, publish, store.

A chunk's rows depend only on the bars (one pinned table version), the chunk's combinations, the costs and the
code, so chunks are cached on exactly those: a grid re-run after a crash, or the same grid asked again, skips the
chunks already evaluated. The key never hashes the bars themselves (hashing a million-row frame per call would
cost more than the chunk). The read, the publish and the store retry what is transient for them (`tasks.retry`);
a chunk never retries (a failure there is in the data or the parameters)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from ibkr_flows.backtest.engine import BacktestConfig
from ibkr_flows.backtest.grid import Combination, GridReport, GridSpec, evaluate_grid
from ibkr_flows.backtest.grid.publish import grid_markdown, heatmap_png
from ibkr_flows.backtest.grid.store import store_grid_report
from ibkr_flows.backtest.report import format_value
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import code_version, load_bars
from storage.location import TableLocation
from tasks.retry import PUBLISH_POLICY, READ_POLICY, STORE_POLICY


@task(name="load-grid-bars", cache_policy=NO_CACHE, **READ_POLICY)
def load_grid_bars(request: GridRequest, location: TableLocation) -> tuple[pl.DataFrame, int]:
    """One read of one pinned table version: every chunk and every fold sees the same bars."""
    return load_bars(location, request, request.symbol, request.table_version)


def chunk_key(_context: Any, parameters: dict[str, Any]) -> str:
    """What a chunk's rows depend on, the bars named by their table version and slice instead of hashed (the key
    is a file name in the result store, hence the digest)."""
    inputs = [str(parameters[name]) for name in ("bars_id", "bar_size", "spec_id", "base", "combinations")]
    return "grid-chunk-" + hashlib.sha256("|".join([*inputs, code_version()]).encode()).hexdigest()


@task(name="evaluate-grid-chunk", task_run_name="grid chunk of {combinations_count} combinations",
      cache_key_fn=chunk_key, cache_expiration=timedelta(days=7), persist_result=True)
def evaluate_chunk(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig,
                   combinations: list[Combination], combinations_count: int, *, bars_id: str, spec_id: str
                   ) -> pl.DataFrame:
    return evaluate_grid(bars, bar_size, spec, base, combinations)


def submit_chunks(train: pl.DataFrame, request: GridRequest, spec: GridSpec, base: BacktestConfig,
                  batches: list[list[Combination]], *, table: str) -> list[PrefectFuture[pl.DataFrame]]:
    """Every chunk of combinations on `train` (a slice of one pinned `table` version) to the task runner; the
    cache names the slice by its table version, series and first/last bar instead of hashing it."""
    series = request.model_dump_json(include={"symbol", "what_to_show", "use_rth"})
    bars_id = f"{table}|{series}|{train['ts'].min()}..{train['ts'].max()} ({train.height} bars)"
    spec_id = repr((spec.strategy, dict(spec.params), spec.rank_by))
    return [evaluate_chunk.submit(train, request.bar_size, spec, base, batch, len(batch), bars_id=bars_id,
                                  spec_id=spec_id) for batch in batches]


@task(name="publish-grid", cache_policy=NO_CACHE, **PUBLISH_POLICY)
def publish_grid(report: GridReport, request: GridRequest, *, table_version: int, run_id: str) -> None:
    x, y = request.heatmap_x, request.heatmap_y
    heatmap = heatmap_png(report.results, x, y, report.rank_by) if {x, y} <= set(report.results.columns) else None
    create_markdown_artifact(
        key="grid-summary",
        description=f"{report.combinations_tried} combinations of {report.strategy} on {request.symbol}",
        markdown=grid_markdown(report, symbol=request.symbol, table_version=table_version, adjust=request.adjust,
                               code_version=code_version(), run_id=run_id, heatmap=heatmap,
                               heatmap_axes=(x, y)))
    top = report.top(request.top_n)
    create_table_artifact(key="grid-top", description=f"top {top.height} by {report.rank_by}", table=[
        {k: format_value(k, v) if isinstance(v, float) else v for k, v in row.items()}
        for row in top.iter_rows(named=True)])


@task(name="store-grid-results", cache_policy=NO_CACHE, **STORE_POLICY)
def store_grid_results(report: GridReport, location: TableLocation, request: GridRequest, *, table_version: int,
                       run_id: str) -> int:
    return store_grid_report(location, report, request, table_version=table_version, run_id=run_id,
                             flow_run_id=str(flow_run.id or "local"))
