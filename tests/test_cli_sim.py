"""`ibkr sim` port options: every API port gets a valid control port, impossible values are usage errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.cli.sim import _control_port
from ibkr_flows.sim.control import send_command
from tests.helpers_cli import cli_env, wait_listening

runner = CliRunner()


@pytest.mark.parametrize(("port", "control"), [(7497, 17497), (1, 10001), (55535, 65535), (55536, 45536),
                                               (65535, 55535)])
def test_the_default_control_port_is_always_a_valid_port(port: int, control: int) -> None:
    assert _control_port(port, None) == control


@pytest.mark.parametrize("args", [
    ["--port", "0"], ["--port", "65536"], ["--port", "70000"], ["--port", "-1"],
    ["--port", "7497", "--control-port", "0"], ["--port", "7497", "--control-port", "65536"],
    ["--port", "7497", "--control-port", "7497"],
])
@pytest.mark.parametrize("command", ["start", "status"])
def test_impossible_ports_are_usage_errors(command: str, args: list[str]) -> None:
    result = runner.invoke(app, ["sim", command, *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert "--port" in result.output or "--control-port" in result.output
    if args[-1] == "7497" and "--control-port" in args:
        assert "must differ from the API port" in result.output


def _free_high_port() -> int:
    """A free port above 55535 whose default control port (port - 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port <= 55535:
            continue
        with socket.socket() as api, socket.socket() as control:
            try:
                api.bind(("127.0.0.1", port))
                control.bind(("127.0.0.1", port - 10000))
            except OSError:
                continue
        return port
    pytest.skip("no free port pair above 55535 on this machine")


def test_sim_start_above_55535_without_control_port(tmp_path: Path) -> None:
    """Used to die with an OverflowError traceback (control port = port + 10000 > 65535)."""
    port = _free_high_port()
    proc = subprocess.Popen([sys.executable, "-m", "ibkr_flows.cli.app", "sim", "start", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path))
    try:
        wait_listening(port - 10000, proc)
        assert send_command("127.0.0.1", port - 10000, {"cmd": "status"}, timeout=5)["connections_total"] == 0
        status = runner.invoke(app, ["sim", "status", "--port", str(port)])
        assert status.exit_code == 0, status.output
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    assert f"control on 127.0.0.1:{port - 10000}" in stderr.decode()
    assert "Traceback" not in stderr.decode()
