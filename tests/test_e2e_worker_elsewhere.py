"""Deployments registered from this checkout run on a worker started somewhere else: a second clone of the
repository in the test's temporary directory, as a worker on another machine would have it.

`ibkr up --no-worker` starts a real Prefect server and deploys prefect.yaml from this checkout; the test then starts
`prefect worker start` in the clone with IBKR_WORKDIR pointing there (what `ibkr up` does for its own worker).
The runs give every deployment no data directory and no TWS endpoint, so they can only succeed if they start in
the clone: TWS host and port come from the clone's `.env`, bars land in the clone's `./data`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ibkr_flows.stack.processes import group_alive, spawn, stop_group
from ibkr_flows.stack.workdir import WORKDIR_ENV, WorkdirError, resolve_workdir
from tests.conftest import free_port
from tests.test_e2e_deployments import TERMINAL, Api, _ibkr, _kill_group, _start_simulator

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parents[1]
POOL = "ibkr-local"
WEEK = {"start": "2024-07-11T00:00:00+00:00", "end": "2024-07-13T00:00:00+00:00"}


@dataclass
class Elsewhere:
    api: Api
    clone: Path
    """The worker's directory: a `git clone` of this repository with its own `.env` (the simulator's port)."""
    tmp: Path
    worker_log: Path

    def worker_output(self) -> str:
        """The worker's own output: where Prefect prints what failed before a flow run's process started."""
        return self.worker_log.read_text(errors="replace")[-3000:]


def _clone(tmp: Path) -> Path:
    clone = tmp / "clone"
    done = subprocess.run(["git", "clone", "--quiet", str(PROJECT_DIR), str(clone)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return clone


def _wait_for_worker(api: Api, name: str, pid: int, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert group_alive(pid), f"the worker exited: {log.read_text(errors='replace')[-3000:]}"
        if any(w["name"] == name for w in api("POST", f"/work_pools/{POOL}/workers/filter", {})):
            return
        time.sleep(0.5)
    pytest.fail(f"worker {name} did not register within {timeout} s: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elsewhere]:
    tmp = tmp_path_factory.mktemp("elsewhere")
    home = tmp / "prefect-home"
    # No IBKR_* from the caller: the runs must find TWS and the data directory through the clone alone.
    env = {k: v for k, v in os.environ.items()
           if k not in {"PREFECT_API_URL", "IBKR_ALERT_BLOCKS"} and not k.startswith("IBKR_")}
    env.update(
        PREFECT_HOME=str(home), TMPDIR=str(tmp), IBKR_PACING_DIR=str(tmp / "pacing"),
        PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",  # no scheduled runs racing the test's own
    )
    t0 = time.monotonic()
    clone = _clone(tmp)
    print(f"git clone: {time.monotonic() - t0:.1f} s")
    sim_port, sim_control = free_port(), free_port()
    (clone / ".env").write_text(f"IBKR_HOST=127.0.0.1\nIBKR_PORT={sim_port}\nIBKR_CLIENT_ID=31\n")
    started: list[int] = []
    sim = _start_simulator(sim_port, sim_control, tmp / "sim.log")
    started.append(sim.pid)
    worker_pid: int | None = None
    try:
        t0 = time.monotonic()
        up = _ibkr("up", "--home", str(home), "--no-worker", env=env)  # from this checkout, as the first test
        state = json.loads((home / "ibkr-up.json").read_text()) if (home / "ibkr-up.json").exists() else {}
        started += [pid for pid in (state.get("server_pid"), state.get("worker_pid")) if pid]
        assert up.returncode == 0, up.stderr[-3000:]
        assert state["worker_pid"] is None
        print(f"ibkr up --no-worker: {time.monotonic() - t0:.1f} s")
        api = Api(state["api_url"])

        t0 = time.monotonic()
        worker_log = tmp / "worker.log"
        name = f"elsewhere-{uuid.uuid4().hex[:6]}"
        worker_env = {**env, "PREFECT_API_URL": state["api_url"], WORKDIR_ENV: str(clone)}
        worker_pid = spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name],
                           worker_env, worker_log, cwd=clone)
        _wait_for_worker(api, name, worker_pid, worker_log)
        print(f"worker in the clone: {time.monotonic() - t0:.1f} s")
        yield Elsewhere(api, clone, tmp, worker_log)
    finally:
        if worker_pid is not None:
            stop_group(worker_pid, timeout=10)
        _ibkr("down", "--home", str(home), "--timeout", "10", env=env, timeout=60)
        for pid in started:
            _kill_group(pid)
        sim.wait(timeout=10)


def _run(api: Api, flow: str, deployment: str, parameters: dict[str, Any],
         job_variables: dict[str, Any] | None = None, timeout: float = 150) -> dict[str, Any]:
    """A flow run from the deployment (the UI's 'Run' button, optionally with job variables), to a terminal state."""
    deployment_id = api.deployment(flow, deployment)["id"]
    body: dict[str, Any] = {"parameters": parameters}
    if job_variables is not None:
        body["job_variables"] = job_variables
    run = api("POST", f"/deployments/{deployment_id}/create_flow_run", body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api("GET", f"/flow_runs/{run['id']}")
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(0.5)
    pytest.fail(f"{flow}/{deployment} run {run['id']} still {run['state']['type']} after {timeout} s")


def _log_messages(api: Api, flow_run_id: str) -> list[str]:
    return [line["message"] for line in api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                                     "limit": 200})]


