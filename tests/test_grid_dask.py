"""The grid flow on Dask (prefect-dask: a temporary LocalCluster, and a standing one started with the grid's worker
preload) against a real `prefect server` on loopback, with the same results as on threads. A real server because
in ephemeral mode every Dask worker process would start a Prefect server of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.grid_preload import PRELOAD
from storage.bars_table import merge_bars
from storage.grid_results_table import read_grid_results
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS
from tests.prefect_server import prefect_server as running_prefect_server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
START = datetime(2024, 7, 8, 13, 30, tzinfo=UTC)
RUN_GRID = """
import json, sys
from datetime import datetime
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName
from flows.grid import backtest_grid
from ibkr_flows.backtest.request import GridRequest
request = GridRequest(grid={"fast_period": [3, 5, 8], "slow_period": [12, 20, 30]}, symbols=["AAPL", "MSFT"],
                      start=datetime.fromisoformat(sys.argv[1]), end=datetime.fromisoformat(sys.argv[2]),
                      holdout=0.3, folds=2, chunks=None if sys.argv[4] == "default" else int(sys.argv[4]))
state = backtest_grid(request=request, data_dir=sys.argv[3], return_state=True)
reports = state.result()
with get_client(sync_client=True) as client:
    chunk_runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="grid chunk of")))
print("RESULT", json.dumps({"best": {s: r.best_params for s, r in reports.items()},
                            "tried": {s: r.combinations_tried for s, r in reports.items()},
                            "runner": type(backtest_grid.task_runner).__name__, "chunk_runs": len(chunk_runs)}))
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as env:
        yield env


def _seed(location: TableLocation) -> None:
    for seed, (symbol, con_id) in enumerate([("AAPL", 265598), ("MSFT", 272093)], start=3):
        _seed_symbol(location, symbol, con_id, seed)


def _seed_symbol(location: TableLocation, symbol: str, con_id: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    merge_bars(location, pl.DataFrame({
        "symbol": symbol, "con_id": con_id, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
        "ts": [START + timedelta(minutes=i) for i in range(n)], "open": np.r_[100.0, close[:-1]],
        "high": close * 1.001, "low": close * 0.998, "close": close, "volume": 1000.0, "wap": close,
        "bar_count": 10, "ingested_at": datetime.now(UTC), "flow_run_id": "seed", "request": "seed",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS}))


def _run(env: dict[str, str], runner: str, location: TableLocation, chunks: str = "3", **extra: str
         ) -> dict[str, object]:
    """The grid flow in a process of its own on `runner`, with `chunks` per symbol and slice ("default": the
    flow's choice for the runner)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_GRID, START.isoformat(), (START + timedelta(days=3)).isoformat(),
         str(location.root), chunks],
        cwd=ROOT, env={**env, "IBKR_GRID_RUNNER": runner, "PREFECT_LOGGING_LEVEL": "WARNING",
                       # a result store per runner: Dask computes its chunks instead of finding the threads' cached
                       "PREFECT_LOCAL_STORAGE_PATH": str(location.root / f"results-{runner}"), **extra},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])


def test_grid_on_a_dask_local_cluster_equals_threads(prefect_server: dict[str, str], tmp_path: Path) -> None:
    """Two symbols x chunks fanned out on both runners; Dask workers read the bars themselves (a chunk carries a
    table version and rows, not the frame) and still agree with threads to the bit."""
    location = TableLocation(tmp_path)
    _seed(location)
    threads = _run(prefect_server, "threads", location)
    dask = _run(prefect_server, "dask", location)
    assert (threads.pop("runner"), dask.pop("runner")) == ("ThreadPoolTaskRunner", "DaskTaskRunner")
    assert threads["chunk_runs"] == 2 * 3 * 3  # symbols x slices (in-sample, two folds) x chunks
    assert threads == dask and threads["tried"] == {"AAPL": 9, "MSFT": 9}
    results = read_grid_results(location)
    runs = results["run_id"].unique(maintain_order=True).to_list()
    assert len(runs) == 2
    metrics = [c for c in results.columns if c not in ("run_id", "flow_run_id", "created_at")]
    first, second = (results.filter(run_id=r).select(metrics).sort("symbol", "params") for r in runs)
    assert first.equals(second) and first.height == 18
    assert first.group_by("symbol").agg(pl.col("rank").max())["rank"].to_list() == [9, 9]


def test_a_cluster_started_with_the_grid_preload_is_warm_before_its_first_task(
        prefect_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started with `flows.grid_preload` have warmed every built-in kernel at start,
    before any task (their `tasks.grid.kernel_warmups`, marked "worker start"); a grid run on that cluster (through
    IBKR_DASK_ADDRESS, as a deployment on a standing cluster) warms nothing more in its chunks and equals threads.
    Both runs leave `chunks` to the flow: 8 per symbol and slice on threads, where a task is cheap; on Dask, where
    a task costs a few tenths of a second of Prefect set-up, one per slice (2 worker threads, 6 slices)."""
    from dask.distributed import Client, LocalCluster

    for name, value in prefect_server.items():  # the workers' environment: the server, a Prefect home
        monkeypatch.setenv(name, value)
    location = TableLocation(tmp_path)
    _seed(location)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, preload=[PRELOAD],
                      scheduler_kwargs={"preload": [PRELOAD]}) as cluster, Client(cluster) as client:
        assert set(client.run_on_scheduler(_preload_startup)) == {"imports_s"}  # the scheduler imports, no more
        at_start = client.run(_kernel_warmups)
        assert len(at_start) == 2
        for warmups in at_start.values():
            assert ("sma_crossover", False) in warmups and ("rsi_reversion", True) in warmups
            assert {warmup.at for warmup in warmups.values()} == {"worker start"}
        dask = _run(prefect_server, "dask", location, "default", IBKR_DASK_ADDRESS=cluster.scheduler_address)
        assert client.run(_kernel_warmups) == at_start  # no chunk had a kernel to warm
    threads = _run(prefect_server, "threads", location, "default")
    assert (threads.pop("runner"), dask.pop("runner")) == ("ThreadPoolTaskRunner", "DaskTaskRunner")
    assert (threads.pop("chunk_runs"), dask.pop("chunk_runs")) == (2 * 3 * 8, 2 * 3 * 1)
    assert threads == dask and threads["tried"] == {"AAPL": 9, "MSFT": 9}


def _kernel_warmups() -> dict[tuple[str, bool], object]:
    import tasks.grid

    return dict(tasks.grid.kernel_warmups)


def _preload_startup() -> dict[str, float]:
    from flows import grid_preload

    return dict(grid_preload.startup)
