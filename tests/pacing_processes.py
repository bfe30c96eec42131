"""Two ingestion processes on one gateway, sharing nothing on disk (two machines, as far as pacing can tell):
each its own home, pacing directory and data directory, and its own client id. Used by the shared-ledger test and
by bench/pacing_shared.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from ibkr_flows.ingest.pacing_ledgers import DIR_ENV, LEDGER_ENV
from ibkr_flows.sim.embedded import EmbeddedSimulator

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
PROCESSES = {"first": ("AAPL", "MSFT", "SPY"), "second": ("QQQ", "IBM", "NVDA")}
INGEST = """
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.pacing_ledgers import default_ledger
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from storage.location import TableLocation

port, client_id, data_dir, scale, start, *symbols = sys.argv[1:]
settings = IBKRSettings(host="127.0.0.1", port=int(port), client_id=int(client_id), connect_timeout=5.0)
request = IngestRequest(symbols=symbols, bar_size="30 secs", start=datetime.fromisoformat(start),
                        end=datetime(2024, 7, 12, 22, tzinfo=UTC), quality_engine="polars",
                        symbol_concurrency=len(symbols))
budget = PacingBudget(default_ledger(settings.host, settings.port), time_scale=float(scale))
policy = RetryPolicy(max_attempts=6, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=10)

async def main():
    try:
        return await ingest_async(request, TableLocation(Path(data_dir)), settings, budget=budget, policy=policy)
    finally:
        await budget.aclose()

report = asyncio.run(main())
print(json.dumps({"failed": [s.symbol for s in report.failed], "rows": sum(s.rows_inserted for s in report.symbols),
                  "waited_s": report.pacing_wait_s, "elapsed_s": report.elapsed_s}))
"""


def two_processes(tmp_path: Path, sim: EmbeddedSimulator, ledger_url: str | None, *, time_scale: float,
                  start: date) -> list[dict]:
    """Run both ingestions of 30-second bars from `start` at once; their JSON summaries. `ledger_url` None: each
    keeps its own file ledger (what two machines do without a shared authority)."""
    running = []
    for client_id, (name, symbols) in enumerate(PROCESSES.items(), start=31):
        home = tmp_path / name
        home.mkdir()
        env = {**os.environ, DIR_ENV: str(home / "pacing"), "HOME": str(home)}
        env.pop(LEDGER_ENV, None)
        if ledger_url:
            env[LEDGER_ENV] = ledger_url
        running.append(subprocess.Popen(
            [sys.executable, "-c", INGEST, str(sim.port), str(client_id), str(home / "data"), str(time_scale),
             datetime.combine(start, datetime.min.time(), tzinfo=UTC).isoformat(), *symbols],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in running:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"ingestion process failed (exit {process.returncode}): {err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def pacing_simulator() -> EmbeddedSimulator:
    return EmbeddedSimulator(clock=lambda: NOW)
