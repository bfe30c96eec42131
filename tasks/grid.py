"""Prefect tasks for grid backtests: read the bars once, evaluate chunks of combinations, publish, store.

A chunk's rows depend only on the bars (one pinned table version), the chunk's combinations, the costs and the
code, so chunks are cached on exactly those: a grid re-run after a crash, or the same grid asked again, skips the
chunks already evaluated. The key never hashes the bars themselves (hashing a million-row frame per call would
cost more than the chunk). The read, the publish and the store retry what is transient for them (`tasks.retry`);
a chunk never retries (a failure there is in the data or the parameters).

A chunk is not handed the bars: it gets a `BarsSlice` (which series at which table version, which rows) and the
process that runs it reads that series once and keeps it (`series_bars`). On threads the flow's own read is
reused; on Dask each worker reads each symbol once instead of unpickling the bars with every chunk. Each process
also warms the numba kernels a chunk needs once (`warm_kernels`), timed, so a worker's compile (or on-disk cache
load) is seen apart from its chunks; a Dask worker started with the preload (`flows.grid_preload`)
has warmed every built-in kernel before its first task (`warm_every_kernel`). `kernel_warmups` records each warm-up
and when it happened."""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from ibkr_flows.backtest.continuous_bars import is_continuous
from ibkr_flows.backtest.engine import BacktestConfig
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.grid import Combination, GridReport, GridSpec, evaluate_grid
from ibkr_flows.backtest.grid.publish import grid_markdown, grid_symbols_markdown, heatmap_png
from ibkr_flows.backtest.grid.store import store_grid_reports
from ibkr_flows.backtest.report import format_value
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import code_version, load_bars
from ibkr_flows.backtest.strategies import STRATEGIES
from storage.continuous_table import continuous_path
from storage.location import TableLocation
from tasks.retry import PUBLISH_POLICY, READ_POLICY, STORE_POLICY

_READ_FIELDS = {"start", "end", "bar_size", "what_to_show", "use_rth", "adjust"}
"""What of a request decides which bars `load_bars` returns (besides the symbol and the table version)."""


@dataclass(frozen=True)
class BarsSeries:
    """One symbol's bars as the grid reads them, named instead of carried: small to send to a worker, and equal
    to what the flow read because the table version is pinned."""

    location: TableLocation
    request: GridRequest
    symbol: str
    version: int

    @property
    def key(self) -> str:
        return (f"{self.location.bars}@{self.version}|{self.symbol}|"
                f"{self.request.model_dump_json(include=_READ_FIELDS)}")


@dataclass(frozen=True)
class BarsSlice:
    """Rows [offset, offset + length) of a series: the in-sample part or a walk-forward block."""

    series: BarsSeries
    offset: int
    length: int


@dataclass(frozen=True)
class KernelWarmup:
    """One numba warm-up in this process: the kernels of `strategy` (with realism options if `exits`), how long it
    took (compile, or load from numba's on-disk cache, wait for another process's warm-up included), and when: at
    "worker start" (`warm_every_kernel`, the Dask preload) or before a "first chunk" (`warm_kernels`)."""

    strategy: str
    exits: bool
    seconds: float
    at: Literal["worker start", "first chunk"]


_series_memo: dict[str, pl.DataFrame] = {}
_series_lock = threading.Lock()
_spec_memo: dict[str, GridSpec] = {}
_spec_lock = threading.Lock()
_warm_lock = threading.Lock()
kernel_warmups: dict[tuple[str, bool], KernelWarmup] = {}
"""This process's warm-ups by (strategy, realism options on): a chunk whose kernels are here runs warm."""


def remember_bars(series: BarsSeries, bars: pl.DataFrame) -> None:
    """The flow's read, kept for chunks run in the flow's process (the thread runner) so they never read again."""
    with _series_lock:
        _series_memo[series.key] = bars


def series_bars(series: BarsSeries) -> pl.DataFrame:
    """The series' bars, read at most once per process (one lock: two threads asking at once read once)."""
    with _series_lock:
        bars = _series_memo.get(series.key)
        if bars is None:
            bars, _ = load_bars(series.location, series.request, series.symbol, series.version)
            _series_memo[series.key] = bars
        return bars


