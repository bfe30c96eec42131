"""Writing 100k 1-minute bars into 1M- and 10M-row bars tables: a plain Delta append (the floor: no key
matching, re-running it duplicates rows), the full MERGE `merge_bars` did before issue 20 (kept here as the
baseline), and today's `merge_bars` (a pruned read of the stored bars the batch could collide with, then an
append of the new bars, or one MERGE limited to the months of the revised ones); plus that read on its own and a
one-symbol, one-month read.

    .venv/bin/python bench/merge_bars.py [--sizes 1000000 10000000] [--runs 3] [--cache /tmp/ibkr-bench-bars]

Two batches: "new" (100k bars past everything stored) and "overlap" (100k bars, 10% of them revise stored bars
with other prices, 90% new). Each write runs on its own copy of a cached base table (parquet files hard-linked,
the log copied), built once per size under --cache (10M rows take a few minutes the first time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.bars_table import conform_bars, merge_bars, scan_bars, stored_in_range
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, BAR_KEY, LINEAGE_COLUMNS, PARTITION_COLUMN, PRICE_COLUMNS

SYMBOLS = 50
BATCH = 100_000
OVERLAP = 0.10
START = datetime(2022, 1, 3, 14, 30, tzinfo=UTC)
CACHE_FORMAT = 1  # bump when synthetic_bars changes


def synthetic_bars(rows: int, *, offset_minutes: int = 0, symbols: int = SYMBOLS) -> pl.DataFrame:
    """`rows` 1-minute bars spread over `symbols` symbols, consecutive minutes per symbol (390 per day); prices are
    a random walk seeded by the offset, so two batches overlapping in time disagree on their common bars."""
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


def merge_before(location: TableLocation, frame: pl.DataFrame) -> dict[str, int]:
    """`merge_bars` as it was before issue 20: every batch one MERGE over the months it touches."""
    bars = conform_bars(frame)
    months = ", ".join(f"'{m}'" for m in sorted(bars[PARTITION_COLUMN].unique().to_list()))
    keys = " AND ".join(f"t.{k} = s.{k}" for k in BAR_KEY)
    changed = " OR ".join(f"t.{c} != s.{c}" for c in PRICE_COLUMNS)
    return (DeltaTable(location.bars)
            .merge(bars.to_arrow(), f"{keys} AND t.{PARTITION_COLUMN} IN ({months})", source_alias="s",
                   target_alias="t")
            .when_matched_update_all(predicate=changed).when_not_matched_insert_all().execute())


def append(location: TableLocation, frame: pl.DataFrame) -> None:
    """The floor: a blind Delta append of the same rows (conformed the same way)."""
    conform_bars(frame).write_delta(location.bars, mode="append",
                                    delta_write_options={"partition_by": [PARTITION_COLUMN]})


def parquet(location: TableLocation, frame: pl.DataFrame) -> None:
    """What the bench called "append" before issue 20: one Parquet file, no Delta commit at all."""
    conform_bars(frame).write_parquet(location.root / "plain.parquet")


def lookup(location: TableLocation, frame: pl.DataFrame) -> None:
    """Only the pruned read `merge_bars` makes before deciding how to write."""
    stored_in_range(DeltaTable(location.bars), conform_bars(frame))


def cached_base(cache: Path, rows: int) -> Path:
    """A table of `rows` synthetic bars, built once (one MERGE-created commit, as the bench always did)."""
    root = cache / f"v{CACHE_FORMAT}-{rows}"
    if not DeltaTable.is_deltatable(str(root / "bars")):
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        merge_bars(TableLocation(root), synthetic_bars(rows))
        print(f"  (built the {rows:,}-row base table in {time.perf_counter() - started:.1f} s under {root})",
              flush=True)
    return root


def fresh_copy(base: Path, into: Path) -> TableLocation:
    """A private copy of the base table: data files hard-linked (Delta never rewrites a file in place), log
    files copied (so nothing written to the copy reaches the cache)."""
    def link_or_copy(src: str, dst: str) -> None:
        if "_delta_log" in Path(src).parts:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(base, into, copy_function=link_or_copy)
    return TableLocation(into)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def read_one_month(location: TableLocation) -> None:
    month_start = START.replace(day=1) + timedelta(days=31)
    lazy, _ = scan_bars(location, ["S007"], bar_size="1 min", start=month_start,
                        end=(month_start + timedelta(days=31)).replace(day=1))
    lazy.collect()


WRITERS: dict[str, Callable[[TableLocation, pl.DataFrame], object]] = {
    "parquet": parquet, "append": append, "merge-before": merge_before, "merge_bars": merge_bars, "lookup": lookup,
}


def bench_size(base: Path, rows: int, runs: int) -> dict[str, dict[str, float]]:
    per_symbol = rows // SYMBOLS
    batch_per_symbol = BATCH // SYMBOLS
    figures: dict[str, dict[str, list[float]]] = {case: {w: [] for w in WRITERS} for case in ("new", "overlap")}
    figures["new"]["read"] = []
    for run in range(runs):
        batches = {
            "new": synthetic_bars(BATCH, offset_minutes=per_symbol + run * 2 * batch_per_symbol),
            "overlap": synthetic_bars(BATCH, offset_minutes=per_symbol - int(OVERLAP * batch_per_symbol)),
        }
        for case, batch in batches.items():
            for name, writer in WRITERS.items():  # same order every run; each on its own copy of the base
                with tempfile.TemporaryDirectory(prefix="bench-merge-", dir=base.parent) as tmp:
                    location = fresh_copy(base, Path(tmp) / "t")
                    DeltaTable(location.bars)  # warm the OS cache of the log alike for every writer
                    figures[case][name].append(timed(lambda: writer(location, batch)))  # noqa: B023
                    if case == "new" and name == "merge_bars":
                        result = merge_bars(location, batch)  # the same batch again: nothing to write
                        assert (result.rows_inserted, result.rows_updated) == (0, 0), result
                        figures["new"]["read"].append(timed(lambda: read_one_month(location)))  # noqa: B023
    return {case: {k: statistics.median(v) for k, v in f.items()} for case, f in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ibkr-bench-bars")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"100k bars into a bars table, median of {args.runs}. parquet: one Parquet file (the old bench's "
          f"'append'); append: blind Delta append; merge-before: the full MERGE before issue 20; lookup: "
          f"merge_bars' pruned read alone")
    print(f"{'table rows':>12} | {'batch':>7} | {'parquet':>7} | {'append':>7} | {'merge-before':>12} | "
          f"{'merge_bars':>10} | {'vs append':>9} | {'vs before':>9} | {'lookup':>7}")
    reads = {}
    for rows in args.sizes:
        base = cached_base(args.cache, rows)
        result = bench_size(base, rows, args.runs)
        for case, f in result.items():
            print(f"{rows:>12,} | {case:>7} | {f['parquet']:>6.3f}s | {f['append']:>6.3f}s | "
                  f"{f['merge-before']:>11.3f}s | {f['merge_bars']:>9.3f}s | {f['merge_bars'] / f['append']:>8.1f}x | "
                  f"{f['merge-before'] / f['merge_bars']:>7.1f}x↓ | {f['lookup'] * 1000:>5.0f}ms", flush=True)
        reads[rows] = result["new"]["read"]
    for rows, seconds in reads.items():
        print(f"one symbol x one month read from the {rows:,}-row table: {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
