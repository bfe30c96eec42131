"""Long commands show progress on a terminal and stay quiet with --json: `ibkr data ingest` run in a real
pseudo-terminal, as a user's shell runs it."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.helpers_cli import cli_env

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _in_terminal(tmp_path: Path, sim: EmbeddedSimulator, *options: str) -> tuple[int, str, str]:
    """Run the command with stdout on a pseudo-terminal (stderr piped apart); returns exit code, what the
    terminal showed (escape sequences removed) and stderr."""
    leader, follower = pty.openpty()
    env = cli_env(tmp_path / "prefect-home", IBKR_DATA_DIR=str(tmp_path / "data"),
                  IBKR_PACING_DIR=str(tmp_path / "pacing"), TERM="xterm-256color")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibkr_flows.cli.app", "data", "ingest", "AAPL", "MSFT", "--bar-size", "1 min",
         "--lookback-days", "4", "--quality-engine", "polars", "--host", sim.host, "--port", str(sim.port),
         "--client-id", "45", *options], stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the command exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    return proc.wait(timeout=120), ANSI.sub(b"", bytes(shown)).decode(errors="replace"), stderr


def test_ingest_shows_requests_done_and_time_left_on_a_terminal(tmp_path: Path) -> None:
    with EmbeddedSimulator() as sim:
        code, shown, stderr = _in_terminal(tmp_path, sim)
    assert code == 0, shown + stderr
    bar = [line for line in shown.splitlines() if "ingest" in line and "requests" in line]
    assert bar, shown  # the progress line was drawn: "ingest ━━━ 3/8 requests 0:00:01 left 0:00:02"
    assert any(re.search(r"\d+/\d+ requests", line) and "left" in line for line in bar), bar
    assert "MSFT" in shown and "ok" in shown  # then the report table


def test_ingest_json_on_a_terminal_prints_only_the_json(tmp_path: Path) -> None:
    with EmbeddedSimulator() as sim:
        code, shown, stderr = _in_terminal(tmp_path, sim, "--json")
    assert code == 0, shown + stderr
    payload = json.loads(shown)  # nothing but the JSON document reached the terminal: no bar, no table
    assert [s["symbol"] for s in payload["symbols"]] == ["AAPL", "MSFT"]
    assert all(s["status"] == "ok" and s["rows_inserted"] > 0 for s in payload["symbols"])
    assert payload["requests_sent"] >= 2 and "requests" not in stderr
