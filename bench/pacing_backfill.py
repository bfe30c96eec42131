"""Backfill K symbols x D sessions of 30-second bars (the hard limits' domain) from a simulator that enforces IB's
pacing rules: wall time against the pacing floor (the least time IB's rules allow for that many requests), and
violations (must be 0).

    .venv/bin/python bench/pacing_backfill.py [--symbols 6] [--days 40] [--time-scale 0.02]
    .venv/bin/python bench/pacing_backfill.py --bar-size "1 min" --all-bar-sizes    # a gateway pacing every size

IB's windows (15 s, 2 s, 10 min) are multiplied by --time-scale on both sides (simulator and client budget), so a
backfill that needs an hour at IB's real pace runs in about a minute; figures are reported in both clocks.
`--all-bar-sizes` makes both sides apply the hard limits to every bar size (`pacing_all_bar_sizes` on the
simulator, `all_bar_sizes` on the budget): without it, 1-minute bars are not held to them (see nightly_pacing.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibkr_flows.ib.sessions import sessions_between
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import BURST_MAX, BURST_WINDOW_S, LONG_MAX, LONG_WINDOW_S, PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.location import TableLocation

UNIVERSE = ("AAPL", "MSFT", "SPY", "QQQ", "IBM", "NVDA")
END = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)


def pacing_floor_s(requests_per_symbol: int, symbols: int) -> float:
    """Least time (IB's clock) the rules allow: 60 requests per 10 minutes overall, and 5 per 2 s per contract
    (the client's conservative reading of IB's 'six or more' rule)."""
    total = requests_per_symbol * symbols
    long_rule = max(0, math.ceil(total / LONG_MAX) - 1) * LONG_WINDOW_S
    burst_rule = max(0, math.ceil(requests_per_symbol / BURST_MAX) - 1) * BURST_WINDOW_S
    return max(long_rule, burst_rule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=6, choices=range(1, len(UNIVERSE) + 1))
    parser.add_argument("--days", type=int, default=40, help="sessions per symbol")
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--bar-size", default="30 secs", help="one request per RTH session (30 secs or larger)")
    parser.add_argument("--all-bar-sizes", action="store_true", help="hard limits for every size, both sides")
    args = parser.parse_args()

    symbols = UNIVERSE[: args.symbols]
    start = END - timedelta(days=args.days * 7 // 5 + 7)
    sessions = sessions_between(start, END)[-args.days:]
    start = datetime.combine(sessions[0], datetime.min.time(), tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="bench-pacing-") as tmp, EmbeddedSimulator(clock=lambda: END) as sim:
        sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=args.all_bar_sizes, time_scale=args.time_scale)
        request = IngestRequest(symbols=symbols, bar_size=args.bar_size, start=start, end=END,
                                quality_engine="polars", symbol_concurrency=len(symbols))
        settings = IBKRSettings(host=sim.host, port=sim.port, client_id=77)
        budget = PacingBudget(Path(tmp) / "ledger.json", time_scale=args.time_scale, all_bar_sizes=args.all_bar_sizes)
        report = asyncio.run(ingest_async(request, TableLocation(Path(tmp)), settings, budget=budget))
        snap = sim.snapshot()
    requests = snap["requests"].get("reqHistoricalData", 0) + snap["requests"].get("reqHeadTimeStamp", 0)
    floor = pacing_floor_s(requests // len(symbols), len(symbols)) * args.time_scale
    rows = sum(s.rows_inserted for s in report.symbols)
    scale = args.time_scale
    print(f"backfill: {len(symbols)} symbols x {len(sessions)} sessions of {args.bar_size} bars, time scale {scale}"
          f"{', hard limits for every size' if args.all_bar_sizes else ''}")
    print(f"  paced requests   {requests} (historical {snap['requests'].get('reqHistoricalData', 0)}, "
          f"head timestamp {snap['requests'].get('reqHeadTimeStamp', 0)})")
    print(f"  rows stored      {rows:,}  failed symbols: {[s.symbol for s in report.failed] or 'none'}")
    print(f"  wall time        {report.elapsed_s:7.2f} s   (IB clock: {report.elapsed_s / scale / 60:6.1f} min)")
    print(f"  pacing floor     {floor:7.2f} s   (IB clock: {floor / scale / 60:6.1f} min)")
    ratio = f"{report.elapsed_s / floor:7.2f}x" if floor else "n/a (fits in one window)"
    print(f"  wall / floor     {ratio}")
    print(f"  budget waits     {report.pacing_wait_s:7.2f} s summed over concurrent requests")
    print(f"  pacing violations {snap['pacing_violations']} (simulator's count; target 0) "
          f"{snap['pacing_violations_by_rule'] or ''}")


if __name__ == "__main__":
    main()
