"""Cost of the quality gate: the "great_expectations" engine vs the "polars" engine (the same rules, no GX).

Builds N clean 1-minute extended-hours bars (one contract, consecutive sessions) and times `validate_bars` with
each engine, end to end (session lookup, rules, GX gate, clean/quarantine split, completeness), on the clean frame
and on a copy with 0.1% bad rows (at least one), best of `--runs`; then GX's own share (the `gx_suite.gate` call).
The warm-up is measured in fresh processes: each engine's first call on a 1,000-row batch (GX: import, context,
suite), and GX's first call when `warm_up` was started before a simulated 4 s fetch.
Run: `.venv/bin/python bench/quality_checks.py [--rows 1000 10000 100000] [--runs 5]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import polars as pl

from ibkr_flows.ib.sessions import session_bounds, sessions_between
from ibkr_flows.quality.checks import BarSeries, Sessions, first_failed, rules
from ibkr_flows.quality.gx_suite import gate
from ibkr_flows.quality.validate import validate_bars
from storage.schema import BAR_COLUMNS

BAR_SIZE = "1 min"
FIRST_DAY = datetime(2015, 1, 1, tzinfo=UTC)
FETCH_SECONDS = 4.0
COLD = """
import sys, time
sys.path.insert(0, "bench")
from quality_checks import BAR_SIZE, FETCH_SECONDS, clean_bars
from ibkr_flows.quality.validate import validate_bars, warm_up
engine, overlap = sys.argv[1], sys.argv[2] == "overlap"
frame = clean_bars(1000)
if overlap:
    warm_up(engine)
    time.sleep(FETCH_SECONDS)  # the fetch from IB the warm-up overlaps
started = time.perf_counter()
validate_bars(frame, bar_size=BAR_SIZE, use_rth=False, what_to_show="TRADES", engine=engine)
print(time.perf_counter() - started)
"""


def clean_bars(rows: int) -> pl.DataFrame:
    """`rows` aligned, in-session, consistent 1-minute ETH bars, oldest first."""
    spans, total = [], 0
    for day in sessions_between(FIRST_DAY, FIRST_DAY + timedelta(days=rows // 500 + 30)):
        open_, close = session_bounds(day, use_rth=False)
        spans.append(pl.datetime_range(open_, close, timedelta(minutes=1), closed="left", time_zone="UTC",
                                       eager=True))
        total += spans[-1].len()
        if total >= rows:
            break
    ts = pl.concat(spans)[:rows]
    wave = (pl.int_range(pl.len()) % 977).cast(pl.Float64) / 10
    return pl.DataFrame({"ts": ts}).select(
        symbol=pl.lit("AAPL"), con_id=pl.lit(265598, pl.Int64()), exchange=pl.lit("SMART"),
        primary_exchange=pl.lit("NASDAQ"), currency=pl.lit("USD"), bar_size=pl.lit(BAR_SIZE),
        what_to_show=pl.lit("TRADES"), use_rth=pl.lit(False), ts=pl.col("ts"),
        open=100 + wave, high=101 + wave, low=99 + wave, close=100.5 + wave,
        volume=pl.lit(1000.0), wap=100.2 + wave, bar_count=pl.lit(12, pl.Int64()),
    ).cast(BAR_COLUMNS)


def with_bad_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """0.1% of the rows (at least one) broken, cycling through high < low, negative volume and a half-bar shift."""
    every = min(1000, frame.height)
    index = pl.int_range(pl.len())
    kind = index // every % 3
    hit = index % every == every - 1
    return frame.with_columns(
        high=pl.when(hit & (kind == 0)).then(pl.col("low") - 1).otherwise("high"),
        volume=pl.when(hit & (kind == 1)).then(-5.0).otherwise("volume"),
        ts=pl.when(hit & (kind == 2)).then(pl.col("ts") + timedelta(seconds=30)).otherwise("ts"),
    )


def best_of(runs: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def cold_first_call(engine: str, overlap: bool = False) -> float:
    """Seconds of the first `validate_bars` call in a fresh process."""
    argv = [sys.executable, "-c", COLD, engine, "overlap" if overlap else "cold"]
    return float(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    polars_cold, gx_cold = cold_first_call("polars"), cold_first_call("great_expectations")
    gx_overlapped = cold_first_call("great_expectations", overlap=True)
    print("First call in a fresh process, 1,000 rows (includes the warm-up):")
    print(f"  polars {polars_cold * 1000:.0f} ms | GX {gx_cold * 1000:.0f} ms ({gx_cold / polars_cold:.0f}x) | "
          f"GX after warm_up() overlapped a {FETCH_SECONDS:.0f} s fetch {gx_overlapped * 1000:.0f} ms "
          f"({gx_overlapped / polars_cold:.1f}x)\n")

    validate_bars(clean_bars(500), bar_size=BAR_SIZE, use_rth=False, what_to_show="TRADES")  # warm, not timed
    print(f"Warm, best of {args.runs}, ms per batch")
    print(f"{'rows':>9} {'frame':>8} {'quarantined':>11} | {'GX':>8} {'polars':>8} {'ratio':>6} | {'GX gate':>8}")
    for rows in args.rows:
        clean = clean_bars(rows)
        for label, frame in (("clean", clean), ("0.1% bad", with_bad_rows(clean))):
            seconds = {engine: best_of(args.runs, partial(validate_bars, frame, bar_size=BAR_SIZE, use_rth=False,
                                                          what_to_show="TRADES", engine=engine))
                       for engine in ("great_expectations", "polars")}
            result = validate_bars(frame, bar_size=BAR_SIZE, use_rth=False, what_to_show="TRADES", engine="polars")
            series = BarSeries(BAR_SIZE, use_rth=False, what_to_show="TRADES")
            failing = frame.select(~rule for rule in rules(series, Sessions.for_frame(frame, series)).values())
            failed_check = failing.select(first_failed()).to_series()
            gate_seconds = best_of(args.runs, partial(gate, failed_check))
            gx, pol = seconds["great_expectations"] * 1000, seconds["polars"] * 1000
            print(f"{rows:>9,} {label:>8} {result.quarantined.height:>11,} | {gx:>8.1f} {pol:>8.1f} "
                  f"{gx / pol:>5.1f}x | {gate_seconds * 1000:>8.1f}")


if __name__ == "__main__":
    main()
