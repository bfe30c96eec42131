"""`ibkr up` for a team, end to end: a real Postgres cluster the tests start (tests/postgres_server.py), the
Prefect server on it in server mode (0.0.0.0 with basic auth), a flow run through the worker against the
simulator, found in Postgres' own tables; the refusals that come before any server starts; `ibkr down`.

One server start for the module (~30 s on 2 cores); the refusals need none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.stack.processes import group_alive
from tests.conftest import free_port
from tests.postgres_server import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parents[1]
AUTH_STRING = "team:s3cret-auth-value"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
runner = CliRunner()


@dataclass
class TeamStack:
    home: Path
    api_url: str
    state: dict[str, Any]
    output: str
    """stdout + stderr of `ibkr up`."""
    env: dict[str, str]
    postgres: PostgresServer
    sim: EmbeddedSimulator


def _ibkr(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", *args], env=env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=timeout)


def _authorized(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="module")
def team_stack(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[TeamStack]:
    tmp = tmp_path_factory.mktemp("team")
    home = tmp / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "IBKR_ALERT_BLOCKS"}}
    env.update(PREFECT_HOME=str(home), TMPDIR=str(tmp), IBKR_PACING_DIR=str(tmp / "pacing"),
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
               PREFECT_SERVER_API_AUTH_STRING=AUTH_STRING)
    started: list[int] = []
    with EmbeddedSimulator() as sim:
        try:
            t0 = time.monotonic()
            up = _ibkr("up", "--home", str(home), "--host", "0.0.0.0", "--database", postgres.url(), env=env)
            state_file = home / "ibkr-up.json"
            state = json.loads(state_file.read_text()) if state_file.exists() else {}
            started += [pid for pid in (state.get("server_pid"), state.get("worker_pid")) if pid]
            assert up.returncode == 0, up.stderr[-3000:]
            print(f"ibkr up on Postgres: {time.monotonic() - t0:.1f} s")
            yield TeamStack(home, state["api_url"], state, up.stdout + up.stderr, env, postgres, sim)
        finally:
            _ibkr("down", "--home", str(home), "--timeout", "10", env=env, timeout=60)
            for pid in started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _run_deployment(api: httpx.Client, flow: str, deployment: str, parameters: dict[str, Any],
                    timeout: float = 150) -> dict[str, Any]:
    deployment_id = api.get(f"/deployments/name/{flow}/{deployment}").raise_for_status().json()["id"]
    run = api.post(f"/deployments/{deployment_id}/create_flow_run",
                   json={"parameters": parameters}).raise_for_status().json()
    deadline = time.monotonic() + timeout
    while run["state"]["type"] not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run['id']} still {run['state']['type']} after {timeout} s"
        time.sleep(0.5)
        run = api.get(f"/flow_runs/{run['id']}").raise_for_status().json()
    return run


async def _connect(postgres: PostgresServer) -> asyncpg.Connection:
    return await asyncpg.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                                 password=postgres.password, database=postgres.database)


async def _flow_run_in_postgres(postgres: PostgresServer, flow_run_id: str) -> asyncpg.Record | None:
    connection = await _connect(postgres)
    try:
        return await connection.fetchrow(
            "SELECT flow_run.state_type::text AS state_type, flow.name AS flow_name FROM flow_run "
            "JOIN flow ON flow.id = flow_run.flow_id WHERE flow_run.id = $1::uuid", flow_run_id)
    finally:
        await connection.close()


def test_up_refuses_an_unreachable_database_before_starting_anything(tmp_path: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    result = runner.invoke(app, ["up", "--home", str(tmp_path), "--database",
                                 f"postgresql+asyncpg://prefect:hunter2-pw@127.0.0.1:{port}/prefect"])
    assert result.exit_code == 1
    assert f"cannot reach Postgres at 127.0.0.1:{port}" in result.output
    assert "start Postgres there" in result.output and "--database" in result.output
    assert "hunter2-pw" not in result.output
    assert time.monotonic() - t0 < 10  # an immediate answer, not the server's start-up timeout
    assert not (tmp_path / "ibkr-up.json").exists() and not (tmp_path / "logs").exists()


def test_up_refuses_a_wrong_database_password(tmp_path: Path, postgres: PostgresServer) -> None:
    wrong = postgres.url().replace(postgres.password, "not-the-password")
    result = runner.invoke(app, ["up", "--home", str(tmp_path)], env={"PREFECT_API_DATABASE_CONNECTION_URL": wrong})
    assert result.exit_code == 1
    assert f"Postgres at 127.0.0.1:{postgres.port} refused user 'prefect'" in result.output
    assert "not-the-password" not in result.output
    assert not (tmp_path / "ibkr-up.json").exists()


def test_up_refuses_a_network_server_without_auth(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--home", str(tmp_path), "--host", "0.0.0.0"],
                           env={"PREFECT_SERVER_API_AUTH_STRING": None})
    assert result.exit_code == 1
    assert "reachable from the network" in result.output and "--auth-string" in result.output
    assert not (tmp_path / "ibkr-up.json").exists() and not (tmp_path / "logs").exists()


def test_flow_run_completes_and_is_recorded_in_postgres(team_stack: TeamStack) -> None:
    """The worker (which must send the auth string to register and poll) runs the health check against the
    simulator; the run is then read back from Postgres' own `flow_run` table, not through the API."""
    with httpx.Client(base_url=team_stack.api_url, headers=_authorized(AUTH_STRING), timeout=30) as api:
        run = _run_deployment(api, "tws-health-check", "tws-health-check",
                              {"host": "127.0.0.1", "port": team_stack.sim.port, "client_id": 31,
                               "check_data": False})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    row = asyncio.run(_flow_run_in_postgres(team_stack.postgres, run["id"]))
    assert row is not None, "the flow run is not in Postgres"
    assert (row["state_type"], row["flow_name"]) == ("COMPLETED", "tws-health-check")
    assert not (team_stack.home / "prefect.db").exists()  # no SQLite beside it
    assert team_stack.state["database"] == team_stack.postgres.url().replace(team_stack.postgres.password, "***")