@contextmanager
def _one_warmup_per_machine() -> Iterator[None]:
    """Processes of one machine warm up in turn: the first compiles and writes numba's on-disk cache, the others
    then load it (~0.5 s) instead of all compiling at once on the same cores (measured with 2 Dask workers on 2
    cores and an empty cache: 10 s each in parallel, against 5 s for one). No lock where `fcntl` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: every process compiles, as numba alone would do
        yield
        return
    with (Path(tempfile.gettempdir()) / "ibkr-flows-grid-numba.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def warm_kernels(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig,
                 combination: Combination) -> KernelWarmup:
    """Run one combination on a short head of the bars once per process and kernel, so numba compiles (or loads
    its cache) here, timed, and not inside the first chunk; nothing to do when the kernels are already warm (an
    earlier chunk, or the preload at worker start)."""
    with _warm_lock:
        warmup = kernel_warmups.get((spec.strategy, base.exits.active))
        if warmup is None:
            warmup = _warm_up(bars.head(min(bars.height, spec.max_warmup_bars + 50)), bar_size, spec, base,
                              combination, "first chunk")
            get_run_logger().info("numba kernels of %s ready in this process in %.2f s (compile or on-disk cache "
                                  "load)", spec.strategy, warmup.seconds)
        return warmup


def warm_every_kernel() -> list[KernelWarmup]:
    """Every registered strategy's kernels, without and with realism options (a stop-loss), on synthetic bars with
    the default costs: what a Dask worker's preload runs at start, so that no chunk compiles. Returns the warm-ups
    done now (none for kernels already warm)."""
    done = []
    with _warm_lock:
        for name in STRATEGIES:
            spec = GridSpec(name, {})  # the strategy's defaults: one combination
            bars = _synthetic_bars(spec.max_warmup_bars + 50)
            for exits in (ExitRules(), ExitRules(stop_loss_pct=2.0)):
                if (name, exits.active) not in kernel_warmups:
                    done.append(_warm_up(bars, "1 min", spec, BacktestConfig(name, exits=exits),
                                         spec.combinations()[0], "worker start"))
    return done


def _warm_up(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig, combination: Combination,
             at: Literal["worker start", "first chunk"]) -> KernelWarmup:
    """One combination evaluated, timed and recorded in `kernel_warmups` (the caller holds `_warm_lock`)."""
    started = time.perf_counter()
    with _one_warmup_per_machine():
        evaluate_grid(bars, bar_size, spec, base, [combination])
    warmup = KernelWarmup(spec.strategy, base.exits.active, time.perf_counter() - started, at)
    kernel_warmups[(spec.strategy, base.exits.active)] = warmup
    return warmup


def _synthetic_bars(n: int) -> pl.DataFrame:
    """`n` one-minute bars of a seeded random walk, enough for every strategy to trade (and so to compile)."""
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.002, n)))
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    return pl.DataFrame({"ts": pl.datetime_range(start, start + timedelta(minutes=n - 1), "1m", eager=True,
                                                 time_zone="UTC"),
                         "open": np.r_[100.0, close[:-1]], "high": close * 1.001, "low": close * 0.998,
                         "close": close, "volume": 1000.0})


@task(name="load-grid-bars", cache_policy=NO_CACHE, **READ_POLICY)
def load_grid_bars(request: GridRequest, location: TableLocation, symbol: str, version: int | None
                   ) -> tuple[pl.DataFrame, int]:
    """One read of one pinned table version (None: the latest, which the first symbol's read then pins): every
    symbol, chunk and fold sees the same table."""
    return load_bars(location, request, symbol, version)


def chunk_key(_context: Any, parameters: dict[str, Any]) -> str:
    """What a chunk's rows depend on, the bars named by their table version and slice instead of hashed (the key
    is a file name in the result store, hence the digest)."""
    inputs = [str(parameters[name]) for name in ("bars_id", "bar_size", "spec_id", "base", "combinations")]
    return "grid-chunk-" + hashlib.sha256("|".join([*inputs, code_version()]).encode()).hexdigest()


@task(name="evaluate-grid-chunk", task_run_name="{symbol}: grid chunk of {combinations_count} combinations",
      cache_key_fn=chunk_key, cache_expiration=timedelta(days=7), persist_result=True)
def evaluate_chunk(bars: BarsSlice, bar_size: str, base: BacktestConfig, combinations: list[Combination],
                   combinations_count: int, *, symbol: str, bars_id: str, spec_id: str) -> pl.DataFrame:
    spec = grid_spec(bars.series.request)
    train = series_bars(bars.series).slice(bars.offset, bars.length)
    warm_kernels(train, bar_size, spec, base, combinations[0])
    return evaluate_grid(train, bar_size, spec, base, combinations)


def grid_spec(request: GridRequest) -> GridSpec:
    """The request's grid, built once per process (every combination validated: ~20 ms for 174 pairs). A chunk
    finds it through its bars' request rather than carrying it: a GridSpec holds one strategy per combination,
    which Prefect (looking for futures), Dask (hashing a task key) and pickle would walk with every chunk, ~10 ms
    of the flow's time per chunk submitted."""
    key = request.model_dump_json(include={"strategy", "grid", "rank_by"})
    with _spec_lock:
        spec = _spec_memo.get(key)
        if spec is None:
            spec = _spec_memo[key] = request.spec()
        return spec


