"""The results append stays cheap as runs accumulate (issue 17) and keeps its guarantees: a run's rows are one
append stamped with its run id, a retried append never doubles a run, racing processes each land, checkpoints keep
the run ids, the log is still cleaned, and the table reads the same through polars and `storage.tables.scan`.
Real Delta tables on disk, real processes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from storage.grid_results_table import GRID_RESULTS_SCHEMA, append_grid_results, read_grid_results
from storage.location import TableLocation
from storage.results_table import (
    RESULTS_SCHEMA,
    append_backtest_results,
    open_run_tables,
    read_backtest_results,
    store_run,
)
from storage.tables import CHECKPOINT_INTERVAL, append_once, conform, scan, warm_up, write
from storage.trades_table import read_trades

SYMBOLS = 3
RUN_STATS = {"run_id", "created_at"}


def result_rows(run_id: str) -> list[dict[str, Any]]:
    """One row per symbol, every column filled with a value of its type."""
    filler: dict[type[pl.DataType], object] = {pl.String: "x", pl.Float64: 1.0, pl.Int64: 1, pl.Boolean: True,
                                               pl.Datetime: datetime(2024, 6, 12, tzinfo=UTC)}
    base = {name: filler[type(dtype)] for name, dtype in RESULTS_SCHEMA.items()}
    return [{**base, "run_id": run_id, "symbol": f"S{i}"} for i in range(SYMBOLS)]


def results_frame(run_id: str) -> pl.DataFrame:
    """The run's rows as the table stores them, for writing a table the way an older version of the code did."""
    return conform(pl.DataFrame(result_rows(run_id), schema_overrides=dict(RESULTS_SCHEMA), strict=False),
                   RESULTS_SCHEMA, what="test")


def stats_columns(path: str, version: int) -> set[str]:
    """The columns the data file added by commit `version` keeps statistics on."""
    log = Path(path) / "_delta_log" / f"{version:020d}.json"
    adds = [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]
    assert len(adds) == 1
    stats = json.loads(adds[0]["stats"])
    return set(stats["minValues"]) | set(stats["maxValues"]) | set(stats["nullCount"])


def runs_stored(path: str) -> dict[str, int]:
    """Rows per run id, read three ways that must agree: polars' Delta reader (eager and lazy) and `scan`."""
    counts = [frame.group_by("run_id").len().sort("run_id")
              for frame in (pl.read_delta(path), pl.scan_delta(path).collect(), scan(path).collect())]
    assert counts[0].equals(counts[1]) and counts[0].equals(counts[2])
    return dict(zip(counts[0]["run_id"].to_list(), counts[0]["len"].to_list(), strict=True))