def test_registered_deployments_carry_the_pull_step_not_this_checkout(elsewhere: Elsewhere) -> None:
    """Every deployment has prefect.yaml's pull step as written, and no path of the checkout that deployed it."""
    spec = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    registered = elsewhere.api("POST", "/deployments/filter", {"limit": 50})
    assert {d["name"] for d in registered} == {d["name"] for d in spec["deployments"]}
    for deployment in registered:
        assert deployment["pull_steps"] == spec["pull"], deployment["name"]
        assert str(PROJECT_DIR) not in json.dumps(deployment["pull_steps"]), deployment["name"]


def test_every_deployment_runs_in_the_second_clone(elsewhere: Elsewhere) -> None:
    api, data = elsewhere.api, elsewhere.clone / "data"

    t0 = time.monotonic()
    health = _run(api, "tws-health-check", "tws-health-check", {"check_data": False})
    # IBKR_PORT came from the clone's .env
    assert health["state"]["type"] == "COMPLETED", (health["state"], elsewhere.worker_output())
    messages = _log_messages(api, health["id"])
    assert f"working directory {elsewhere.clone.resolve()} ({WORKDIR_ENV})" in messages, messages
    print(f"health check: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    ingest = _run(api, "ingest-bars", "nightly-ingest", {"request": {"symbols": ["AAPL"], **WEEK}})
    assert ingest["state"]["type"] == "COMPLETED", ingest["state"]
    rows = json.loads(api.artifacts(ingest["id"])["ingest-symbols"]["data"])
    assert [(r["symbol"], r["inserted"]) for r in rows] == [("AAPL", 780)]
    assert (data / "bars" / "_delta_log").is_dir()  # `./data` of the run is the clone's
    print(f"ingest: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    backtest = _run(api, "backtest", "adhoc-backtest", {"request": {"symbols": ["AAPL"], **WEEK}})
    assert backtest["state"]["type"] == "COMPLETED", backtest["state"]
    assert (data / "backtest_results" / "_delta_log").is_dir()
    print(f"backtest: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    grid = _run(api, "backtest-grid", "grid-backtest", {
        "request": {"symbol": "AAPL", "grid": {"fast_period": [5, 10], "slow_period": [20, 30]}, "chunks": 2,
                    **WEEK}})
    assert grid["state"]["type"] == "COMPLETED", grid["state"]
    assert (data / "grid_results" / "_delta_log").is_dir()
    print(f"grid: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    maintenance = _run(api, "table-maintenance", "weekly-table-maintenance", {"tables": ["bars"]})
    assert maintenance["state"]["type"] == "COMPLETED", maintenance["state"]
    report = api.artifacts(maintenance["id"])["table-maintenance"]["data"]
    assert "| bars |" in report and "not created yet" not in report, report
    print(f"maintenance: {time.monotonic() - t0:.1f} s")



def test_a_missing_workdir_fails_the_run_with_the_fix(elsewhere: Elsewhere) -> None:
    """IBKR_WORKDIR naming no directory on the worker (set here for one run through the job's env) stops the
    run in its pull step, and the run's log says what to set."""
    missing = elsewhere.tmp / "no-such-directory"
    run = _run(elsewhere.api, "tws-health-check", "tws-health-check", {"check_data": False},
               job_variables={"env": {WORKDIR_ENV: str(missing)}})
    assert run["state"]["type"] in {"CRASHED", "FAILED"}, (run["state"], elsewhere.worker_output())
    messages = "\n".join(_log_messages(elsewhere.api, run["id"]))
    assert f"{WORKDIR_ENV}={missing} is not a directory on this worker" in messages, messages
    assert not missing.exists()


def test_without_ibkr_workdir_runs_start_in_the_checkout_or_say_what_to_set(tmp_path: Path) -> None:
    """The step's other two cases, without a worker: an editable checkout is the default; a wheel install with no
    IBKR_WORKDIR has none, and the error names the variable and the command."""
    assert resolve_workdir({}, checkout=PROJECT_DIR) == PROJECT_DIR
    assert resolve_workdir({WORKDIR_ENV: str(tmp_path)}, checkout=PROJECT_DIR) == tmp_path.resolve()
    with pytest.raises(WorkdirError, match=rf"{WORKDIR_ENV}=\$PWD prefect worker start --pool ibkr-local"):
        resolve_workdir({WORKDIR_ENV: "  "}, checkout=None)
