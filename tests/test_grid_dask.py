"""The grid flow on Dask (prefect-dask, a temporary LocalCluster) against a real `prefect server` on loopback,
with the same results as on threads. A real server because in ephemeral mode every Dask worker process would
start a Prefect server of its own."""

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
from flows.grid import backtest_grid
from ibkr_flows.backtest.request import GridRequest
request = GridRequest(grid={"fast_period": [3, 5, 8], "slow_period": [12, 20, 30]}, symbols=["AAPL", "MSFT"],
                      start=datetime.fromisoformat(sys.argv[1]), end=datetime.fromisoformat(sys.argv[2]),
                      holdout=0.3, folds=2, chunks=3)
reports = backtest_grid(request=request, data_dir=sys.argv[3])
print("RESULT", json.dumps({"best": {s: r.best_params for s, r in reports.items()},
                            "tried": {s: r.combinations_tried for s, r in reports.items()},
                            "runner": type(backtest_grid.task_runner).__name__}))
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


def _run(env: dict[str, str], runner: str, location: TableLocation) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_GRID, START.isoformat(), (START + timedelta(days=3)).isoformat(),
         str(location.root)],
        cwd=ROOT, env={**env, "IBKR_GRID_RUNNER": runner, "PREFECT_LOGGING_LEVEL": "WARNING",
                       # a result store per runner: Dask computes its chunks instead of finding the threads' cached
                       "PREFECT_LOCAL_STORAGE_PATH": str(location.root / f"results-{runner}")},
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
    assert threads == dask and threads["tried"] == {"AAPL": 9, "MSFT": 9}
    results = read_grid_results(location)
    runs = results["run_id"].unique(maintain_order=True).to_list()
    assert len(runs) == 2
    metrics = [c for c in results.columns if c not in ("run_id", "flow_run_id", "created_at")]
    first, second = (results.filter(run_id=r).select(metrics).sort("symbol", "params") for r in runs)
    assert first.equals(second) and first.height == 18
    assert first.group_by("symbol").agg(pl.col("rank").max())["rank"].to_list() == [9, 9]
