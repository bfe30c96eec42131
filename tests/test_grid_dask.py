"""The grid flow on Dask (prefect-dask, a temporary LocalCluster) against a real `prefect server` on loopback,
with the same results as on threads. A real server because in ephemeral mode every Dask worker process would
start a Prefect server of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
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
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
START = datetime(2024, 7, 8, 13, 30, tzinfo=UTC)
RUN_GRID = """
import json, sys
from datetime import datetime
from flows.grid import backtest_grid
from ibkr_flows.backtest.request import GridRequest
request = GridRequest(grid={"fast_period": [3, 5, 8], "slow_period": [12, 20, 30]}, symbol="AAPL",
                      start=datetime.fromisoformat(sys.argv[1]), end=datetime.fromisoformat(sys.argv[2]),
                      holdout=0.3, folds=2, chunks=3)
report = backtest_grid(request=request, data_dir=sys.argv[3])
print("RESULT", json.dumps({"best": report.best_params, "tried": report.combinations_tried,
                            "runner": type(backtest_grid.task_runner).__name__}))
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    log = (home / "server.log").open("w")
    server = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}") from exc
                time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def _seed(location: TableLocation) -> None:
    rng = np.random.default_rng(3)
    n = 1500
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    merge_bars(location, pl.DataFrame({
        "symbol": "AAPL", "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
        "ts": [START + timedelta(minutes=i) for i in range(n)], "open": np.r_[100.0, close[:-1]],
        "high": close * 1.001, "low": close * 0.998, "close": close, "volume": 1000.0, "wap": close,
        "bar_count": 10, "ingested_at": datetime.now(UTC), "flow_run_id": "seed", "request": "seed",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS}))


def _run(env: dict[str, str], runner: str, location: TableLocation) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_GRID, START.isoformat(), (START + timedelta(days=3)).isoformat(),
         str(location.root)],
        cwd=ROOT, env={**env, "IBKR_GRID_RUNNER": runner, "PREFECT_LOGGING_LEVEL": "WARNING"},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])


def test_grid_on_a_dask_local_cluster_equals_threads(prefect_server: dict[str, str], tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    _seed(location)
    threads = _run(prefect_server, "threads", location)
    dask = _run(prefect_server, "dask", location)
    assert (threads.pop("runner"), dask.pop("runner")) == ("ThreadPoolTaskRunner", "DaskTaskRunner")
    assert threads == dask and threads["tried"] == 9
    results = read_grid_results(location)
    runs = results["run_id"].unique(maintain_order=True).to_list()
    assert len(runs) == 2
    metrics = [c for c in results.columns if c not in ("run_id", "flow_run_id", "created_at")]
    first, second = (results.filter(run_id=r).select(metrics).sort("params") for r in runs)
    assert first.equals(second)
