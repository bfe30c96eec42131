"""Cost of the quality gate: Great Expectations vs the same rules as plain polars expressions.

Builds N clean 1-minute extended-hours bars (one contract, consecutive sessions) and times `validate_bars` with
each engine, end to end (session lookup, gate, clean/quarantine split, completeness), on the clean frame and on
a copy with 0.1% bad rows (the GX failure path re-runs the failing expectations with COMPLETE results), then the
gate alone (GX: pandas hand-over + suite + failing rows; polars: the rule expressions). Prints milliseconds per
100k rows and the GX/polars ratios; the GX import and context warm-up are excluded and reported once.
Run: `.venv/bin/python bench/quality_checks.py [--rows 100000 1000000] [--runs 3]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import polars as pl

from ibkr_flows.ib.sessions import session_bounds, sessions_between
from ibkr_flows.quality.checks import BarSeries, Sessions, rules
from ibkr_flows.quality.gx_suite import run_suite
from ibkr_flows.quality.validate import validate_bars
from storage.schema import BAR_COLUMNS

BAR_SIZE = "1 min"
FIRST_DAY = datetime(2015, 1, 1, tzinfo=UTC)


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


def with_bad_rows(frame: pl.DataFrame, every: int = 1000) -> pl.DataFrame:
    """Every `every`th row broken, cycling through high < low, negative volume and a half-bar shift."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    validate_bars(clean_bars(500), bar_size=BAR_SIZE, use_rth=False, what_to_show="TRADES")
    print(f"GX import + context + suite warm-up (once per process): {time.perf_counter() - started:.1f} s\n")
    print(f"{'':>31} | {'validate_bars, ms/100k':<24}| {'gate only, ms/100k':<24}")
    print(f"{'rows':>9} {'frame':>8} {'quarantined':>11} | {'GX':>8} {'polars':>8} {'ratio':>6} "
          f"| {'GX':>8} {'polars':>8} {'ratio':>6}")
    for rows in args.rows:
        clean = clean_bars(rows)
        for label, frame in (("clean", clean), ("0.1% bad", with_bad_rows(clean))):
            seconds = {}
            for engine in ("great_expectations", "polars"):
                seconds[engine] = best_of(args.runs, partial(validate_bars, frame, bar_size=BAR_SIZE, use_rth=False,
                                                             what_to_show="TRADES", engine=engine))
            series = BarSeries(BAR_SIZE, use_rth=False, what_to_show="TRADES")
            sessions = Sessions.for_frame(frame, series)
            gate_gx = best_of(args.runs, partial(run_suite, frame, series, sessions))
            gate_polars = best_of(args.runs, lambda f=frame, s=series, d=sessions: f.select(rules(s, d).values()))
            quarantined = validate_bars(frame, bar_size=BAR_SIZE, use_rth=False, what_to_show="TRADES",
                                        engine="polars").quarantined.height
            per = 100_000 / rows * 1000
            gx, pol = seconds["great_expectations"] * per, seconds["polars"] * per
            print(f"{rows:>9,} {label:>8} {quarantined:>11,} | {gx:>8.1f} {pol:>8.1f} {gx / pol:>5.0f}x "
                  f"| {gate_gx * per:>8.1f} {gate_polars * per:>8.1f} {gate_gx / gate_polars:>5.0f}x")


if __name__ == "__main__":
    main()
