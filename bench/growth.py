"""Does the nightly cost grow with the stored history? (issue 17: it must be O(new data), <= 1.5x for 10x rows)

    .venv/bin/python bench/growth.py [--rows 5e6 5e7] [--symbols 500] [--days-per-commit 5] [--runs 3]
                                     [--dir /tmp] [--keep]

For each size, a bars table of that many 1-minute RTH bars (500 symbols x 390 bars a session, weekdays ending on
the same last session, so both sizes hold the same current month and differ only in history) is written in
`--days-per-commit` sessions per append, partitioned by month and with the statistics setting `merge_bars` creates
it with, then checkpointed (see `build`); a backtest_results table holds rows // 1000 rows, one run (a row per
symbol) a commit: 10 runs at 5M rows, 100 at 50M (a longer history holds more stored runs too, and an append must
not cost more for them). Then one nightly, on a private copy of both tables per run (data files hard-linked):

- open: `DeltaTable` of the bars table (the log replay every write and read starts with), the median of
  `OPENS` in a row;
- watermarks: `watermarks()` for every symbol (what the ingestion resumes from), and the full-table scan it was
  before issue 17 for comparison;
- merge_bars: one new session for every symbol (a plain append), then the next session with `--revised` revised
  bars of the last session stored before the nightly (one MERGE limited to the revised months, with the new
  bars: it rewrites the data files holding the revised bars, so it costs what those files hold);
- results: `append_backtest_results` of one run with one row per symbol, the median of five runs stored in a row.

Prints the median of each figure at each size and the ratio largest/smallest; the sizes' nightlies take turns,
run after run, so a shared machine's drifting load weighs on both alike. The generated tables are deleted at
the end unless --keep.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.merge_bars import fresh_copy
from storage.bars_table import BARS_CONFIGURATION, conform_bars, merge_bars, watermarks
from storage.location import TableLocation
from storage.results_table import RESULTS_SCHEMA, append_backtest_results
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS, PARTITION_COLUMN
from storage.tables import scan_table, write

BARS_PER_SESSION = 390
LAST_SESSION = date(2024, 6, 12)  # a Wednesday: the current month holds 9 sessions at every size
OPEN_UTC = timedelta(hours=13, minutes=30)
SERIES = {"bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True}
BUILD_FORMAT = 2  # bump when `build` changes: a --keep'd table of an older build is not reused


def weekdays_ending(last: date, count: int) -> list[date]:
    """The `count` weekdays up to `last`, oldest first (holidays ignored: the synthetic market never closes)."""
    days: list[date] = []
    day = last
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days[::-1]


def next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def symbol_name(index: int) -> str:
    return f"S{index:04d}"


def session_bars(days: list[date], symbols: int, seed: int) -> pl.DataFrame:
    """Every symbol's 390 bars of each of `days`, sorted by symbol then time (as a compacted file would be);
    prices a random walk per symbol."""
    starts = np.array([np.datetime64(datetime.combine(d, datetime.min.time()) + OPEN_UTC, "us") for d in days])
    ts = (starts[:, None] + np.arange(BARS_PER_SESSION).astype("timedelta64[m]")).ravel()
    per_symbol = ts.size
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.05, (symbols, per_symbol)), axis=1).ravel()
    index = np.repeat(np.arange(symbols), per_symbol)
    names = pl.Series([symbol_name(i) for i in range(symbols)]).gather(index)
    now = datetime.now(UTC)
    return pl.DataFrame({
        "symbol": names, "con_id": 100_000 + index, "exchange": "SMART", "primary_exchange": "NASDAQ",
        "currency": "USD", **SERIES, "ts": pl.Series(np.tile(ts, symbols)).dt.replace_time_zone("UTC"),
        "open": close, "high": close + 0.1, "low": close - 0.1, "close": close, "volume": 1000.0, "wap": close,
        "bar_count": 10, "ingested_at": now, "flow_run_id": "bench-growth", "request": "bench-growth",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS})


def result_rows(run_id: str, symbols: int) -> list[dict[str, Any]]:
    """One backtest_results row per symbol, every column filled with a value of its type."""
    now = datetime.now(UTC)
    filler: dict[type[pl.DataType], object] = {pl.String: "x", pl.Float64: 1.0, pl.Int64: 1, pl.Boolean: True,
                                               pl.Datetime: now}
    base = {name: filler[type(dtype)] for name, dtype in RESULTS_SCHEMA.items()}
    return [{**base, "run_id": run_id, "symbol": symbol_name(i)} for i in range(symbols)]


def build(root: Path, rows: int, symbols: int, days_per_commit: int) -> TableLocation:
    """The bars and results tables of one size under `root` (sessions = rows / (symbols x 390), rounded down).

    The bars table ends checkpointed at its last commit. A real one gains a commit per symbol and night, so it is
    always opened from a checkpoint (every 10th commit) plus the 0-9 commits since, each replayed at a cost that
    does not depend on the history. Without the checkpoint the two sizes would be opened at two points of that
    cycle: the 5M-row table, written in 5 commits, from 5 small JSON commits and no checkpoint (cheaper than
    reading any checkpoint), the 50M-row one from its checkpoint plus 2 commits."""
    location = TableLocation(root)
    days = weekdays_ending(LAST_SESSION, rows // (symbols * BARS_PER_SESSION))
    started = time.perf_counter()
    ends = range(len(days), 0, -days_per_commit)  # chunks aligned on the last session: same newest files at any size
    for n, end in enumerate(reversed(ends)):
        bars = conform_bars(session_bars(days[max(0, end - days_per_commit):end], symbols, seed=n))
        if n == 0:
            write(location.bars, bars, mode="error", partition_by=[PARTITION_COLUMN], configuration=BARS_CONFIGURATION)
        else:
            write_deltalake(location.bars, bars, mode="append", partition_by=[PARTITION_COLUMN])
    DeltaTable(location.bars).create_checkpoint()
    for run in range(max(1, rows // 1000 // symbols)):
        append_backtest_results(location, f"seed-{run}", result_rows(f"seed-{run}", symbols))
    stored = scan_table(DeltaTable(location.bars)).select(pl.len()).collect().item()
    print(f"  built {stored:,} bars ({len(days)} sessions, {symbols} symbols, {DeltaTable(location.bars).version() + 1}"
          f" commits) in {time.perf_counter() - started:.0f} s under {root}", flush=True)
    return location


def watermarks_full_scan(location: TableLocation, symbols: list[str]) -> dict[str, datetime]:
    """`watermarks()` as it was before issue 17: one group-by over the whole table."""
    last = (scan_table(DeltaTable(location.bars))
            .filter(pl.col("symbol").is_in(symbols), pl.col("bar_size") == SERIES["bar_size"],
                    pl.col("what_to_show") == SERIES["what_to_show"], pl.col("use_rth") == SERIES["use_rth"])
            .group_by("symbol").agg(pl.col("ts").max()).collect())
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


def nightly_batch(day: date, symbols: int, revised: int) -> pl.DataFrame:
    """The session of `day` for every symbol, plus the last `revised` bars of the stored last session of symbol 0
    with another close (IB revised them)."""
    new = session_bars([day], symbols, seed=day.toordinal())
    last_stored = datetime.combine(LAST_SESSION, datetime.min.time(), UTC) + OPEN_UTC + timedelta(
        minutes=BARS_PER_SESSION - 1)
    revisions = new.head(revised).with_columns(
        ts=pl.datetime_range(last_stored - timedelta(minutes=revised - 1), last_stored, "1m", time_zone="UTC",
                             eager=True),
        close=pl.col("close") + 1.0)
    return pl.concat([new, revisions])


def timed(fn: Callable[[], object]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


OPENS = 20
"""Opens of the bars table timed one after another per nightly; their median is the figure (one ~3 ms open alone
is within this machine's noise)."""


def opens(location: TableLocation) -> float:
    return statistics.median(timed(lambda: DeltaTable(location.bars))[0] for _ in range(OPENS))


RESULTS_APPENDS = 5
"""Runs stored one after another per nightly (a commit each, none of them a checkpoint's: the tables hold 10 or
100 commits and checkpoint every 10th); their median is the figure."""


def results_appends(location: TableLocation, run_id: str, symbols: int) -> float:
    """The median `append_backtest_results` of `RESULTS_APPENDS` runs, one row per symbol each (the rows built
    beforehand: timed is the append, from the rows' conversion to the commit). One ~20 ms append alone is within
    this machine's noise."""
    seconds = []
    for k in range(RESULTS_APPENDS):
        rows = result_rows(f"{run_id}-{k}", symbols)
        took, appended = timed(lambda: append_backtest_results(location, f"{run_id}-{k}", rows))  # noqa: B023
        assert appended == symbols
        seconds.append(took)
    return statistics.median(seconds)


def nightly(base: Path, symbols: int, revised: int, run: int) -> dict[str, float]:
    """One nightly on a private copy of the tables under `base`: the seconds of each figure."""
    names = [symbol_name(i) for i in range(symbols)]
    expected = datetime.combine(LAST_SESSION, datetime.min.time(), UTC) + OPEN_UTC + timedelta(
        minutes=BARS_PER_SESSION - 1)
    appended_day = next_weekday(LAST_SESSION)
    only_new = nightly_batch(appended_day, symbols, 0)
    with_revisions = nightly_batch(next_weekday(appended_day), symbols, revised)
    with tempfile.TemporaryDirectory(prefix="growth-run-", dir=base.parent) as tmp:
        location = fresh_copy(base, Path(tmp) / "t")
        seconds: dict[str, float] = {}
        seconds["open"] = opens(location)
        seconds["watermarks"], marks = timed(lambda: watermarks(location, symbols=names, **SERIES))
        assert marks == dict.fromkeys(names, expected), "watermarks disagree with the generated table"
        seconds["watermarks (full scan, before)"], before = timed(lambda: watermarks_full_scan(location, names))
        assert before == marks
        seconds["merge_bars (new session)"], merged = timed(lambda: merge_bars(location, only_new))
        assert (merged.operation, merged.rows_inserted) == ("append", symbols * BARS_PER_SESSION), merged
        seconds[f"merge_bars (+{revised} revised)"], merged = timed(lambda: merge_bars(location, with_revisions))
        assert (merged.rows_inserted, merged.rows_updated) == (symbols * BARS_PER_SESSION, revised), merged
        seconds["results append"] = results_appends(location, f"nightly-{run}", symbols)
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, nargs="+", default=[5e6, 5e7])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--days-per-commit", type=int, default=5)
    parser.add_argument("--revised", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the generated tables (under --dir/ibkr-growth)")
    args = parser.parse_args()
    work = args.dir / "ibkr-growth"
    sizes = [int(r) for r in args.rows]
    bases = {rows: work / f"v{BUILD_FORMAT}-{rows}" / "base" for rows in sizes}
    figures: dict[int, dict[str, list[float]]] = {rows: {} for rows in sizes}
    try:
        for rows, base in bases.items():
            if not DeltaTable.is_deltatable(str(base / "bars")):
                shutil.rmtree(base, ignore_errors=True)
                build(base, rows, args.symbols, args.days_per_commit)
        for run in range(args.runs):  # the sizes take turns: this machine's load drifts over a bench's minutes
            for rows, base in bases.items():
                for name, value in nightly(base, args.symbols, args.revised, run).items():
                    figures[rows].setdefault(name, []).append(value)
        results = {rows: {name: statistics.median(values) for name, values in per_figure.items()}
                   for rows, per_figure in figures.items()}
        for rows, medians in results.items():
            print(f"  nightly on {rows:,} rows: " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    small, large = sizes[0], sizes[-1]
    print(f"\nnightly of {args.symbols} symbols (two new sessions, the second with {args.revised} revised bars), "
          f"median of {args.runs} runs; ratio = {large:,} rows / {small:,} rows ({large / small:.0f}x data)")
    print(f"{'figure':<32}" + "".join(f"{f'{rows:,} rows':>16}" for rows in sizes) + f"{'ratio':>8}")
    for name in results[small]:
        cells = "".join(f"{results[rows][name] * 1000:>14.1f}ms" for rows in sizes)
        print(f"{name:<32}{cells}{results[large][name] / results[small][name]:>7.2f}x")


if __name__ == "__main__":
    main()