def test_a_retried_results_append_adds_nothing(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    assert append_backtest_results(location, "r1", result_rows("r1")) == SYMBOLS
    assert append_backtest_results(location, "r1", result_rows("r1")) == 0
    assert append_backtest_results(location, "r2", result_rows("r2")) == SYMBOLS
    table = DeltaTable(location.backtest_results)
    assert table.version() == 1 and table.transaction_version("backtest_results:r1") == 1
    assert runs_stored(location.backtest_results) == {"r1": SYMBOLS, "r2": SYMBOLS}
    assert read_backtest_results(location).schema == RESULTS_SCHEMA


def test_the_results_table_keeps_statistics_on_the_run_and_time_only(tmp_path: Path) -> None:
    """Every open and commit parses the statistics of every stored file: two columns, not the first 32."""
    location = TableLocation(tmp_path)
    for run in ("r1", "r2"):
        append_backtest_results(location, run, result_rows(run))
    path = location.backtest_results
    assert stats_columns(path, 0) == stats_columns(path, 1) == RUN_STATS
    assert pl.scan_delta(path).filter(pl.col("run_id") == "r2").collect()["symbol"].sort().to_list() == [
        f"S{i}" for i in range(SYMBOLS)]


def test_a_results_table_created_before_gets_the_statistics_setting_on_its_next_append(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    path = location.backtest_results
    append_once(path, results_frame("old"), "backtest_results:old", what="an older store")
    assert "delta.dataSkippingStatsColumns" not in DeltaTable(path).metadata().configuration
    assert len(stats_columns(path, 0)) == 32  # Delta's default: the first 32 columns

    assert append_backtest_results(location, "new", result_rows("new")) == SYMBOLS
    table = DeltaTable(path)
    assert table.metadata().configuration["delta.dataSkippingStatsColumns"] == "run_id,created_at"
    assert stats_columns(path, table.version()) == RUN_STATS
    assert append_backtest_results(location, "old", result_rows("old")) == 0
    assert runs_stored(path) == {"new": SYMBOLS, "old": SYMBOLS}


def test_runs_stored_before_a_checkpoint_are_still_found(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    interval = int(CHECKPOINT_INTERVAL)
    runs = [f"r{k}" for k in range(interval + 2)]
    for run in runs:
        append_backtest_results(location, run, result_rows(run))
    log = Path(location.backtest_results) / "_delta_log"
    assert [p.name for p in log.glob("*.checkpoint.parquet")] == [f"{interval - 1:020d}.checkpoint.parquet"]
    assert all(append_backtest_results(location, run, result_rows(run)) == 0 for run in runs)
    assert runs_stored(location.backtest_results) == dict.fromkeys(runs, SYMBOLS)


def test_the_log_is_cleaned_after_checkpoint_commits_only(tmp_path: Path) -> None:
    """Expired commits (here: every commit, the retention being zero) are deleted once a checkpoint covers them,
    by the append that writes the checkpoint; the appends in between leave the log alone."""
    path = str(tmp_path / "runs")
    log = tmp_path / "runs" / "_delta_log"
    expire_at_once = {"delta.logRetentionDuration": "interval 0 seconds"}

    def store(run: str) -> None:
        rows = pl.DataFrame({"run_id": [run], "value": [1.0]})
        assert append_once(path, rows, f"runs:{run}", what="test", configuration=expire_at_once) == 1

    for k in range(6):
        store(f"r{k}")
    DeltaTable(path).create_checkpoint()  # at version 5: commits 0-4 expired and covered, not yet deleted
    store("r6")
    assert sorted(p.name for p in log.glob("*.json")) == [f"{v:020d}.json" for v in range(7)]
    for k in range(7, 10):
        store(f"r{k}")  # version 9 writes the next checkpoint
    assert sorted(p.name for p in log.glob("*.json")) == [f"{9:020d}.json"]
    table = DeltaTable(path)
    assert table.version() == 9 and table.transaction_version("runs:r0") == 1
    assert runs_stored(path) == {f"r{k}": 1 for k in range(10)}


def _append(root: str, run_id: str, start: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    start.wait()
    append_backtest_results(TableLocation(Path(root)), run_id, result_rows(run_id))


def test_processes_racing_on_a_table_created_before_each_store_their_run_once(tmp_path: Path) -> None:
    """Four processes at once, two runs each stored twice, on a table still without the statistics setting: its
    change (a metadata commit) races the appends, and every loser retries; each run lands exactly once."""
    location = TableLocation(tmp_path)
    write(location.backtest_results, results_frame("seed"), mode="error")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    workers = [context.Process(target=_append, args=(str(tmp_path), run, start)) for run in ("a", "a", "b", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert runs_stored(location.backtest_results) == {"a": SYMBOLS, "b": SYMBOLS, "seed": SYMBOLS}
    table = DeltaTable(location.backtest_results)
    assert table.metadata().configuration["delta.dataSkippingStatsColumns"] == "run_id,created_at"
    assert table.transaction_version("backtest_results:a") == table.transaction_version("backtest_results:b") == 1


def test_the_grid_results_table_keeps_statistics_on_the_run_and_time_only(tmp_path: Path) -> None:
    """One file per grid run too: its appends must not parse 32 columns' statistics of every stored grid."""
    location = TableLocation(tmp_path)
    filler: dict[type[pl.DataType], object] = {pl.String: "x", pl.Float64: 1.0, pl.Int64: 1, pl.Boolean: True,
                                               pl.Datetime: datetime(2024, 6, 12, tzinfo=UTC)}
    base = {name: filler[type(dtype)] for name, dtype in GRID_RESULTS_SCHEMA.items()}
    for run in ("g1", "g2"):
        rows = conform(pl.DataFrame([{**base, "run_id": run, "rank": rank} for rank in (1, 2)],
                                    schema_overrides=dict(GRID_RESULTS_SCHEMA), strict=False),
                       GRID_RESULTS_SCHEMA, what="test")
        assert append_grid_results(location, run, rows) == 2
        assert append_grid_results(location, run, rows) == 0  # a retried store adds nothing
    assert stats_columns(location.grid_results, 0) == stats_columns(location.grid_results, 1) == RUN_STATS
    assert read_grid_results(location, "g2")["rank"].to_list() == [1, 2]


def test_a_run_stored_into_tables_opened_before_it_ran_lands_once(tmp_path: Path) -> None:
    """`open_run_tables` opens both tables before the run (as `ibkr backtest run` does, while it reads and
    backtests); a commit landing in between is no conflict, and the stamped run id still keeps a retry out."""
    location = TableLocation(tmp_path)
    trades = pl.DataFrame({"entry_time": [datetime(2024, 6, 12, 14, 30, tzinfo=UTC)],
                           "exit_time": [datetime(2024, 6, 12, 15, 30, tzinfo=UTC)], "side": ["long"],
                           "size": [10.0], "entry_price": [190.0], "exit_price": [191.0], "pnl": [9.0],
                           "return_pct": [0.47], "commission": [1.0]})
    store_run(location, "r0", {"S0": trades}, result_rows("r0"))
    opened = open_run_tables(location)
    assert opened.trades.result() is not None and opened.results.result() is not None
    store_run(location, "other", {"S0": trades}, result_rows("other"))  # another process's run, meanwhile
    assert store_run(location, "r1", {"S0": trades}, result_rows("r1"), opened) == SYMBOLS
    assert store_run(location, "r1", {"S0": trades}, result_rows("r1"), open_run_tables(location)) == 0
    assert runs_stored(location.backtest_results) == {"r0": SYMBOLS, "other": SYMBOLS, "r1": SYMBOLS}
    assert read_trades(location, "r1").height == 1


EXIT_WHILE_OPENING = """
import sys
from storage.location import TableLocation
from storage.results_table import open_run_tables
from storage.tables import warm_up
location = TableLocation(sys.argv[1])
warm_up(location.bars)
open_run_tables(location)
sys.exit(2)
"""


def test_a_process_exiting_while_its_tables_open_exits_with_its_own_code(tmp_path: Path) -> None:
    """A command failing right after it began opening tables (bad arguments, say) exits with its code: the opening
    threads are waited for. As daemon threads, still inside delta-rs at the interpreter's exit, they crashed every
    such process with a segmentation fault."""
    location = TableLocation(tmp_path)
    append_backtest_results(location, "r0", result_rows("r0"))
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", EXIT_WHILE_OPENING, str(tmp_path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr


def test_no_table_on_an_object_store_is_warmed_up_beside_a_command() -> None:
    """A warm-up thread is waited for at exit, so on an object store (network time-outs) none is started."""
    before = {thread.name for thread in threading.enumerate()}
    warm_up("s3://no-such-bucket/bars")
    assert not any(thread.name.startswith("warm up") for thread in threading.enumerate()
                   if thread.name not in before)
