"""60 concurrent flow-run creations against a Prefect server on SQLite and one on Postgres, both started here
with `ibkr up`'s own code (no worker: only the API and its database are measured).

Why: a team's workers, schedules and UI users create runs at the same time; SQLite serialises writers and answers
503 under that load, Postgres should take it with 0 errors. Each backend gets two passes of 60 `asyncio.gather`ed
`create_flow_run_from_deployment` calls: with the client's retries off (what the server answers) and with
Prefect's default retries (what a caller sees).

Run: `.venv/bin/python bench/prefect_database.py [--runs 60]` (Debian's postgresql installed: `make postgres`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from ibkr_flows.stack.database import parse_database_url
from ibkr_flows.stack.local import UpOptions, down, up
from tests.postgres_server import postgres_server

DEPLOYMENT = "tws-health-check/tws-health-check"
DEFAULT_CLIENT_RETRIES = 5
"""Prefect 3.8's default PREFECT_CLIENT_MAX_RETRIES."""


@dataclass(frozen=True)
class Pass:
    backend: str
    client_retries: int
    created: int
    errors: collections.Counter[str]
    wall_s: float


async def _create_runs(api_url: str, runs: int, client_retries: int) -> tuple[int, collections.Counter[str], float]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_CLIENT_MAX_RETRIES: client_retries}):
        async with get_client() as client:
            deployment_id: UUID = (await client.read_deployment_by_name(DEPLOYMENT)).id
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(client.create_flow_run_from_deployment(deployment_id) for _ in range(runs)), return_exceptions=True)
            wall = time.perf_counter() - started
    errors = collections.Counter(_describe(o) for o in outcomes if isinstance(o, BaseException))
    return runs - sum(errors.values()), errors, wall


def _describe(error: BaseException) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    return f"HTTP {status}" if status else type(error).__name__


def measure(backend: str, home: Path, database_url: str | None, runs: int) -> list[Pass]:
    options = UpOptions(home=home, database=parse_database_url(database_url) if database_url else None,
                        start_worker=False)
    state = up(options, echo=lambda line: None)
    try:
        passes = []
        for retries in (0, DEFAULT_CLIENT_RETRIES):
            created, errors, wall = asyncio.run(_create_runs(state.api_url, runs, retries))
            passes.append(Pass(backend, retries, created, errors, wall))
        return passes
    finally:
        down(home, timeout=10, echo=lambda line: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prefect-db-") as tmp:
        results = measure("sqlite", Path(tmp) / "sqlite", None, args.runs)
        with postgres_server(Path(tmp)) as postgres:
            results += measure("postgres", Path(tmp) / "postgres", postgres.url(), args.runs)
    print(f"{args.runs} concurrent flow-run creations per pass")
    print(f"{'backend':<9} {'client retries':>14} {'created':>8} {'errors':>7} {'wall s':>7}  error kinds")
    for p in results:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in p.errors.most_common()) or "-"
        print(f"{p.backend:<9} {p.client_retries:>14} {p.created:>8} {sum(p.errors.values()):>7} {p.wall_s:>7.2f}"
              f"  {kinds}")


if __name__ == "__main__":
    main()
