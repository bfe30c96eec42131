"""Crash safety and concurrency on real Delta tables: SIGKILL mid-write (a MERGE of revised bars, an append of new
ones), writers racing a compaction, readers pinned to one version while writers commit."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storage.bars_table import merge_bars, scan_bars, table_version
from storage.location import TableLocation
from storage.maintenance import compact
from tests.test_storage import make_bars

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, UTC
    import polars as pl
    from storage.bars_table import merge_bars
    from storage.location import TableLocation
    from tests.test_storage import make_bars
    start = datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
    offset = int(sys.argv[2])
    batch = pl.concat([make_bars(s, start + timedelta(minutes=offset), 200_000) for s in ("AAPL", "MSFT", "SPY")])
    print("ready", flush=True)
    merge_bars(TableLocation(sys.argv[1]), batch)
    print("merged", flush=True)
""")


def _all_rows(location: TableLocation) -> pl.DataFrame:
    lazy, _ = scan_bars(location, ["AAPL", "MSFT", "SPY"], bar_size="1 min", start=START,
                        end=START + timedelta(days=400))
    return lazy.collect()


def _seed(location: TableLocation) -> None:
    merge_bars(location, pl.concat([make_bars(s, START, 80_000) for s in ("AAPL", "MSFT", "SPY")]))


OFFSETS = {"merge": 50_000, "append": 80_000}
"""Where the writer's batch starts (minutes after the seed's first bar): at 50k its first 30k bars per symbol are
stored with other prices (one MERGE: 30k revised, 170k new), at 80k all are new (one append)."""


def _start_writer(path: Path, mode: str = "merge") -> subprocess.Popen[str]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(OFFSETS[mode])], cwd=ROOT,
                              stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    return writer


@pytest.fixture(scope="module")
def write_seconds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """How long the writer takes from "ready" to exit on this machine (the write plus interpreter teardown), per
    mode, so kills land at fractions of it rather than at guesses."""
    seconds = {}
    for mode in OFFSETS:
        path = tmp_path_factory.mktemp(f"timing-{mode}")
        _seed(TableLocation(path))
        writer = _start_writer(path, mode)
        started = time.perf_counter()
        writer.wait(timeout=120)
        seconds[mode] = time.perf_counter() - started
    return seconds


