"""The `ibkr` command line, run as users run it: in-process via Typer, and the simulator as a real subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.sim.control import ControlError, send_command
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.conftest import free_port

runner = CliRunner()


def test_data_connect_json_healthy(sim: EmbeddedSimulator) -> None:
    result = runner.invoke(app, ["data", "connect", "--host", sim.host, "--port", str(sim.port), "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["status"] == "healthy" and verdict["server_version"] == 178


def test_data_connect_reads_ibkr_env(sim: EmbeddedSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """IBKR_HOST / IBKR_PORT / IBKR_CLIENT_ID, the names the user's earlier CLI read."""
    sim.update_faults(busy_client_ids={33})
    monkeypatch.setenv("IBKR_HOST", sim.host)
    monkeypatch.setenv("IBKR_PORT", str(sim.port))
    monkeypatch.setenv("IBKR_CLIENT_ID", "33")
    result = runner.invoke(app, ["data", "connect", "--json"])
    verdict = json.loads(result.output)
    assert verdict["failure_class"] == "client-id-in-use" and verdict["client_id"] == 33
    assert result.exit_code == 17


def test_data_connect_prints_the_fix(sim: EmbeddedSimulator) -> None:
    sim.update_faults(connect="accept-silence")
    result = runner.invoke(app, ["data", "connect", "--host", sim.host, "--port", str(sim.port)],
                           env={"COLUMNS": "160"})
    assert result.exit_code == 14
    assert "handshake-silent" in result.output and "How to fix" in result.output
    assert "Traceback" not in result.output


def test_data_connect_patient_measures_what_the_quick_verdict_bounds(sim: EmbeddedSimulator) -> None:
    """A farm answering in 1.6 s: the quick verdict (within 1.5 s) can only bound the latency from below and
    points at --patient; --patient waits for the answer and reports the latency it measured. Both warn, exit 0."""
    sim.update_faults(latency_seconds=1.6)
    args = ["data", "connect", "--host", sim.host, "--port", str(sim.port), "--json"]
    quick = runner.invoke(app, args)
    patient = runner.invoke(app, [*args, "--patient"])
    assert quick.exit_code == 0 and patient.exit_code == 0, quick.output + patient.output
    quick_verdict, patient_verdict = json.loads(quick.output), json.loads(patient.output)
    assert quick_verdict["failure_class"] == patient_verdict["failure_class"] == "slow"
    assert "--patient" in quick_verdict["summary"] and "no answer within" in quick_verdict["summary"]
    assert "answered after" in patient_verdict["summary"] and "--patient" not in patient_verdict["summary"]


def test_help_explains_exit_codes() -> None:
    result = runner.invoke(app, ["data", "connect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "17 client id in use" in " ".join(result.output.split())
    assert "22 slow" in " ".join(result.output.split())


@pytest.fixture
def sim_process() -> Iterator[tuple[int, int]]:
    """`ibkr sim start` as a separate process, as a user would run it next to their own code; (port, control)."""
    port, control = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibkr_flows.cli.app", "sim", "start", "--port", str(port),
         "--control-port", str(control), "--fault", "read_only=true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            send_command("127.0.0.1", control, {"cmd": "status"}, timeout=1)
            break
        except ControlError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"simulator did not start: {proc.communicate()[1].decode()[-2000:]}")
            time.sleep(0.2)
    yield port, control
    proc.terminate()
    proc.wait(timeout=10)


def test_sim_subprocess_faults_switch_at_run_time(sim_process: tuple[int, int]) -> None:
    port, control = sim_process
    ctl = ["--port", str(port), "--control-port", str(control)]
    connect = ["data", "connect", "--host", "127.0.0.1", "--port", str(port), "--json"]
    verdict = json.loads(runner.invoke(app, connect).output)
    assert verdict["failure_class"] == "read-only-api"  # set at start with --fault

    result = runner.invoke(app, ["sim", "set", "connect=accept-close", *ctl])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["faults"]["connect"] == "accept-close"
    assert json.loads(runner.invoke(app, connect).output)["failure_class"] == "connection-rejected"

    assert runner.invoke(app, ["sim", "reset", *ctl]).exit_code == 0
    assert json.loads(runner.invoke(app, connect).output)["status"] == "healthy"

    status = json.loads(runner.invoke(app, ["sim", "status", *ctl]).output)
    assert status["connections_total"] >= 3 and status["requests"]["reqHistoricalData"] >= 1


def test_sim_start_on_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", "sim", "start", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_sim_set_rejects_unknown_keys() -> None:
    result = runner.invoke(app, ["sim", "set", "no_such_fault=1", "--port", str(free_port())])
    assert result.exit_code != 0
    assert "no_such_fault" in result.output


SCRIPT = """
import json, sys
from ibkr_flows.cli.app import main
sys.argv = ["ibkr", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    print("LOADED", json.dumps({"code": done.code, "modules": sorted(m for m in sys.modules
                                                                     if m.startswith("ibkr_flows.cli."))}))
"""


@pytest.mark.parametrize(("argv", "loaded", "usage"), [
    (["backtest", "--help"], {"ibkr_flows.cli.app", "ibkr_flows.cli.backtest"}, "Usage: ibkr backtest"),
    (["demo", "--help"], {"ibkr_flows.cli.app", "ibkr_flows.cli.demo"}, "Usage: ibkr demo [OPTIONS]"),
])
def test_the_script_builds_only_the_group_it_runs(argv: list[str], loaded: set[str], usage: str) -> None:
    """`ibkr` (`main`) imports and builds just the group or command named first: `ibkr backtest run` pays for
    neither the simulator's commands (asyncio) nor typer's inspection of the whole tree. A lone command stays a
    subcommand (`ibkr demo --help` is demo's help, not an unexpected argument)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=120)
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("LOADED"))[7:])
    assert report["code"] == 0 and usage in done.stdout, done.stdout + done.stderr
    cli_modules = {m for m in report["modules"] if m.count(".") == 2}
    assert loaded <= cli_modules and "ibkr_flows.cli.sim" not in cli_modules


def test_the_script_without_a_command_lists_every_group() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("│ ") and line.split()[1:]}
    assert {"data", "sim", "backtest", "alerts", "demo", "up", "down"} <= listed, done.stdout
