"""Client ids leased per gateway (issue 17): processes on one gateway take different ids before connecting, from
lock files on one machine or Postgres advisory locks for a team; a holder that dies frees its id without any
expiry; two ingestions both configured with id 10 run side by side without TWS refusing either (no 326)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ibkr_flows.ingest.client_leases import LEASE_SPAN, ClientIdsExhaustedError, lease_client_id
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.pacing_ledgers import DIR_ENV, LEDGER_ENV
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.location import TableLocation
from tests.postgres_server import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import asyncio, sys, time
from ibkr_flows.ingest.client_leases import lease_client_id
lease = asyncio.run(lease_client_id("127.0.0.1", 7497, 10))
print(lease.client_id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "pacing"))
    return tmp_path / "pacing"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("pg"), database="pacing", user="ibkr") as server:
        yield server


def _lease(preferred: int = 10, host: str = "127.0.0.1", port: int = 7497):  # type: ignore[no-untyped-def]
    return asyncio.run(lease_client_id(host, port, preferred))


def _held_by_a_process_then_killed(env: dict[str, str]) -> None:
    """A process leases id 10 and is killed -9 while holding it: the id must come back without waiting."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "10"
        assert _lease().client_id == 11  # 10 is the other process's
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_file_leases_hand_out_distinct_ids_and_come_back_on_release(lock_dir: Path) -> None:
    first, second = _lease(), _lease()
    assert (first.client_id, second.client_id) == (10, 11)
    assert _lease(port=4002).client_id == 10  # another gateway, its own ids
    first.release()
    again = _lease()
    assert again.client_id == 10
    for lease in (second, again):
        lease.release()


def test_a_killed_holder_frees_its_file_lease(lock_dir: Path) -> None:
    _held_by_a_process_then_killed({**os.environ})
    assert _lease().client_id == 10


def test_exhausted_ids_are_a_clear_error(lock_dir: Path) -> None:
    held = [_lease() for _ in range(LEASE_SPAN)]
    with pytest.raises(ClientIdsExhaustedError, match="set IBKR_CLIENT_ID to another range"):
        _lease()
    for lease in held:
        lease.release()


def test_postgres_leases_are_shared_and_a_killed_holder_frees_its_id(postgres: PostgresServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease's connection belongs to the event loop that took it: each is released on that loop."""
    monkeypatch.setenv(LEDGER_ENV, postgres.url())

    async def ids_now(count: int) -> list[int]:
        leases = [await lease_client_id("127.0.0.1", 7497, 10) for _ in range(count)]
        for lease in leases:
            lease.release()
        return [lease.client_id for lease in leases]

    assert asyncio.run(ids_now(2)) == [10, 11]
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "10"
        assert asyncio.run(ids_now(1)) == [11]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 10  # the server ends the dead client's session when its socket closes
    while asyncio.run(ids_now(1)) != [10]:
        assert time.monotonic() < deadline, "the killed holder's id was not freed"
        time.sleep(0.1)


def test_two_ingestions_configured_with_one_id_never_collide(lock_dir: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    now = datetime(2024, 7, 12, 22, tzinfo=UTC)
    with EmbeddedSimulator(clock=lambda: now) as sim:
        settings = IBKRSettings(host=sim.host, port=sim.port, client_id=10, connect_timeout=2.0)

        async def both():  # type: ignore[no-untyped-def]
            runs = []
            for symbol in ("AAPL", "MSFT"):
                request = IngestRequest(symbols=[symbol], bar_size="1 hour", start=datetime(2024, 7, 8, tzinfo=UTC),
                                        end=now, quality_engine="polars")
                budget = PacingBudget(tmp_path / f"{symbol}.json", time_scale=0.01)
                runs.append(ingest_async(request, TableLocation(tmp_path / symbol), settings, budget=budget))
            return await asyncio.gather(*runs)

        with caplog.at_level(logging.INFO, logger="ibkr.ingest"):
            reports = asyncio.run(both())
        errors = sim.snapshot()["errors_sent"]
    assert [s.status for r in reports for s in r.symbols] == ["ok", "ok"]
    assert "326" not in errors, errors
    assert any("client id 10 is leased by another process" in r.getMessage() and r.getMessage().endswith(
        "using 11") for r in caplog.records)


def test_an_ingestion_whose_id_tws_holds_goes_on_with_a_free_one(lock_dir: Path, tmp_path: Path) -> None:
    """Client id 10 held by a client outside the leases (TWS refuses it: 326): the preflight and the ingestion
    both continue with 11, and the run stores its bars."""
    from typer.testing import CliRunner

    from ibkr_flows.cli.app import app

    now = datetime(2024, 7, 12, 22, tzinfo=UTC)
    with EmbeddedSimulator(clock=lambda: now) as sim:
        sim.update_faults(busy_client_ids={10})
        result = CliRunner().invoke(app, [
            "data", "ingest", "AAPL", "--bar-size", "1 hour", "--start", "2024-07-08", "--end", "2024-07-12",
            "--host", sim.host, "--port", str(sim.port), "--client-id", "10", "--no-prefect", "--json"],
            env={"IBKR_DATA_DIR": str(tmp_path / "data"), DIR_ENV: str(lock_dir)})
    report = json.loads(result.output)
    assert result.exit_code == 0, result.output
    assert report["symbols"][0]["status"] == "ok" and report["symbols"][0]["rows_inserted"] > 0
