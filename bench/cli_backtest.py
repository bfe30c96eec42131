"""`ibkr backtest run` as the user's old command, storing its result as it does by default: whole wall time, the
share that is imports, where the command's own time goes (read, engine, store), and what it must not import
(Prefect, Great Expectations).

    .venv/bin/python bench/cli_backtest.py [--runs 5] [--stored-runs 50]

The table holds the seed's case: 60 one-minute AAPL bars, 2023-12-29 20:01-21:00 UTC (the old tool reported
0.04 s for the engine on it). `--stored-runs N` first stores N earlier runs (N commits in backtest_results and in
backtest_trades, as after N backtests): the store opens those tables, and opening one replays its log.
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
from storage.results_table import RESULTS_SCHEMA, append_backtest_results, result_row  # noqa: E402
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS  # noqa: E402
from storage.trades_table import append_trades  # noqa: E402

ARGS = ["backtest", "run", "--strategy", "sma_crossover", "--symbol", "AAPL", "--start", "2023-12-29 20:01:00",
        "--end", "2023-12-29 21:00:00", "--fast-period", "5", "--slow-period", "10"]
PROBE = """
import sys, time
started = time.perf_counter()
from ibkr_flows.cli.app import main
imported = time.perf_counter() - started
sys.argv = ["ibkr", *sys.argv[1:]]  # as the `ibkr` script: main() builds the command line it is asked for
try:
    main()
except SystemExit as done:
    assert not done.code, done.code
finally:
    heavy = sorted(m for m in ("prefect", "great_expectations", "ib_async", "pyarrow") if m in sys.modules)
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


def store_earlier_runs(root: Path, count: int) -> None:
    """`count` runs' rows and trades, one commit per run in each table, as `ibkr backtest run` stores them."""
    moment = datetime(2023, 12, 29, 20, 30, tzinfo=UTC)
    trade = pl.DataFrame({"entry_time": [moment], "exit_time": [moment + timedelta(minutes=5)], "side": ["long"],
                          "size": [10.0], "entry_price": [192.5], "exit_price": [192.6], "pnl": [1.0],
                          "return_pct": [0.05], "commission": [1.0]})
    for k in range(count):
        run_id = f"earlier{k:04d}"
        append_trades(TableLocation(root), run_id, {"AAPL": trade})
        row = result_row(identity={"run_id": run_id, "symbol": "AAPL", "strategy": "sma_crossover",
                                   "params": {"fast_period": 5, "slow_period": 10}}, metrics={"bars": 59})
        append_backtest_results(TableLocation(root), run_id, [{**dict.fromkeys(RESULTS_SCHEMA), **row}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stored-runs", type=int, default=0, help="earlier runs stored before timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        seed_table(Path(tmp))
        store_earlier_runs(Path(tmp), args.stored_runs)
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
    print(f"ibkr backtest run (the old command, 60 one-minute bars, {args.stored_runs} runs stored before), "
          f"median of {args.runs}:")
    print(f"  process wall time        {wall:6.3f} s")
    print(f"  importing the CLI        {imp:6.3f} s  ({imp / wall:.0%} of the wall time)")
    print(f"  command after imports    {statistics.median(executions):6.3f} s  (the old tool: 0.04 s for its engine)")
    for phase, seconds in phases.items():
        print(f"    {phase:<22} {statistics.median(seconds):6.3f} s")
    print(f"  imports, typer set-up    {statistics.median(totals) - imp - statistics.median(executions):6.3f} s"
          "  (polars, numpy, deltalake: loaded by the command that needs them)")
    print(f"  interpreter start + exit {wall - statistics.median(totals):6.3f} s")
    print(f"  heavy modules imported   {heavy or 'none (no prefect, great_expectations, ib_async, pyarrow)'}")


if __name__ == "__main__":
    main()
