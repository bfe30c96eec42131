"""One pacing authority per gateway: processes with nothing on disk in common (two machines, as far as pacing can
tell) share IB's budget through a Postgres ledger (IBKR_PACING_LEDGER), against one simulator that paces as IB does.
The control run, the same two processes with a ledger file each, shows the violations the shared ledger prevents."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from ibkr_flows.ingest.pacing_ledgers import LEDGER_ENV, PacingLedgerError, PostgresLedger
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.pacing_processes import pacing_simulator, two_processes
from tests.postgres_server import PostgresServer, postgres_server

TIME_SCALE = 0.01
"""IB's 10-minute window becomes 6 s on both sides (simulator and budgets)."""
START = date(2024, 6, 17)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("pg"), database="pacing", user="ibkr") as server:
        yield server


def _two_processes(tmp_path: Path, sim: EmbeddedSimulator, ledger_url: str | None) -> list[dict]:
    return two_processes(tmp_path, sim, ledger_url, time_scale=TIME_SCALE, start=START)


def test_two_processes_sharing_a_postgres_ledger_make_no_pacing_violation(tmp_path: Path,
                                                                          postgres: PostgresServer) -> None:
    with pacing_simulator() as sim:
        sim.update_faults(enforce_pacing=True, time_scale=TIME_SCALE)
        results = _two_processes(tmp_path, sim, postgres.url(driver="postgresql"))
        snapshot = sim.snapshot()
    sent = snapshot["requests"].get("reqHistoricalData", 0) + snapshot["requests"].get("reqHeadTimeStamp", 0)
    assert sent > 60, "too few requests to cross IB's 60-per-10-minutes window: the test would prove nothing"
    assert snapshot["pacing_violations"] == 0, snapshot["pacing_violations_by_rule"]
    assert all(r["failed"] == [] and r["rows"] > 0 for r in results), results
    assert sum(r["waited_s"] for r in results) > 0, "the budget never waited: the window was not reached"


def test_separate_ledgers_on_one_gateway_violate_the_pacing_rules(tmp_path: Path) -> None:
    """The control: what two machines do today without a shared ledger (IB counts both against one session)."""
    with pacing_simulator() as sim:
        sim.update_faults(enforce_pacing=True, time_scale=TIME_SCALE)
        _two_processes(tmp_path, sim, None)
        assert sim.snapshot()["pacing_violations"] > 0


def test_an_unreachable_ledger_is_a_clear_error_with_the_fix() -> None:
    ledger = PostgresLedger("postgresql+asyncpg://ibkr:secret@127.0.0.1:1/pacing", gateway="127.0.0.1:7497")
    with pytest.raises(PacingLedgerError) as caught:
        asyncio.run(ledger.update(lambda events, now: None, 600))
    message = str(caught.value)
    assert LEDGER_ENV in message and "127.0.0.1:1/pacing" in message and "secret" not in message


def test_the_ledger_table_holds_only_the_live_window(postgres: PostgresServer) -> None:
    """Events older than the window are deleted as the ledger is used, so the table stays IB's window in size."""
    async def run() -> tuple[int, list[str]]:
        ledger = PostgresLedger(postgres.url(), gateway="gw:1")
        try:
            await ledger.update(lambda events, now: events.append([now - 100, 1, "TRADES", "old", 1, "t-old", True]),
                                600)
            await ledger.update(lambda events, now: events.append([now, 1, "TRADES", "new", 1, "t-new", True]), 50)
            seen = await ledger.update(lambda events, now: [e[5] for e in events], 50)
        finally:
            await ledger.aclose()
        connection = await asyncpg.connect(postgres.url(driver="postgresql"))
        try:
            rows = await connection.fetchval("SELECT count(*) FROM ibkr_pacing_events WHERE gateway = 'gw:1'")
        finally:
            await connection.close()
        return rows, seen

    rows, seen = asyncio.run(run())
    assert seen == ["t-new"] and rows == 1