THREAD_CHUNKS = 8
"""Chunks per symbol and slice on threads, where a task costs ~0.03 s: fine progress for next to nothing."""


def chunks_per_slice(requested: int | None, slices: int) -> int:
    """`requested`, or fitted to the flow's task runner: `THREAD_CHUNKS` on threads; on Dask, where a Prefect task
    costs ~0.2-0.3 s in the worker (it rebuilds the task's settings and two API clients, each loading the CA bundle,
    and checks the server's API version), one chunk per worker thread across all `slices` (symbols x in-sample and
    walk-forward blocks), at least one per slice: more would buy progress steps at a price larger than the work
    of a typical chunk."""
    if requested is not None:
        return requested
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr] - called inside the flow
    if isinstance(runner, ThreadPoolTaskRunner):
        return THREAD_CHUNKS
    from prefect_dask import DaskTaskRunner

    if not isinstance(runner, DaskTaskRunner):
        return THREAD_CHUNKS
    threads = sum(runner.client.nthreads().values())
    chunks = max(1, math.ceil(threads / max(1, slices)))
    get_run_logger().info("Dask: %d chunk(s) per symbol and slice for %d worker thread(s) and %d slice(s)", chunks,
                          threads, slices)
    return chunks


def submit_chunks(bars: BarsSlice, train: pl.DataFrame, base: BacktestConfig, batches: list[list[Combination]]
                  ) -> list[PrefectFuture[pl.DataFrame]]:
    """Every chunk of combinations of the request's grid on `train` (the rows `bars` names) to the task runner;
    the cache names the slice by its table version, series and first/last bar instead of hashing it."""
    series = bars.series
    table = continuous_path(series.location) if is_continuous(series.symbol) else series.location.bars
    bars_id = (f"{table}@{series.version}|"
               f"{series.request.model_dump_json(include={'what_to_show', 'use_rth', 'roll', 'roll_adjust'})}|"
               f"{series.symbol}|"
               f"{train['ts'].min()}..{train['ts'].max()} ({train.height} bars)")
    spec = grid_spec(series.request)
    spec_id = repr((spec.strategy, dict(spec.params), spec.rank_by))
    return [evaluate_chunk.submit(bars, series.request.bar_size, base, batch, len(batch), symbol=series.symbol,
                                  bars_id=bars_id, spec_id=spec_id) for batch in batches]


@task(name="publish-grid", cache_policy=NO_CACHE, **PUBLISH_POLICY)
def publish_grid(reports: dict[str, GridReport], request: GridRequest, *, table_version: int, run_id: str) -> None:
    """grid-summary (one symbol: its summary; several: each one's best cell side by side, then each summary) and
    grid-top (the top rows of each symbol, with a symbol column when there are several)."""
    x, y = request.heatmap_x, request.heatmap_y
    sections = {}
    for symbol, report in reports.items():
        heatmap = heatmap_png(report.results, x, y, report.rank_by) if {x, y} <= set(report.results.columns) else None
        sections[symbol] = grid_markdown(
            report, symbol=symbol, data=request.data_text(symbol, table_version), code_version=code_version(),
            run_id=run_id, heatmap=heatmap, heatmap_axes=(x, y), heading="#" if len(reports) == 1 else "##")
    tried = sum(r.combinations_tried for r in reports.values())
    first = next(iter(reports.values()))
    create_markdown_artifact(
        key="grid-summary", description=f"{tried} combinations of {first.strategy} on {', '.join(reports)}",
        markdown=next(iter(sections.values())) if len(reports) == 1 else grid_symbols_markdown(reports, sections))
    several = len(reports) > 1
    rows = [{**({"symbol": symbol} if several else {}),
             **{k: format_value(k, v) if isinstance(v, float) else v for k, v in row.items()}}
            for symbol, report in reports.items() for row in report.top(request.top_n).iter_rows(named=True)]
    per = "per symbol " if several else ""
    create_table_artifact(key="grid-top", description=f"top {request.top_n} {per}by {first.rank_by}", table=rows)


@task(name="store-grid-results", cache_policy=NO_CACHE, **STORE_POLICY)
def store_grid_results(reports: dict[str, GridReport], location: TableLocation, request: GridRequest, *,
                       table_version: int, run_id: str) -> int:
    """Every combination of every symbol in one commit under one run id (a retried store never doubles them),
    ranked within its symbol; each row's request names its own symbol, so it re-runs like a one-symbol grid."""
    return store_grid_reports(location, reports, request, table_version=table_version, run_id=run_id,
                              flow_run_id=str(flow_run.id or "local"))
