"""`ibkr backtest run` as the user's old command, storing its result as it does by default: whole wall time, the
share that is imports, where the command's own time goes (read, engine, store), and what it must not import
(Prefect, Great Expectations).

    .venv/bin/python bench/cli_backtest.py [--runs 5]

The table holds the seed's case: 60 one-minute AAPL bars, 2023-12-29 20:01-21:00 UTC (the old tool reported
0.04 s for the engine on it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.bars_table import merge_bars  # noqa: E402
from storage.location import TableLocation  # noqa: E402
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS  # noqa: E402

ARGS = ["backtest", "run", "--strategy", "sma_crossover", "--symbol", "AAPL", "--start", "2023-12-29 20:01:00",
        "--end", "2023-12-29 21:00:00", "--fast-period", "5", "--slow-period", "10"]
PROBE = """
import sys, time
started = time.perf_counter()
from ibkr_flows.cli.app import app
imported = time.perf_counter() - started
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("prefect", "great_expectations", "ib_async") if m in sys.modules)
    print("PROBE", imported, time.perf_counter() - started, ",".join(heavy), file=sys.stderr)
"""


def seed_table(root: Path) -> None:
    start = datetime(2023, 12, 29, 20, 0, tzinfo=UTC)
    close = 192.5 + np.cumsum(np.random.default_rng(0).normal(0, 0.05, 61))
    merge_bars(TableLocation(root), pl.DataFrame({
        "symbol": "AAPL", "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
        "ts": [start + timedelta(minutes=i) for i in range(61)], "open": close, "high": close + 0.05,
        "low": close - 0.05, "close": close, "volume": 1000.0, "wap": close, "bar_count": 10,
        "ingested_at": datetime.now(UTC), "flow_run_id": "bench", "request": "bench",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        seed_table(Path(tmp))
        env = {**os.environ, "IBKR_DATA_DIR": tmp}
        walls, imports, totals, executions, heavy = [], [], [], [], ""
        phases: dict[str, list[float]] = {"read": [], "engine": [], "store": []}
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE, *ARGS, "--json"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - started)
            probe = next(line for line in done.stderr.splitlines() if line.startswith("PROBE")).split()
            imports.append(float(probe[1]))
            totals.append(float(probe[2]))
            heavy = probe[3] if len(probe) > 3 else ""
            payload = json.loads(done.stdout)
            executions.append(payload["execution_time_s"])
            for phase, seconds in payload["timings_s"].items():
                phases[phase].append(seconds)
    wall, imp = statistics.median(walls), statistics.median(imports)
    print(f"ibkr backtest run (the old command, 60 one-minute bars), median of {args.runs}:")
    print(f"  process wall time        {wall:6.3f} s")
    print(f"  importing the CLI        {imp:6.3f} s  ({imp / wall:.0%} of the wall time)")
    print(f"  command after imports    {statistics.median(executions):6.3f} s  (the old tool: 0.04 s for its engine)")
    for phase, seconds in phases.items():
        print(f"    {phase:<22} {statistics.median(seconds):6.3f} s")
    print(f"  imports inside command   {statistics.median(totals) - imp - statistics.median(executions):6.3f} s"
          "  (polars, numpy, deltalake: loaded by the command that needs them)")
    print(f"  interpreter start + exit {wall - statistics.median(totals):6.3f} s")
    print(f"  heavy modules imported   {heavy or 'none (no prefect, great_expectations, ib_async)'}")


if __name__ == "__main__":
    main()
