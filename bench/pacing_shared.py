"""Two ingestion processes sharing nothing on disk (two machines, as far as pacing can tell) backfill 30-second
bars from one simulator that enforces IB's pacing rules: with one Postgres pacing ledger (IBKR_PACING_LEDGER), and
the peer, each with its own ledger file (what two machines do without a shared authority). Prints violations and
wall time against the pacing floor (the least time IB's rules allow for the requests both made together).

    .venv/bin/python bench/pacing_shared.py [--days 40] [--time-scale 0.01]

IB's windows are multiplied by --time-scale on both sides, as in pacing_backfill.py. Wall time is each process's
ingestion (connect to last write), the longer of the two; interpreter start-up is not pacing and is left out.
Needs Debian's Postgres binaries (`make postgres`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pacing_backfill import pacing_floor_s
from ibkr_flows.ib.sessions import sessions_between
from tests.pacing_processes import NOW, PROCESSES, pacing_simulator, two_processes
from tests.postgres_server import postgres_server


def run(ledger: str | None, start, time_scale: float) -> tuple[dict, list[dict]]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="bench-pacing-shared-") as tmp, pacing_simulator() as sim:
        sim.update_faults(enforce_pacing=True, time_scale=time_scale)
        results = two_processes(Path(tmp), sim, ledger, time_scale=time_scale, start=start)
        return sim.snapshot(), results


def report(label: str, snapshot: dict, results: list[dict], time_scale: float) -> None:
    requests = snapshot["requests"].get("reqHistoricalData", 0) + snapshot["requests"].get("reqHeadTimeStamp", 0)
    symbols = sum(len(s) for s in PROCESSES.values())
    floor = pacing_floor_s(requests // symbols, symbols) * time_scale
    wall = max(r["elapsed_s"] for r in results)
    print(f"  {label:<28} requests {requests:4d}  violations {snapshot['pacing_violations']:3d}  "
          f"wall {wall:6.2f} s  floor {floor:6.2f} s  wall/floor {wall / floor if floor else float('nan'):5.2f}x  "
          f"failed {[s for r in results for s in r['failed']] or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=40, help="sessions per symbol")
    parser.add_argument("--time-scale", type=float, default=0.01)
    args = parser.parse_args()
    sessions = sessions_between(NOW - timedelta(days=args.days * 7 // 5 + 7), NOW)[-args.days:]
    print(f"two processes x 3 symbols x {len(sessions)} sessions of 30-second bars, time scale {args.time_scale}")
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as pg_dir, postgres_server(Path(pg_dir),
                                                                                    database="pacing") as pg:
        report("one Postgres ledger", *run(pg.url(driver="postgresql"), sessions[0], args.time_scale),
               args.time_scale)
    report("a ledger file each (peer)", *run(None, sessions[0], args.time_scale), args.time_scale)


if __name__ == "__main__":
    main()
