"""The `backtest-grid` flow on threads (2) against Dask (2 worker processes), same grid, same bars, real Prefect.

Grid: SMA crossover, fast 5..50 step 5 x slow 20..200 step 10 (174 pairs with fast < slow) on 4 symbols x 100k
one-minute bars (synthetic, merged into a Delta bars table), 30 % holdout, `--chunks` tasks per symbol and slice
(default: the flow's own choice for each runner, 8 on threads, one per Dask worker thread across symbols and slices).
Each runner runs the flow in its own process (as a deployment would), against one `prefect server` on loopback
(in ephemeral mode every Dask worker would start a server of its own), with a result store of its own, so no run
finds another's cached chunks. Runs:
- threads: `IBKR_GRID_RUNNER=threads`, 2 threads in the flow's process;
- dask, temporary cluster: `IBKR_GRID_RUNNER=dask`, the flow starts a LocalCluster of 2 workers and stops it;
- dask, standing: a LocalCluster of 2 single-thread workers started here first (its start-up timed apart), the
  flow on it through `IBKR_DASK_ADDRESS`, twice: in the 1st run the scheduler (in this process) imports Prefect
  and the flow to unpickle the first tasks, and the workers import the project and warm numba inside their first
  chunks; the 2nd run finds all that done (what a deployment on a standing cluster sees from its second run on);
- dask, standing+preload: the same with the scheduler and workers started with the grid's preload
  (`flows.grid_preload`: imports, and every kernel warmed at worker start, timed apart as
  part of the cluster's start-up), so that its 1st run is already warm. Its scheduler's imports are cheap here
  because the standing cluster before it left them in this process.
After each standing cluster's 1st run, each worker says where its numba warm-ups happened (`tasks.grid.
kernel_warmups`: compile, or load from numba's on-disk cache; at "worker start" or before a "first chunk").
Printed per run: the flow's run time as Prefect records it (Running to Completed), its wall time (from the call to
its return, in its process: besides the run, the engine's set-up and the join of Prefect's heartbeat thread, which
sleeps in 1 s steps from the flow's start, so the call returns on the next whole second of the flow's life: wall
times come in 1 s steps and only the run time compares runners finely) and the process's wall time (with Python
and Prefect start-up), then the ratios dask / threads (< 1: Dask is faster).
Without `--cold`, numba's on-disk cache is filled first, untimed, in a process of its own (`tasks.grid.
warm_every_kernel`), so every run loads its kernels from it: on a fresh checkout the threads run, being first, had
compiled them alone and measured 7.6 s instead of 2.1 s. `--cold` gives every run an empty NUMBA_CACHE_DIR
instead, so each process compiles (threads: once, in the flow's process; Dask: once per worker).
Run: `.venv/bin/python bench/grid_dask.py [--symbols 4] [--bars 100000] [--chunks N] [--folds N] [--cold]`.
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
from typing import Any

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
from prefect.client.orchestration import get_client
from flows.grid import backtest_grid
from ibkr_flows.backtest.request import GridRequest
request = GridRequest.model_validate_json(sys.argv[1])
started = time.perf_counter()
state = backtest_grid(request=request, data_dir=sys.argv[2], return_state=True)
flow_s = time.perf_counter() - started
reports = state.result()
with get_client(sync_client=True) as client:
    run = client.read_flow_run(state.state_details.flow_run_id)
print("RESULT", json.dumps({"flow_s": flow_s, "run_s": (run.end_time - run.start_time).total_seconds(),
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


def fill_numba_cache() -> float:
    """Every kernel compiled into numba's on-disk cache (or found there) by a process of its own; its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tasks.grid; tasks.grid.warm_every_kernel()"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--bars", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=None,
                        help="tasks per symbol and slice (default: the flow's own choice for each runner)")
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
              f"{args.chunks or 'default (per runner)'} chunks per symbol and slice")
        if not args.cold:
            print(f"numba's on-disk cache filled in {fill_numba_cache():.1f} s (not in any run)")
        home = work / "prefect"
        home.mkdir()
        with prefect_server(home) as env:
            def numba_env(name: str) -> dict[str, str]:
                return {"NUMBA_CACHE_DIR": str(work / f"numba-{name}")} if args.cold else {}

            request_json = request.model_dump_json()
            runs = {"threads": run_flow(env, request_json, location, work, "threads",
                                        {"IBKR_GRID_RUNNER": "threads", "IBKR_GRID_THREADS": "2",
                                         **numba_env("threads")})}
            runs["dask, temporary cluster"] = run_flow(
                env, request_json, location, work, "dask-temporary",
                {"IBKR_GRID_RUNNER": "dask", "IBKR_DASK_WORKERS": "2", **numba_env("dask-temporary")})
            clusters = {name: standing_cluster_runs(env, request_json, location, work, runs, name,
                                                    numba_env(name.replace("+", "-")))
                        for name in ("standing", "standing+preload")}
        best = {name: run.pop("best") for name, run in runs.items()}
        same = all(b == best["threads"] for b in best.values())
        print(f"\n{'runner':34} {'run s':>7} {'flow s':>8} {'process s':>10}")
        for name, run in runs.items():
            print(f"{name:34} {run['run_s']:7.2f} {run['flow_s']:8.2f} {run['process_s']:10.2f}")
        threads = runs["threads"]
        for name, run in runs.items():
            if name != "threads":
                print(f"ratio {name} / threads: "
                      + ", ".join(f"{kind} {run[f'{kind}_s'] / threads[f'{kind}_s']:.2f}"  # type: ignore[operator]
                                  for kind in ("run", "flow", "process")))
        for name, cluster in clusters.items():
            scheduler = (f"; the scheduler's preload imported in {cluster['scheduler']['imports_s']:.2f} s (this "
                         "process's)" if cluster["scheduler"] else "")
            print(f"{name} cluster start-up (not in its runs): {cluster['start_s']:.2f} s{scheduler}")
            for worker, preload in cluster["preload"].items():
                warm = cluster["warmups"][worker].get(("sma_crossover", False))
                print(f"  {worker}: " + (f"preload imports {preload['imports_s']:.2f} s, every kernel warmed in "
                                         f"{preload['warmup_s']:.2f} s; " if preload else "")
                      + (f"the grid's kernels warmed in {warm['seconds']:.2f} s at {warm['at']}" if warm else
                         "the grid's kernels never warmed (no chunk)"))
        print(f"same best cells on every runner: {same}")


