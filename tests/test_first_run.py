"""A first run never crashes: `ibkr data ingest` with a fresh Prefect home and no Prefect server configured, run
outside `make` (so without the Makefile's generous start-up timeout), runs without Prefect and says so; asked
for Prefect (`--prefect`), it says what it is waiting for and either runs or ends with a clear message and exit
code, never Prefect's traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ibkr_flows.cli.errors import EXIT_PREFECT_UNAVAILABLE
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.helpers_cli import cli_env

WAITING = "starting a temporary Prefect server"


def _ingest(tmp_path: Path, sim: EmbeddedSimulator, *options: str, **env: str
            ) -> tuple[subprocess.CompletedProcess[str], float]:
    """`ibkr data ingest` as a user runs it outside `make`: the Makefile's exports minus its start-up timeout."""
    environment = cli_env(tmp_path / "prefect-home", IBKR_DATA_DIR=str(tmp_path / "data"),
                          IBKR_PACING_DIR=str(tmp_path / "pacing"), **env)
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in env:
        del environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ibkr_flows.cli.app", "data", "ingest", "AAPL", "--bar-size", "1 day",
         "--lookback-days", "10", "--quality-engine", "polars", "--host", sim.host, "--port", str(sim.port),
         "--client-id", "40", *options],
        capture_output=True, text=True, env=environment, timeout=400)
    return result, time.perf_counter() - started


def test_a_first_run_without_a_prefect_server_runs_without_prefect_and_says_so(tmp_path: Path) -> None:
    with EmbeddedSimulator() as sim:
        result, elapsed = _ingest(tmp_path, sim, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingesting without Prefect" in result.stderr and WAITING not in result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "local" and payload["flow_run_id"] is None and payload["ok"]
    assert payload["symbols"][0]["rows_inserted"] > 0
    assert not (tmp_path / "prefect-home").exists()  # Prefect was never started, nor its database created
    print(f"first run without Prefect: {elapsed:.1f} s")


def test_a_first_run_asked_for_prefect_with_a_fresh_home_says_what_it_waits_for(tmp_path: Path) -> None:
    with EmbeddedSimulator() as sim:
        result, elapsed = _ingest(tmp_path, sim, "--prefect")
    assert result.returncode == 0, result.stdout + result.stderr
    assert WAITING in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "data" / "bars" / "_delta_log").is_dir()
    print(f"first run, fresh Prefect home: {elapsed:.1f} s")


def test_a_prefect_server_that_does_not_start_in_time_is_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedSimulator() as sim:
        result, elapsed = _ingest(tmp_path, sim, "--prefect", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    assert result.returncode == EXIT_PREFECT_UNAVAILABLE, result.stdout + result.stderr
    assert WAITING in result.stderr
    assert "did not answer within 1 s" in result.stderr and "PREFECT_API_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()
    assert elapsed < 60