def test_api_refuses_calls_without_the_auth_string(team_stack: TeamStack) -> None:
    body = {"limit": 1}
    assert httpx.post(f"{team_stack.api_url}/flow_runs/filter", json=body, timeout=10).status_code == 401
    wrong = httpx.post(f"{team_stack.api_url}/flow_runs/filter", json=body, headers=_authorized("team:wrong"),
                       timeout=10)
    assert wrong.status_code == 401
    right = httpx.post(f"{team_stack.api_url}/flow_runs/filter", json=body, headers=_authorized(AUTH_STRING),
                       timeout=10)
    assert right.status_code == 200 and isinstance(right.json(), list)


def test_secrets_stay_out_of_output_state_and_logs(team_stack: TeamStack) -> None:
    secrets = (team_stack.postgres.password, AUTH_STRING)
    files = [team_stack.home / "ibkr-up.json", *map(Path, team_stack.state["logs"].values())]
    for secret in secrets:
        assert secret not in team_stack.output
        for path in files:
            assert secret not in path.read_text(errors="replace"), path
    assert "prefect:***@127.0.0.1" in team_stack.output


def test_ibkr_down_stops_the_server_and_the_runs_stay_in_postgres(team_stack: TeamStack) -> None:
    started = {name: team_stack.state[f"{name}_pid"] for name in ("server", "worker")}
    assert {name for name, pid in started.items() if group_alive(pid)} == {"server", "worker"}
    done = _ibkr("down", "--home", str(team_stack.home), "--timeout", "10", env=team_stack.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {name for name, pid in started.items() if group_alive(pid)} == set()
    assert not (team_stack.home / "ibkr-up.json").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{team_stack.api_url}/health", timeout=2)
    assert asyncio.run(_count_flow_runs(team_stack.postgres)) >= 1  # the database outlives the server


async def _count_flow_runs(postgres: PostgresServer) -> int:
    connection = await _connect(postgres)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM flow_run"))
    finally:
        await connection.close()