def _killed_mid_merge(tmp_path: Path, delay: float, mode: str = "merge") -> tuple[TableLocation, int]:
    """Seed a table, start the writer and SIGKILL it `delay` s into its MERGE; returns the table and its version
    before the MERGE. The merge time varies with the machine's load: when the writer finishes before the kill,
    it is run again on a fresh table with two thirds of the delay (three tries)."""
    for attempt in range(3):
        location = TableLocation(tmp_path / f"try{attempt}")
        _seed(location)
        before = table_version(location)
        writer = _start_writer(location.root, mode)
        time.sleep(delay * (2 / 3) ** attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        if writer.returncode == -signal.SIGKILL:
            return location, before
    pytest.fail(f"the MERGE finished before the kill three times (first delay {delay:.2f} s)")


@pytest.mark.parametrize(("mode", "fraction"), [("merge", 0.05), ("merge", 0.25), ("merge", 0.45), ("merge", 0.65),
                                                ("append", 0.1), ("append", 0.4), ("append", 0.7)])
def test_sigkill_during_a_write_leaves_a_readable_table_and_a_rerun_completes(
        mode: str, fraction: float, write_seconds: dict[str, float], tmp_path: Path) -> None:
    location, before = _killed_mid_merge(tmp_path, fraction * write_seconds[mode], mode)

    after = table_version(location)
    assert after in (before, before + 1)  # the previous version, or the complete next one: never a torn one
    total = OFFSETS[mode] + 200_000  # bars per symbol once the write is complete
    rows = _all_rows(location)
    assert rows.height in (3 * 80_000, 3 * total)  # merge, per symbol: 30k revised, 170k new; append: 200k new
    merge_bars(location, pl.concat([make_bars(s, START + timedelta(minutes=OFFSETS[mode]), 200_000)
                                    for s in ("AAPL", "MSFT", "SPY")]))
    rows = _all_rows(location)
    assert rows.height == 3 * total
    assert rows.select(pl.struct("con_id", "ts").is_unique().all()).item()


def test_two_writers_and_a_compaction_all_land(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    for k in range(8):  # small files for the compaction to work on
        merge_bars(location, make_bars("SPY", START + timedelta(minutes=100 * k), 100))
    errors: list[BaseException] = []

    def guarded(work) -> None:  # type: ignore[no-untyped-def]
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    def writer(symbol: str) -> None:
        for k in range(4):
            merge_bars(location, make_bars(symbol, START + timedelta(minutes=500 * k), 500))

    threads = [threading.Thread(target=guarded, args=(lambda s=s: writer(s),)) for s in ("AAPL", "MSFT")]
    threads.append(threading.Thread(target=guarded, args=(lambda: compact(location.bars),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _all_rows(location)
    counts = dict(rows.group_by("symbol").len().iter_rows())
    assert counts == {"SPY": 800, "AAPL": 2000, "MSFT": 2000}


def test_a_reader_sees_one_version_while_a_writer_commits(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    merge_bars(location, make_bars("AAPL", START, 1000))
    lazy, version = scan_bars(location, ["AAPL"], bar_size="1 min", start=START, end=START + timedelta(days=30))
    merge_bars(location, make_bars("AAPL", START + timedelta(minutes=1000), 1000))  # commits before the read runs
    assert lazy.collect().height == 1000  # the pinned version, not the newer one
    assert table_version(location) == version + 1


def test_two_ingestions_and_compactions_on_one_table_all_land(tmp_path: Path) -> None:
    """Two ingestion runs (separate connections, overlapping symbols) while a compaction loops on the table."""
    import asyncio

    from ibkr_flows.ingest.engine import ingest_async
    from ibkr_flows.ingest.pacing import PacingBudget
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import IBKRSettings
    from ibkr_flows.sim.embedded import EmbeddedSimulator

    now = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
    location = TableLocation(tmp_path)
    merge_bars(location, make_bars("SPY", datetime(2024, 6, 3, 13, 30, tzinfo=UTC), 10))  # a table to compact
    reports = {}
    ingesting = threading.Event()

    with EmbeddedSimulator(clock=lambda: now) as sim:
        def ingest(name: str, symbols: tuple[str, ...], client_id: int) -> None:
            request = IngestRequest(symbols=symbols, start=datetime(2024, 6, 17, tzinfo=UTC), end=now,
                                    quality_engine="polars")
            settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
            budget = PacingBudget(tmp_path / "pacing.json", time_scale=0.001)
            reports[name] = asyncio.run(ingest_async(request, location, settings, flow_run_id=name, budget=budget))

        def compact_while_ingesting() -> None:
            while ingesting.is_set():
                compact(location.bars)
                time.sleep(0.05)

        ingesting.set()
        runs = [threading.Thread(target=ingest, args=("first", ("AAPL", "MSFT"), 81)),
                threading.Thread(target=ingest, args=("second", ("MSFT", "QQQ"), 82))]
        compactor = threading.Thread(target=compact_while_ingesting)
        for t in [*runs, compactor]:
            t.start()
        for t in runs:
            t.join()
        ingesting.clear()
        compactor.join()

    assert all(not r.failed for r in reports.values()), {k: [s.error for s in r.failed] for k, r in reports.items()}
    lazy, _ = scan_bars(location, ["AAPL", "MSFT", "QQQ"], bar_size="1 min", start=datetime(2024, 6, 17, tzinfo=UTC),
                        end=now)
    rows = lazy.collect()
    sessions = 390 * 18 - 180  # 18 sessions 2024-06-17..07-12 (no 06-19, no 07-04); 07-03 is a half day
    assert dict(rows.group_by("symbol").len().iter_rows()) == {"AAPL": sessions, "MSFT": sessions, "QQQ": sessions}
    assert rows.select(pl.struct("symbol", "ts").is_unique().all()).item()
