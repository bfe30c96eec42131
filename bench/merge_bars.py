"""MERGE of 100k new bars into 1M- and 10M-row bars tables vs a plain Parquet append of the same rows, and a
one-symbol, one-month read from the 10M table.

    .venv/bin/python bench/merge_bars.py [--sizes 1000000 10000000] [--runs 3]

The append is the floor (no key matching, no idempotency: re-running it duplicates rows); the MERGE's price over
it is what idempotency costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.bars_table import merge_bars, scan_bars
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS

SYMBOLS = 50
START = datetime(2022, 1, 3, 14, 30, tzinfo=UTC)


def synthetic_bars(rows: int, *, offset_minutes: int = 0, symbols: int = SYMBOLS) -> pl.DataFrame:
    """`rows` 1-minute bars spread over `symbols` symbols, consecutive minutes per symbol (390 per day)."""
    per_symbol = rows // symbols
    minute = np.arange(per_symbol) + offset_minutes
    day, in_day = minute // 390, minute % 390
    base = np.datetime64(START.replace(tzinfo=None), "us")
    ts = base + (day * 1440 + in_day).astype("timedelta64[m]")
    rng = np.random.default_rng(offset_minutes)
    frames = []
    for s in range(symbols):
        close = 100 + np.cumsum(rng.normal(0, 0.05, per_symbol))
        frames.append(pl.DataFrame({
            "symbol": f"S{s:03d}", "con_id": 1000 + s, "exchange": "SMART", "primary_exchange": "NASDAQ",
            "currency": "USD", "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
            "ts": pl.Series(ts).dt.replace_time_zone("UTC"), "open": close, "high": close + 0.1, "low": close - 0.1,
            "close": close, "volume": 1000.0, "wap": close, "bar_count": 10,
            "ingested_at": datetime.now(UTC), "flow_run_id": "bench", "request": "bench",
        }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS}))
    return pl.concat(frames)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def read_one_month(location: TableLocation) -> None:
    month_start = START.replace(day=1) + timedelta(days=31)
    lazy, _ = scan_bars(location, ["S007"], bar_size="1 min", start=month_start,
                        end=(month_start + timedelta(days=31)).replace(day=1))
    lazy.collect()


def bench_size(rows: int, runs: int) -> dict[str, float]:
    base = synthetic_bars(rows)
    per_symbol = rows // SYMBOLS
    figures: dict[str, list[float]] = {"merge": [], "append": [], "read": []}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
            location = TableLocation(Path(tmp))
            merge_bars(location, base)
            parquet_dir = Path(tmp) / "parquet"
            parquet_dir.mkdir()
            base.write_parquet(parquet_dir / "base.parquet")
            new = synthetic_bars(100_000, offset_minutes=per_symbol + run * 2000)
            figures["merge"].append(timed(lambda: merge_bars(location, new)))  # noqa: B023
            figures["append"].append(timed(lambda: new.write_parquet(parquet_dir / "new.parquet")))  # noqa: B023
            figures["read"].append(timed(lambda: read_one_month(location)))  # noqa: B023
    return {k: statistics.median(v) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'table rows':>12} | {'MERGE 100k':>10} | {'append 100k':>11} | {'ratio':>6} | "
          f"{'read 1 sym x 1 month':>20}")
    for rows in args.sizes:
        f = bench_size(rows, args.runs)
        print(f"{rows:>12,} | {f['merge']:>9.2f}s | {f['append']:>10.3f}s | {f['merge'] / f['append']:>5.0f}x | "
              f"{f['read'] * 1000:>18.0f}ms")


if __name__ == "__main__":
    main()
