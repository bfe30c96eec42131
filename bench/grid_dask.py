"""The `backtest-grid` flow on threads (2) against Dask (2 worker processes), same grid, same bars, real Prefect.

Grid: SMA crossover, fast 5..50 step 5 x slow 20..200 step 10 (174 pairs with fast < slow) on 4 symbols x 100k
one-minute bars (synthetic, merged into a Delta bars table), 30 % holdout, `--chunks` tasks per symbol and slice.
Each runner runs the flow in its own process (as a deployment would), against one `prefect server` on loopback
(in ephemeral mode every Dask worker would start a server of its own), with a result store of its own, so no run
finds another's cached chunks. Runs:
- threads: `IBKR_GRID_RUNNER=threads`, 2 threads in the flow's process;
- dask (temporary cluster): `IBKR_GRID_RUNNER=dask`, the flow starts a LocalCluster of 2 workers and stops it;
- dask (running cluster): a LocalCluster of 2 single-thread workers started here first (its start-up timed apart),
  the flow on it through `IBKR_DASK_ADDRESS`; afterwards each worker says how long its numba warm-up took
  (`tasks.grid.kernel_warmup_s`: compile, or load from numba's on-disk cache);
- dask (running cluster, again): the same flow once more on the same cluster (a result store of its own, so it
  computes every chunk again), with workers that have imported the project and warmed numba: what a deployment
  on a standing cluster sees from its second run on.
Printed per run: the flow's wall time (from the call to its return, in its process) and the process's wall time
(with Python and Prefect start-up), then the ratios dask / threads (< 1: Dask is faster).
`--cold` gives every run an empty NUMBA_CACHE_DIR, so each process compiles (threads: once, in the flow's process;
Dask: once per worker).
Run: `.venv/bin/python bench/grid_dask.py [--symbols 4] [--bars 100000] [--chunks 4] [--folds N] [--cold]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backtest_engine import minute_bars
from storage.bars_table import merge_bars
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS
from tests.prefect_server import prefect_server

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ["AAPL", "MSFT", "SPY", "QQQ", "IWM", "NVDA", "AMZN", "META"]
RUN_FLOW = """
import json, sys, time
from flows.grid import backtest_grid
from ibkr_flows.backtest.request import GridRequest
request = GridRequest.model_validate_json(sys.argv[1])
started = time.perf_counter()
reports = backtest_grid(request=request, data_dir=sys.argv[2])
print("RESULT", json.dumps({"flow_s": time.perf_counter() - started,
                            "best": {s: r.best_params for s, r in reports.items()}}))