def standing_cluster_runs(env: dict[str, str], request_json: str, location: TableLocation, work: Path,
                          runs: dict[str, dict[str, object]], name: str, numba: dict[str, str]) -> dict[str, Any]:
    """A LocalCluster started here (workers inherit this environment: the server's URL, the numba cache; with
    the grid's preload for "standing+preload"), the flow on it twice, and what each worker says after the 1st run:
    its preload's parts and its numba warm-ups."""
    from dask.distributed import Client, LocalCluster

    from flows.grid_preload import PRELOAD

    saved = dict(os.environ)
    os.environ.update({**env, "PYTHONPATH": str(ROOT), **numba})
    try:
        started = time.perf_counter()
        preload = [PRELOAD] if name.endswith("preload") else []
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, preload=preload,
                          scheduler_kwargs={"preload": preload}) as cluster, Client(cluster) as client:
            start_s = time.perf_counter() - started
            on_cluster = {"IBKR_GRID_RUNNER": "dask", "IBKR_DASK_ADDRESS": cluster.scheduler_address, **numba}
            folder = name.replace("+", "-")
            runs[f"dask, {name}: 1st run"] = run_flow(env, request_json, location, work, folder, on_cluster)
            report = {"start_s": start_s, "preload": client.run(_worker_preload),
                      "warmups": client.run(_worker_warmups), "scheduler": client.run_on_scheduler(_worker_preload)}
            runs[f"dask, {name}: 2nd run"] = run_flow(env, request_json, location, work, f"{folder}-again",
                                                      on_cluster)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return report


def _worker_preload() -> dict[str, float]:  # also the scheduler's, run there
    from flows import grid_preload

    return grid_preload.startup


def _worker_warmups() -> dict[tuple[str, bool], dict[str, object]]:
    import dataclasses

    import tasks.grid

    return {key: dataclasses.asdict(w) for key, w in tasks.grid.kernel_warmups.items()}


if __name__ == "__main__":
    main()
