"""End to end on a real Prefect server, as a user runs it: `ibkr up` (server, pool, `prefect deploy --all`,
worker), the simulator as its own process, flow runs created through the REST API the UI uses, alerts through
the server's automations to a local webhook, `ibkr down`.

Every process is started in its own process group and killed in `finally`, whatever the test outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from ibkr_flows.alerts.events import HEALTHY_EVENT, RECOVERED_EVENT, UNHEALTHY_EVENT
from ibkr_flows.sim.control import ControlError, send_command
from ibkr_flows.stack.processes import group_alive
from tests.conftest import free_port
from tests.webhook_receiver import Received, WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parents[1]
TOKEN = f"e2e-token-{uuid.uuid4().hex}"
"""The secret in the webhook URL: it must reach the receiver and appear nowhere else."""
BLOCK = "custom-webhook/e2e-alerts"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    home: Path
    api_url: str
    state: dict[str, Any]
    env: dict[str, str]
    sim_port: int
    sim_control: int
    data_dir: Path
    receiver: WebhookReceiver


class Api:
    """The REST calls the UI makes, retrying SQLite's 503s as every REST caller of a Prefect server must, and a
    few timeouts: on a busy 2-core machine one GET once took over 30 s."""

    TIMEOUT_RETRIES = 3

    def __init__(self, api_url: str) -> None:
        self.client = httpx.Client(base_url=api_url, timeout=30)

    def _request(self, method: str, path: str, body: Any) -> httpx.Response:
        """Reads are retried after a timeout; writes are not: the server may have done one (a second flow run)."""
        retries = self.TIMEOUT_RETRIES if method == "GET" or path.endswith("/filter") else 0
        attempt = 0
        while True:
            try:
                return self.client.request(method, path, json=body)
            except httpx.TimeoutException:
                if attempt >= retries:
                    raise
                attempt += 1

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(10):
            response = self._request(method, path, body)
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        response.raise_for_status()
        return response.json() if response.content else None

    def deployment(self, flow: str, deployment: str) -> dict[str, Any]:
        return self("GET", f"/deployments/name/{flow}/{deployment}")

    def run(self, flow: str, deployment: str, parameters: dict[str, Any], timeout: float = 150) -> dict[str, Any]:
        """Create a flow run from the deployment (the UI's 'Run' button) and wait for a terminal state."""
        deployment_id = self.deployment(flow, deployment)["id"]
        run = self("POST", f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self("GET", f"/flow_runs/{run['id']}")
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(0.5)
        pytest.fail(f"{flow}/{deployment} run {run['id']} still {run['state']['type']} after {timeout} s")

    def artifacts(self, flow_run_id: str) -> dict[str, Any]:
        found = self("POST", "/artifacts/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in found if a["key"]}

    def events(self, name: str) -> list[dict[str, Any]]:
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        page = self("POST", "/events/filter", {"filter": {"event": {"name": [name]}, "occurred": {"since": since}},
                                               "limit": 50})
        return page["events"]


def _ibkr(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", *args], env=env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=timeout)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _start_simulator(port: int, control: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ibkr_flows.cli.app", "sim", "start", "--port", str(port),
                                 "--control-port", str(control)], cwd=PROJECT_DIR, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            send_command("127.0.0.1", control, {"cmd": "status"}, timeout=1)
            return proc
        except ControlError:
            if time.monotonic() > deadline or proc.poll() is not None:
                _kill_group(proc.pid)
                pytest.fail(f"simulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    home = tmp / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "IBKR_ALERT_BLOCKS"}}
    env.update(
        PREFECT_HOME=str(home), TMPDIR=str(tmp), IBKR_PACING_DIR=str(tmp / "pacing"),
        PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO", PREFECT_SERVER_LOGGING_LEVEL="INFO",
        # Scheduled runs would race the test's own runs; the scheduling code path is exercised explicitly below.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    )
    sim_port = free_port()
    sim_control = free_port()
    started: list[int] = []
    with webhook_receiver() as receiver:
        sim = _start_simulator(sim_port, sim_control, tmp / "sim.log")
        started.append(sim.pid)
        try:
            t0 = time.monotonic()
            up = _ibkr("up", "--home", str(home), env=env)
            state = json.loads((home / "ibkr-up.json").read_text()) if (home / "ibkr-up.json").exists() else {}
            started += [pid for pid in (state.get("server_pid"), state.get("worker_pid")) if pid]
            assert up.returncode == 0, up.stderr[-3000:]
            print(f"ibkr up: {time.monotonic() - t0:.1f} s")
            assert state["ui_url"].startswith("http://127.0.0.1:")
            yield Stack(home, state["api_url"], state, {**env, "PREFECT_API_URL": state["api_url"]}, sim_port,
                        sim_control, tmp / "data", receiver)
        finally:
            _ibkr("down", "--home", str(home), "--timeout", "10", env=env, timeout=60)
            for pid in started:
                _kill_group(pid)
            sim.wait(timeout=10)


def test_prefect_yaml_deploys_with_its_schedules_and_parameters(stack: Stack) -> None:
    """`prefect --no-prompt deploy --all` (run by `ibkr up`) registered every deployment as written: Prefect
    silently drops keys it does not know, so the server's copy is compared with the file."""
    api = Api(stack.api_url)
    spec = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    registered = {d["name"]: d for d in api("POST", "/deployments/filter", {"limit": 50})}
    assert set(registered) == {d["name"] for d in spec["deployments"]}
    for wanted in spec["deployments"]:
        deployment = registered[wanted["name"]]
        assert deployment["work_pool_name"] == "ibkr-local"
        assert deployment["parameters"] == wanted.get("parameters", {}), wanted["name"]
        assert set(deployment["parameters"]) <= set(deployment["parameter_openapi_schema"]["properties"])
        assert deployment["entrypoint"] == wanted["entrypoint"]
        limit = (deployment["global_concurrency_limit"] or {}).get("limit")
        assert limit == wanted.get("concurrency_limit"), wanted["name"]
        assert sorted(deployment["tags"]) == sorted(wanted.get("tags", []))

    def schedules(name: str) -> list[dict[str, Any]]:
        return [s["schedule"] for s in registered[name]["schedules"] if s["active"]]

    assert [s["interval"] for s in schedules("tws-health-check")] == [300.0]
    assert [(s["cron"], s["timezone"]) for s in schedules("nightly-ingest")] == [("30 17 * * 1-5", "America/New_York")]
    assert [(s["cron"], s["timezone"]) for s in schedules("weekly-table-maintenance")] == [
        ("0 6 * * 0", "America/New_York")]
    assert schedules("adhoc-backtest") == []

    # The scheduler's own code path (what broke with sqlalchemy 2.1): runs land on weekdays at 17:30 New York.
    nightly = registered["nightly-ingest"]
    start = datetime.now(UTC) + timedelta(hours=1)  # nothing due soon: the worker must not pick these up
    api("POST", f"/deployments/{nightly['id']}/schedule",
        {"start_time": start.isoformat(), "end_time": (start + timedelta(days=7)).isoformat(),
         "min_time": timedelta(days=7).total_seconds(), "max_runs": 10})
    runs = api("POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [nightly["id"]]}},
                                             "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    local = [datetime.fromisoformat(r["expected_start_time"]).astimezone(ZoneInfo("America/New_York")) for r in runs]
    assert len(local) == 5  # a week: five weekdays
    assert all((t.hour, t.minute) == (17, 30) and t.weekday() < 5 for t in local)
    for run in runs:
        api("DELETE", f"/flow_runs/{run['id']}")


def _alerts(receiver: WebhookReceiver, text: str) -> list[Received]:
    return receiver.matching(lambda r: text in r.body.get("subject", ""))


def test_ingest_backtest_alert_once_and_recover(stack: Stack) -> None:
    api = Api(stack.api_url)
    _create_alert_automations(stack, api)
    tws = {"host": "127.0.0.1", "port": stack.sim_port}

    t0 = time.monotonic()
    ingest = api.run("ingest-bars", "nightly-ingest", {
        "request": {"symbols": ["AAPL", "MSFT"], "start": "2024-07-11T00:00:00+00:00",
                    "end": "2024-07-12T22:00:00+00:00"},
        "data_dir": str(stack.data_dir), "tws": {"client_id": 21, **tws}})
    assert ingest["state"]["type"] == "COMPLETED", ingest["state"]
    artifacts = api.artifacts(ingest["id"])
    assert {"tws-preflight", "ingest-summary", "ingest-symbols"} <= set(artifacts)
    rows = json.loads(artifacts["ingest-symbols"]["data"])
    assert [(r["symbol"], r["inserted"]) for r in rows] == [("AAPL", 780), ("MSFT", 780)]
    assert "HEALTHY" in artifacts["tws-preflight"]["data"]
    print(f"ingest run: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    backtest = api.run("backtest", "adhoc-backtest", {
        "request": {"symbols": ["AAPL"], "start": "2024-07-11T00:00:00+00:00", "end": "2024-07-13T00:00:00+00:00"},
        "data_dir": str(stack.data_dir)})
    assert backtest["state"]["type"] == "COMPLETED", backtest["state"]
    assert {"backtest-summary", "backtest-trades"} <= set(api.artifacts(backtest["id"]))
    print(f"backtest run: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    grid = api.run("backtest-grid", "grid-backtest", {
        "request": {"symbol": "AAPL", "grid": {"fast_period": [5, 10], "slow_period": [20, 30]}, "chunks": 2,
                    "start": "2024-07-11T00:00:00+00:00", "end": "2024-07-13T00:00:00+00:00"},
        "data_dir": str(stack.data_dir)})
    assert grid["state"]["type"] == "COMPLETED", grid["state"]
    assert {"grid-summary", "grid-top"} <= set(api.artifacts(grid["id"]))
    print(f"grid run: {time.monotonic() - t0:.1f} s")

    # TWS now refuses client id 10 ("in use"); two health checks in the fault must give one alert.
    t0 = time.monotonic()
    send_command("127.0.0.1", stack.sim_control, {"cmd": "set", "faults": {"busy_client_ids": [10]}})
    for _ in range(2):
        run = api.run("tws-health-check", "tws-health-check", {"client_id": 10, "check_data": False, **tws})
        assert run["state"]["type"] == "FAILED"
        assert "client-id-in-use" in run["state"]["message"]
    _wait(lambda: len(api.events(UNHEALTHY_EVENT)) >= 2, "two ibkr.tws.unhealthy events")
    stack.receiver.wait_for(lambda r: "client-id-in-use" in r.body.get("subject", ""))
    time.sleep(3)  # room for a duplicate to show up, if the dedupe were broken
    alerts = _alerts(stack.receiver, "TWS unusable")
    assert len(alerts) == 1, [a.body for a in alerts]
    body = alerts[0].body["body"]
    assert "[client-id-in-use]" in body and "IBKR_CLIENT_ID=11" in body and "Traceback" not in body
    assert alerts[0].path == f"/alerts/{TOKEN}"
    print(f"fault, two health checks, one alert: {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    send_command("127.0.0.1", stack.sim_control, {"cmd": "reset"})
    run = api.run("tws-health-check", "tws-health-check", {"client_id": 10, "check_data": False, **tws})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    _wait(lambda: len(api.events(HEALTHY_EVENT)) == 2, "ibkr.tws.healthy from the ingestion and this run")
    notices = stack.receiver.wait_for(lambda r: "usable again" in r.body.get("subject", ""))
    assert len(notices) == 1, [e["payload"] for e in api.events(RECOVERED_EVENT)]
    assert notices[0].body["subject"] == f"TWS usable again at 127.0.0.1:{stack.sim_port}"
    assert "(was: client-id-in-use)" in notices[0].body["body"]
    # Healthy again: no second notice.
    run = api.run("tws-health-check", "tws-health-check", {"client_id": 10, "check_data": False, **tws})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    _wait(lambda: len(api.events(HEALTHY_EVENT)) == 3, "the third ibkr.tws.healthy event")
    time.sleep(2)
    assert len(_alerts(stack.receiver, "usable again")) == 1
    assert len(_alerts(stack.receiver, "TWS unusable")) == 1
    print(f"recovery: {time.monotonic() - t0:.1f} s")


def _create_alert_automations(stack: Stack, api: Api) -> None:
    """The webhook block (token kept in the block's secrets), then the automations, twice: no duplicates."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        CustomWebhookNotificationBlock(
            name="e2e", url=stack.receiver.url("/alerts/{{token}}"), secrets={"token": TOKEN},
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save(BLOCK.split("/")[1], overwrite=True)
    first = _ibkr("alerts", "sync", "--alert-block", BLOCK, env=stack.env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "ibkr-tws-alert: created" in first.stdout
    # Re-deploying against the existing server: deployments upserted, automations left alone, nothing duplicated.
    redeploy = _ibkr("up", "--api-url", stack.api_url, "--home", str(stack.home / "redeploy"), "--no-worker",
                     "--alert-block", BLOCK, env=stack.env)
    assert redeploy.returncode == 0, redeploy.stderr[-3000:]
    assert "automation ibkr-tws-alert: unchanged" in redeploy.stderr
    names = [a["name"] for a in api("POST", "/automations/filter", {})]
    assert sorted(names) == ["ibkr-tws-alert", "ibkr-tws-recovery"]


def _wait(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_webhook_secret_appears_in_no_log_artifact_or_event(stack: Stack) -> None:
    """The token reached the receiver (above) but no flow-run log, artifact, event, block read or process log."""
    api = Api(stack.api_url)
    assert stack.receiver.matching(lambda r: TOKEN in r.path), "the alert scenario did not run"
    logs, offset = [], 0
    while page := api("POST", "/logs/filter", {"limit": 200, "offset": offset}):
        logs += page
        offset += len(page)
    assert logs and not [line["message"] for line in logs if TOKEN in line["message"]]
    assert TOKEN not in json.dumps(api("POST", "/artifacts/filter", {}))
    page = api("POST", "/events/filter", {"limit": 50})
    events = page["events"]
    while page.get("next_page"):
        page = api.client.get(page["next_page"]).raise_for_status().json()
        events += page["events"]
    assert any(e["event"] == UNHEALTHY_EVENT for e in events)
    assert TOKEN not in json.dumps(events)
    assert TOKEN not in json.dumps(api("POST", "/block_documents/filter", {"include_secrets": False}))
    for log in stack.state["logs"].values():
        assert TOKEN not in Path(log).read_text(errors="replace"), log


def test_cli_ingest_records_its_run_in_the_server_ibkr_up_started(stack: Stack) -> None:
    """With no PREFECT_API_URL, `ibkr data ingest` finds the server `ibkr up` left running (through PREFECT_HOME's
    state file) and runs as the `ingest-bars` flow there, rather than start a temporary server."""
    env = {k: v for k, v in stack.env.items() if k != "PREFECT_API_URL"}
    result = _ibkr("data", "ingest", "MSFT", "--bar-size", "1 day", "--lookback-days", "10", "--quality-engine",
                   "polars", "--port", str(stack.sim_port), "--client-id", "44", "--data-dir",
                   str(stack.data_dir / "cli"), "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from ibkr up" in result.stderr and "temporary" not in result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "prefect" and payload["prefect_api_url"] == stack.api_url
    assert payload["symbols"][0]["rows_inserted"] > 0
    run = Api(stack.api_url)("GET", f"/flow_runs/{payload['flow_run_id']}")
    assert run["state_type"] == "COMPLETED"
    assert Api(stack.api_url)("GET", f"/flows/{run['flow_id']}")["name"] == "ingest-bars"


def test_ibkr_down_stops_everything(stack: Stack) -> None:
    pids = [stack.state["server_pid"], stack.state["worker_pid"]]
    assert all(group_alive(pid) for pid in pids)
    done = _ibkr("down", "--home", str(stack.home), "--timeout", "10", env=stack.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not any(group_alive(pid) for pid in pids)
    assert not (stack.home / "ibkr-up.json").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.api_url}/health", timeout=2)
