"""A nightly of 1-minute bars for a 500-symbol universe against the simulator pacing as IB does (hard limits for
bars of 30 s or less and head timestamps only, 50 open for every size), at IB's real time scale: wall time against
the floor the rules actually impose, and against the floor the old all-sizes reading (60 per 10 minutes) imposed.

    .venv/bin/python bench/nightly_pacing.py [--symbols 500] [--concurrency 16]

The table is seeded first with the previous session of every symbol (so the nightly resumes from watermarks, as a
real nightly does; the seed's head timestamps are paced at a shrunk time scale and not timed). The nightly then
fetches the new session of each symbol through `ingest_async` (plan, pacing, fetch, quality check, Delta append).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibkr_flows.ib.pacing_rules import LONG_LIMIT, LONG_WINDOW_S
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.universe import Universe, synthetic_symbol
from storage.location import TableLocation

SEED_START = datetime(2024, 7, 11, tzinfo=UTC)  # Thursday: the session stored before the nightly
SEED_END = datetime(2024, 7, 11, 22, 0, tzinfo=UTC)
NIGHT = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)  # Friday evening, after the close
TWS_MESSAGES_PER_S = 50
"""TWS refuses more than 50 API messages per second from one client (error 100)."""
SEED_TIME_SCALE = 0.001


def old_rule_floor_s(paced_requests: int) -> float:
    """Least time the all-sizes reading allowed: every request under 60 per 10 minutes."""
    return max(0, math.ceil(paced_requests / LONG_LIMIT) - 1) * LONG_WINDOW_S


def run(sim: EmbeddedSimulator, location: TableLocation, symbols: tuple[str, ...], *, start: datetime | None,
        end: datetime, budget: PacingBudget, concurrency: int) -> IngestReport:
    request = IngestRequest(symbols=symbols, bar_size="1 min", start=start, end=end, quality_engine="polars",
                            symbol_concurrency=concurrency)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=70, connect_timeout=5.0)
    return asyncio.run(ingest_async(request, location, settings, budget=budget))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16, help="symbols fetched at once (IngestRequest)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    symbols = tuple(synthetic_symbol(i) for i in range(args.symbols))
    universe = Universe.with_synthetic(args.symbols)
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp, \
            EmbeddedSimulator(clock=lambda: NIGHT, universe=universe) as sim:
        location = TableLocation(Path(tmp) / "data")
        sim.update_faults(enforce_pacing=True, time_scale=SEED_TIME_SCALE)
        seed = run(sim, location, symbols, start=SEED_START, end=SEED_END, concurrency=args.concurrency,
                   budget=PacingBudget(Path(tmp) / "seed-ledger.json", time_scale=SEED_TIME_SCALE))
        before = Counter(sim.snapshot()["requests"])
        sim.update_faults(enforce_pacing=True, time_scale=1.0)  # IB's real windows from here on
        budget = PacingBudget(Path(tmp) / "ledger.json")
        report = run(sim, location, symbols, start=None, end=NIGHT, concurrency=args.concurrency, budget=budget)
        snap = sim.snapshot()
    sent = Counter(snap["requests"]) - before
    historical, heads = sent["reqHistoricalData"], sent["reqHeadTimeStamp"]
    messages = sum(sent.values())
    floor = messages / TWS_MESSAGES_PER_S
    old_floor = old_rule_floor_s(historical + heads)
    rows = sum(s.rows_inserted for s in report.symbols)
    print(f"nightly: {args.symbols} symbols x 1 session of 1-min bars (RTH), {args.concurrency} symbols at once, "
          f"IB's real time scale")
    print(f"  seed (not timed)  {sum(s.rows_inserted for s in seed.symbols):,} rows of the previous session, "
          f"{seed.elapsed_s:.1f} s")
    print(f"  requests          historical {historical} (the new session + the 2-bar overlap IB may revise, per "
          f"symbol), head timestamp {heads}; {messages} API messages in all")
    print(f"  rows stored       {rows:,}  failed symbols: {len(report.failed) or 'none'}")
    print(f"  wall time         {report.elapsed_s:8.1f} s")
    print(f"  floor, IB's rules {floor:8.1f} s   ({messages} messages at TWS's {TWS_MESSAGES_PER_S}/s; no window "
          f"limit for 1-min bars)")
    print(f"  floor, old rule   {old_floor:8.1f} s   ({old_floor / 60:.0f} min: {historical + heads} requests at "
          f"{LONG_LIMIT} per {LONG_WINDOW_S / 60:.0f} min)")
    print(f"  wall / floor      {report.elapsed_s / floor:8.2f}x IB's;  old floor / wall "
          f"{old_floor / report.elapsed_s:.0f}x")
    print(f"  budget waits      {budget.waited_s:.2f} s; strict after a 162: {budget.all_bar_sizes}")
    print(f"  pacing violations {snap['pacing_violations']} (simulator's count; target 0) "
          f"{snap['pacing_violations_by_rule'] or ''}")


if __name__ == "__main__":
    main()
