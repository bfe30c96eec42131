"""`ibkr up` / `ibkr down` plumbing that needs no Prefect server: process groups, the state file, refusals.
The full start-deploy-run-stop cycle is tests/test_e2e_deployments.py."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.stack.local import UpOptions, up
from ibkr_flows.stack.processes import StackError, group_alive, spawn, stop_group
from ibkr_flows.stack.state import StackState, load_state, save_state

runner = CliRunner()
STUBBORN = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('ready', flush=True); " \
           "time.sleep(60)"


def _spawn(tmp_path: Path, code: str) -> int:
    return spawn([sys.executable, "-c", code], {}, tmp_path / "log.txt", cwd=tmp_path)


def _wait_ready(tmp_path: Path) -> None:
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "log.txt").read_text():
        assert time.monotonic() < deadline, "the test process did not start"
        time.sleep(0.05)


def test_stop_group_terminates_the_whole_group(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "import subprocess, sys, time; "
                           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    assert group_alive(pid)
    assert stop_group(pid, timeout=5) == "stopped"
    assert not group_alive(pid)  # the grandchild too


def test_stop_group_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, STUBBORN)
    _wait_ready(tmp_path)  # SIGTERM before the handler is set would simply work
    assert stop_group(pid, timeout=1) == "killed"
    assert not group_alive(pid)
    assert stop_group(pid, timeout=1) == "not running"


def test_up_refuses_while_a_previous_up_runs(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "import time; time.sleep(60)")
    try:
        save_state(tmp_path, StackState(api_url="http://127.0.0.1:1/api", ui_url=None, pool="p", server_pid=pid))
        with pytest.raises(StackError, match="already up"):
            up(UpOptions(home=tmp_path), echo=print)
    finally:
        stop_group(pid, timeout=5)


def test_up_refuses_a_busy_port_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StackError, match="already in use"):
            up(UpOptions(home=tmp_path, port=busy.getsockname()[1]), echo=print)
    assert load_state(tmp_path) is None


def test_cli_down_without_up(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down", "--home", str(tmp_path)])
    assert result.exit_code == 0
    assert "nothing to stop" in result.output


def test_cli_up_rejects_malformed_alert_blocks(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--home", str(tmp_path), "--alert-block", "ibkr-alerts"])
    assert result.exit_code == 2
    assert "block-type-slug" in result.output
