"""`append_once`: a run's rows are one plain append stamped with the run id, stored once however often the store
is retried and however many processes race to store it (real processes, a real Delta table)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from storage.tables import CHECKPOINT_INTERVAL, append_once


def rows(run_id: str, n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"run_id": [run_id] * n, "symbol": [f"S{i}" for i in range(n)], "value": [1.5] * n})


def test_a_retried_store_appends_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "results")
    assert append_once(path, rows("r1"), "results:r1", what="test") == 3
    assert append_once(path, rows("r1"), "results:r1", what="test") == 0
    assert append_once(path, rows("r2"), "results:r2", what="test") == 3
    table = DeltaTable(path)
    assert table.to_pyarrow_table().num_rows == 6 and table.version() == 1
    assert table.transaction_version("results:r1") == 1


def test_an_older_table_gains_a_new_column(tmp_path: Path) -> None:
    path = str(tmp_path / "results")
    rows("r1").drop("value").write_delta(path)
    assert append_once(path, rows("r2"), "results:r2", what="test") == 3
    stored = pl.read_delta(path).sort("run_id")
    assert stored["value"].to_list() == [None] * 3 + [1.5] * 3


def _store(path: str, run_id: str, start: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    start.wait()
    append_once(path, rows(run_id), f"results:{run_id}", what="race")


def test_processes_racing_to_store_the_same_runs_store_each_once(tmp_path: Path) -> None:
    path = str(tmp_path / "results")
    append_once(path, rows("seed"), "results:seed", what="test")
    context = multiprocessing.get_context("spawn")
    for attempt in range(4):
        start = context.Barrier(4)
        workers = [context.Process(target=_store, args=(path, f"run{attempt}", start)) for _ in range(3)]
        workers.append(context.Process(target=_store, args=(path, f"other{attempt}", start)))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
    counts = pl.read_delta(path).group_by("run_id").len()
    assert counts.height == 9 and counts["len"].to_list() == [3] * 9


def test_a_run_stored_before_a_checkpoint_is_still_found(tmp_path: Path) -> None:
    """Tables are checkpointed every CHECKPOINT_INTERVAL commits (opening one replays only the commits since):
    the run ids stamped on earlier commits live on in the checkpoint."""
    path = str(tmp_path / "results")
    interval = int(CHECKPOINT_INTERVAL)
    for k in range(2 * interval + 3):
        append_once(path, rows(f"r{k}", 1), f"results:r{k}", what="test")
    assert sorted(p.name for p in (tmp_path / "results" / "_delta_log").glob("*.checkpoint.parquet")) == [
        f"{v:020d}.checkpoint.parquet" for v in (interval - 1, 2 * interval - 1)]
    assert append_once(path, rows("r0"), "results:r0", what="test") == 0
    assert DeltaTable(path).version() == 2 * interval + 2
