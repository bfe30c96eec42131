"""Two real processes writing overlapping and adjacent batches of the same series at the same moment, round after
round, on one Delta table: no key is ever stored twice and no row is lost.

`merge_bars` appends bars it found unstored at table version v with a plain append based on v; what makes that
safe is the series' app transaction every bars commit carries (delta-rs refuses the later of two commits of one
series with `ConcurrentTransaction`, and the loser plans again). Both writers start each round together
(a barrier), so they read the same version and race for the commit."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from storage.bars_table import merge_bars, scan_bars
from storage.location import TableLocation
from tests.test_storage import JULY, make_bars

ROUNDS = 24
STEP = 60  # minutes each writer writes per round
MINUTES = 100 + ROUNDS * STEP + 2 * STEP


def curve(symbol: str, price: float) -> pl.DataFrame:
    """One price history per (symbol, price): slices of it agree on every bar they share."""
    return make_bars(symbol, JULY, MINUTES, price=price, run=f"{symbol}-{price:g}")


def batch(role: int, round_: int) -> pl.DataFrame:
    """Writer 0 writes minutes [o, o+60) of AAPL; writer 1 minutes [o+30, o+90) in even rounds (30 bars shared,
    revised in every fourth round: another price) and [o+60, o+120) in odd ones (adjacent to writer 0's).
    Every third round each also writes a bar range of its own symbol in the same batch (two series, one commit)."""
    start = 100 + round_ * STEP
    if role == 0:
        frames = [curve("AAPL", 100.0).slice(start, STEP)]
    else:
        offset = STEP // 2 if round_ % 2 == 0 else STEP
        frames = [curve("AAPL", 200.0 if round_ % 4 == 0 else 100.0).slice(start + offset, STEP)]
    if round_ % 3 == 0:
        frames.append(curve("MSFT" if role == 0 else "SPY", 50.0).slice(round_ * 10, 10))
    return pl.concat(frames)


def writer(root: str, role: int, barrier: Any, results: Any, rounds: int = ROUNDS) -> None:
    """`root`: a local directory or an object-store URI (tests/test_object_storage.py races on S3)."""
    location = TableLocation(root)
    attempts = []
    try:
        for round_ in range(rounds):
            frame = batch(role, round_)
            barrier.wait(timeout=120)
            attempts.append(merge_bars(location, frame).attempts)
        results.put((role, attempts, None))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put((role, attempts, repr(exc)))
        raise


def expected_keys(rounds: int = ROUNDS) -> pl.DataFrame:
    frames = [batch(role, r).select("symbol", "ts") for role in (0, 1) for r in range(rounds)]
    frames.append(curve("AAPL", 100.0).slice(0, 100).select("symbol", "ts"))
    return pl.concat(frames).unique().sort("symbol", "ts")


def test_two_processes_racing_on_one_series_never_duplicate_or_lose_a_bar(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    merge_bars(location, curve("AAPL", 100.0).slice(0, 100))
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding delta-rs / polars threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=writer, args=(str(tmp_path), role, barrier, results)) for role in (0, 1)]
    for p in processes:
        p.start()
    reports = {}
    for _ in processes:
        role, attempts, error = results.get(timeout=600)
        reports[role] = (attempts, error)
    for p in processes:
        p.join(timeout=60)
    assert all(error is None for _, error in reports.values()), reports
    assert [p.exitcode for p in processes] == [0, 0]
    assert all(len(attempts) == ROUNDS for attempts, _ in reports.values())

    lazy, _ = scan_bars(location, ["AAPL", "MSFT", "SPY"], bar_size="1 min", start=JULY,
                        end=JULY + timedelta(days=30))
    stored = lazy.collect()
    assert stored.select(pl.struct("con_id", "ts").is_duplicated().sum()).item() == 0  # no key stored twice
    assert stored.select("symbol", "ts").sort("symbol", "ts").equals(expected_keys())  # none lost, none extra
    # bars only one writer wrote carry that writer's values; a shared bar carries one of the two writers' values
    aapl = stored.filter(pl.col("symbol") == "AAPL").join(
        curve("AAPL", 100.0).select("ts", a="open"), on="ts").join(curve("AAPL", 200.0).select("ts", b="open"), on="ts")
    assert aapl.filter((pl.col("open") != pl.col("a")) & (pl.col("open") != pl.col("b"))).is_empty()
    only_first = [t for r in range(ROUNDS) if r % 4 for t in batch(0, r).filter(pl.col("symbol") == "AAPL")["ts"]]
    assert aapl.filter(pl.col("ts").is_in(only_first), pl.col("open") != pl.col("a")).is_empty()
    retries = sum(a - 1 for attempts, _ in reports.values() for a in attempts)
    print(f"{2 * ROUNDS} racing writes, {retries} commit(s) refused and planned again")


def test_two_processes_creating_the_table_at_once_both_land(tmp_path: Path) -> None:
    """The first write of all: both writers find no table and create it; the loser plans against the winner's."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=first_writer, args=(str(tmp_path), role, barrier, results)) for role in (0, 1)]
    for p in processes:
        p.start()
    errors = [results.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert errors == [None, None]
    lazy, _ = scan_bars(TableLocation(tmp_path), ["AAPL"], bar_size="1 min", start=JULY,
                        end=JULY + timedelta(days=1))
    stored = lazy.collect()
    assert stored.height == 150 and stored["ts"].is_unique().all()


def first_writer(root: str, role: int, barrier: Any, results: Any) -> None:
    try:
        frame = curve("AAPL", 100.0).slice(50 * role, 100)  # minutes 0..99 and 50..149
        barrier.wait(timeout=120)
        merge_bars(TableLocation(root), frame)
        results.put(None)
    except BaseException as exc:
        results.put(repr(exc))
        raise