"""


def seed(location: TableLocation, symbols: list[str], bars: int) -> tuple[datetime, datetime]:
    """`bars` one-minute bars per symbol (a different random walk each) in the bars table; returns their range."""
    for number, symbol in enumerate(symbols):
        frame = minute_bars(bars, seed=number)
        merge_bars(location, frame.with_columns(
            symbol=pl.lit(symbol), con_id=pl.lit(1000 + number), exchange=pl.lit("SMART"),
            primary_exchange=pl.lit("NASDAQ"), currency=pl.lit("USD"), bar_size=pl.lit("1 min"),
            what_to_show=pl.lit("TRADES"), use_rth=pl.lit(True), wap=pl.col("close"), bar_count=pl.lit(10),
            ingested_at=pl.lit(datetime.now(UTC)), flow_run_id=pl.lit("bench"), request=pl.lit("bench"),
        ).select(list({**BAR_COLUMNS, **LINEAGE_COLUMNS})).cast({**BAR_COLUMNS, **LINEAGE_COLUMNS}))  # type: ignore[arg-type]
    frame = minute_bars(bars)
    return frame["ts"][0], frame["ts"][-1] + timedelta(minutes=1)


def run_flow(env: dict[str, str], request_json: str, location: TableLocation, work: Path, name: str,
             extra: dict[str, str]) -> dict[str, object]:
    """The flow in a process of its own; its own result store (no cache hits across runs)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_FLOW, request_json, str(location.root)], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT), "PREFECT_LOCAL_STORAGE_PATH": str(work / name),
                               **extra},
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{name} run failed:\n{done.stderr[-4000:]}")
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])
    return {**result, "process_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--bars", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=4, help="tasks per symbol and slice")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--cold", action="store_true", help="an empty numba cache for every run")
    args = parser.parse_args()
    symbols = SYMBOLS[:args.symbols]
    with tempfile.TemporaryDirectory(prefix="bench-grid-dask-") as tmp:
        work = Path(tmp)
        location = TableLocation(work / "data")
        started = time.perf_counter()
        start, end = seed(location, symbols, args.bars)
        print(f"seeded {len(symbols)} x {args.bars:,} bars in {time.perf_counter() - started:.1f} s")
        from ibkr_flows.backtest.request import GridRequest

        request = GridRequest(symbols=symbols, start=start, end=end, holdout=0.3, folds=args.folds,
                              chunks=args.chunks)
        print(f"grid: {request.spec().size} combinations x {len(symbols)} symbols, holdout 0.3, folds {args.folds}, "
              f"{args.chunks} chunks per symbol and slice")
        home = work / "prefect"
        home.mkdir()
        with prefect_server(home) as env:
            def numba_env(name: str) -> dict[str, str]:
                return {"NUMBA_CACHE_DIR": str(work / f"numba-{name}")} if args.cold else {}

            runs = {"threads": run_flow(env, request.model_dump_json(), location, work, "threads",
                                        {"IBKR_GRID_RUNNER": "threads", "IBKR_GRID_THREADS": "2",
                                         **numba_env("threads")})}
            runs["dask (temporary cluster)"] = run_flow(
                env, request.model_dump_json(), location, work, "dask-temporary",
                {"IBKR_GRID_RUNNER": "dask", "IBKR_DASK_WORKERS": "2", **numba_env("dask-temporary")})
            warmups, cluster_s = running_cluster_run(env, request.model_dump_json(), location, work, runs,
                                                     numba_env("dask-running"))
        best = {name: run.pop("best") for name, run in runs.items()}
        same = all(b == best["threads"] for b in best.values())
        print(f"\n{'runner':28} {'flow s':>8} {'process s':>10}")
        for name, run in runs.items():
            print(f"{name:28} {run['flow_s']:8.2f} {run['process_s']:10.2f}")
        threads = runs["threads"]
        for name, run in runs.items():
            if name != "threads":
                print(f"ratio {name} / threads: flow {run['flow_s'] / threads['flow_s']:.2f}, "  # type: ignore[operator]
                      f"process {run['process_s'] / threads['process_s']:.2f}")  # type: ignore[operator]
        print(f"running cluster start-up (not in its run): {cluster_s:.2f} s")
        print("numba warm-up per worker (running cluster): "
              + ", ".join(f"{w}: {s:.2f} s" if s is not None else f"{w}: no chunk" for w, s in warmups.items()))
        print(f"same best cells on every runner: {same}")


def running_cluster_run(env: dict[str, str], request_json: str, location: TableLocation, work: Path,
                        runs: dict[str, dict[str, object]], numba: dict[str, str]) -> tuple[dict[str, float | None],
                                                                                          float]:
    """A LocalCluster started here (workers inherit this environment: the server's URL, the numba cache), the
    flow on it, then each worker's numba warm-up time."""
    from dask.distributed import Client, LocalCluster

    saved = dict(os.environ)
    os.environ.update({**env, "PYTHONPATH": str(ROOT), "PREFECT_LOCAL_STORAGE_PATH": str(work / "dask-running"),
                       **numba})
    try:
        started = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            cluster_s = time.perf_counter() - started
            on_cluster = {"IBKR_GRID_RUNNER": "dask", "IBKR_DASK_ADDRESS": cluster.scheduler_address, **numba}
            runs["dask (running cluster)"] = run_flow(env, request_json, location, work, "dask-running", on_cluster)
            warmups = client.run(_worker_warmup)
            runs["dask (running cluster, again)"] = run_flow(env, request_json, location, work, "dask-running-again",
                                                             on_cluster)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return warmups, cluster_s


def _worker_warmup() -> float | None:
    import tasks.grid

    return tasks.grid.kernel_warmup_s


if __name__ == "__main__":
    main()
