"""Two years of rolled ES from the simulator: ingest just the dated contracts a `days:N` roll holds (each from one
session before the previous contract's roll, for the gap bar, to its own roll) as 1-hour bars, then build the
continuous series. Reports the requests made against the pacing floor (the least time IB's hard limits would allow
for them, as in pacing_backfill.py: binding only on a gateway that paces every bar size, `--all-bar-sizes`) and
against the fewest requests IB's duration limit per request would allow, and the time to build the series.

    .venv/bin/python bench/rolled_es.py [--years 2] [--rule days:5] [--adjust ratio] [--all-bar-sizes]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibkr_flows.continuous.build import build_continuous, store_build
from ibkr_flows.continuous.contracts import ContinuousSpec
from ibkr_flows.continuous.rules import Adjustment, RollKind, RollRule
from ibkr_flows.continuous.sessions import session_before
from ibkr_flows.ib.calendars import CME_GLOBEX
from ibkr_flows.ib.sessions import sessions_between
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import BURST_MAX, BURST_WINDOW_S, LONG_MAX, LONG_WINDOW_S, PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.universe import LISTINGS
from storage.location import TableLocation

END = datetime(2025, 3, 29, tzinfo=UTC)
CLOCK = datetime(2025, 4, 4, 22, 0, tzinfo=UTC)
MONTH_PER_REQUEST = timedelta(days=30)
"""IB's longest duration for 1-hour bars in one request (1 M): the fewest requests the data could take."""


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def contract_windows(start: datetime, rule: RollRule) -> list[tuple[str, datetime, datetime]]:
    """(instrument id, start, end) of each ES contract the rule holds in [start, END), with one session of
    overlap before each roll for the gap bar."""
    futures = sorted((i for i in LISTINGS if i.symbol == "ES" and i.sec_type == "FUT"), key=lambda i: i.last_trade_date)
    windows, held_from = [], start
    for inst in futures:
        expiry = datetime.strptime(inst.last_trade_date, "%Y%m%d").date()
        roll = midnight(session_before(expiry, rule.sessions, CME_GLOBEX))
        if roll <= start:
            continue
        overlap_from = held_from - timedelta(days=4) if windows else held_from  # the sessions before the roll
        windows.append((f"FUT:ES@CME:{inst.contract_month}", overlap_from, min(roll, END)))
        held_from = roll
        if roll >= END:
            break
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=float, default=2.0)
    parser.add_argument("--rule", default="days:5", help="days:N (the ingestion windows follow it) ")
    parser.add_argument("--adjust", default="ratio")
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--all-bar-sizes", action="store_true", help="hard pacing limits for every size, both sides")
    args = parser.parse_args()
    rule = RollRule.parse(args.rule)
    if rule.kind is not RollKind.SESSIONS_BEFORE_EXPIRY:
        parser.error("the ingestion windows follow a days:N rule")
    start = END - timedelta(days=round(365.25 * args.years))
    windows = contract_windows(start, rule)

    with tempfile.TemporaryDirectory(prefix="bench-rolled-es-") as tmp, \
            EmbeddedSimulator(clock=lambda: CLOCK) as sim:
        sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=args.all_bar_sizes, time_scale=args.time_scale)
        location = TableLocation(Path(tmp))
        budget = PacingBudget(Path(tmp) / "ledger.json", time_scale=args.time_scale, all_bar_sizes=args.all_bar_sizes)
        settings = IBKRSettings(host=sim.host, port=sim.port, client_id=78)
        started = time.perf_counter()
        failed = []
        for instrument, lo, hi in windows:
            request = IngestRequest(symbols=(instrument,), bar_size="1 hour", start=lo, end=hi,
                                    quality_engine="polars")
            report = asyncio.run(ingest_async(request, location, settings, budget=budget))
            failed += [s.symbol for s in report.failed]
        ingest_s = time.perf_counter() - started
        snap = sim.snapshot()

        spec = ContinuousSpec("ES", bar_size="1 hour", rule=rule, adjustment=Adjustment.parse(args.adjust))
        started = time.perf_counter()
        build = build_continuous(location, spec)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        store_build(location, build)
        store_s = time.perf_counter() - started

    historical = snap["requests"].get("reqHistoricalData", 0)
    heads = snap["requests"].get("reqHeadTimeStamp", 0)
    requests = historical + heads
    most_per_contract = max(len(sessions_between(lo, hi)) for _, lo, hi in windows) + 1
    floor = _floor(requests, most_per_contract)
    fewest = sum(math.ceil((hi - lo) / MONTH_PER_REQUEST) for _, lo, hi in windows)
    sessions = build.series["session"].n_unique()
    print(f"rolled ES: {args.years:g} years of 1-hour RTH bars to {END:%Y-%m-%d}, rule {rule}, adjustment "
          f"{args.adjust}, {len(windows)} contracts ({windows[0][0]} .. {windows[-1][0]}), time scale "
          f"{args.time_scale}{', hard limits for every size' if args.all_bar_sizes else ''}")
    print(f"  requests          {requests} (historical {historical}, head timestamp {heads}); failed: "
          f"{failed or 'none'}; pacing violations {snap['pacing_violations']}")
    print(f"  fewest possible   {fewest} historical requests at IB's 1 M per request for 1-hour bars "
          f"(the planner asks one per session)")
    print(f"  ingest wall time  {ingest_s:7.2f} s")
    print(f"  pacing floor      {floor * args.time_scale:7.2f} s  (IB clock: {floor / 60:6.1f} min) for {requests} "
          "requests under IB's hard limits (60 per 10 min; binding only with --all-bar-sizes)")
    print(f"  continuous series {build.series.height:,} bars, {sessions} sessions, {build.rolls.height} rolls, "
          f"bars table version {build.bars_version}")
    print(f"  build             {build_s:7.3f} s  (store series + rolls {store_s:.3f} s)")


def _floor(requests: int, most_per_contract: int) -> float:
    """IB-clock seconds: the overall 60-per-10-minutes rule over every request, or the per-contract burst rule
    over the busiest contract, whichever binds (pacing_backfill.pacing_floor_s's rules)."""
    overall = max(0, math.ceil(requests / LONG_MAX) - 1) * LONG_WINDOW_S
    busiest = max(0, math.ceil(most_per_contract / BURST_MAX) - 1) * BURST_WINDOW_S
    return max(overall, busiest)


if __name__ == "__main__":
    main()
