"""What every table module needs: opening, scanning and writing a table wherever it lives (the storage options of
its URI passed on every call), does a path hold a Delta table, which version, and exact-schema casting."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from storage.commits import with_commit_retries
from storage.errors import BarsSchemaError, NotADeltaTableError
from storage.location import is_remote, storage_options


def _delta_owned(entry: Path) -> bool:
    """Files a Delta writer puts down (data files land before the first commit of a table being created)."""
    return entry.name == "_delta_log" or "=" in entry.name or entry.suffix == ".parquet"


def delta_table(path: str, version: int | None = None) -> DeltaTable:
    """The table at `path` (a local path or an object-store URI), at `version` (default: the latest)."""
    return DeltaTable(path, version=version, storage_options=storage_options(path))


def scan(path: str, version: int | None = None) -> pl.LazyFrame:
    """A lazy scan of the table at `path`, at `version` (default: the latest)."""
    return scan_table(delta_table(path, version))


SMALL_TABLE_FILES = 64
"""Up to this many data files, a local table is scanned as its Parquet files; beyond it (or on an object store),
through `pl.scan_delta`. polars' Delta scan imports pyarrow in the reading process (60-70 ms, on every CLI run
that reads a table: most of the seed command's time) but skips files by the Delta log's statistics; the file scan
imports nothing and reads each file's footer instead, which costs more than the import only for many files or a
footer read over the network."""


DELTA_CASTS = pl.ScanCastOptions(
    integer_cast="upcast", float_cast=["upcast", "downcast"],
    datetime_cast=["nanosecond-downcast", "millisecond-upcast", "convert-timezone"],
    missing_struct_fields="insert", extra_struct_fields="ignore", categorical_to_string="allow")
"""The casts `pl.scan_delta` allows between a file's types and the table's (a column widened after the file was
written reads as the table's type)."""


def scan_table(table: DeltaTable) -> pl.LazyFrame:
    """A lazy scan of an opened table, at its version (no second log read). Both ways read the same rows with the
    table's schema: files written before a column was added give nulls for it, partition values come from the
    paths, and a table with deletion vectors always goes through `pl.scan_delta`."""
    options = storage_options(table.table_uri)
    files = table.file_uris()
    if options is not None or len(files) > SMALL_TABLE_FILES or "deletionVectors" in (
            table.protocol().reader_features or []):
        return pl.scan_delta(table, storage_options=options)
    schema = pl.Schema(table.schema())
    partitions = table.metadata().partition_columns
    if not files:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(files, schema=schema, hive_partitioning=bool(partitions),
                           hive_schema=pl.Schema({p: schema[p] for p in partitions}) if partitions else None,
                           missing_columns="insert", extra_columns="ignore",
                           cast_options=DELTA_CASTS)


CHECKPOINT_INTERVAL = "10"
"""Commits between two checkpoints of every table this project creates (Delta's default: 100). Opening a table
replays the JSON commits since the last checkpoint, one file read each (one GET on an object store): 54 commits
took 14 ms to open locally, the same table checkpointed 2.5 ms. A checkpoint every 10th commit bounds that, for the
results tables that gain a commit per run and the bars table every backtest opens."""


def write(path: str, data: pl.DataFrame, *, mode: str, configuration: dict[str, str] | None = None,
          **options: Any) -> None:
    """`write_deltalake` of a frame (no pyarrow involved: delta-rs takes polars' Arrow stream) to the table at
    `path`; mode "error" creates it, with `configuration` and the project's checkpoint interval. `options` as
    write_deltalake's."""
    if mode == "error":
        configuration = {"delta.checkpointInterval": CHECKPOINT_INTERVAL, **(configuration or {})}
    write_deltalake(path, data, mode=mode, storage_options=storage_options(path),  # type: ignore[arg-type]
                    configuration=configuration, **options)


def exists(path: str) -> bool:
    """True for a Delta table; False for nothing, an empty directory or one a concurrent writer is creating;
    an error for a local directory holding anything else, so a mistyped data directory never gets a table written
    among unrelated files (an object-store prefix is only checked for a Delta log)."""
    options = storage_options(path)
    if DeltaTable.is_deltatable(path, storage_options=options):
        return True
    if options is not None:
        return False
    local = Path(path)
    if local.exists() and (not local.is_dir() or not all(_delta_owned(e) for e in local.iterdir())):
        raise NotADeltaTableError(path, "it exists but has no _delta_log; point IBKR_DATA_DIR at a data directory "
                                        "created by this project, or at an empty one")
    return False


def open_table(path: str, version: int | None = None) -> DeltaTable:
    """The table (one log read when it is there); `NotADeltaTableError` saying why when it is not."""
    table = try_open(path, version)
    if table is None:
        raise NotADeltaTableError(path, "no table there yet (run an ingestion first)")
    return table


def try_open(path: str, version: int | None = None) -> DeltaTable | None:
    """The table, or None when there is none yet (`exists`' checks then run, raising for a directory holding
    something else)."""
    try:
        return delta_table(path, version)
    except TableNotFoundError:
        if exists(path):  # created since the first look
            return delta_table(path, version)
        return None


def current_version(path: str) -> int | None:
    table = try_open(path)
    return None if table is None else table.version()


def conform(frame: pl.DataFrame, schema: pl.Schema, *, what: str) -> pl.DataFrame:
    """Cast `frame` to exactly `schema` (column order included), refusing what a silent cast would corrupt:
    missing columns, values that do not convert, and naive or non-UTC timestamps."""
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise BarsSchemaError(f"{what}: missing column(s) {', '.join(missing)}")
    columns = []
    for name, dtype in schema.items():
        column = frame[name]
        if isinstance(dtype, pl.Datetime):
            if not isinstance(column.dtype, pl.Datetime) or column.dtype.time_zone is None:
                raise BarsSchemaError(f"{what}: column {name} must be a timezone-aware datetime, "
                                      f"got {column.dtype}")
            column = column.dt.convert_time_zone("UTC")
        try:
            columns.append(column.cast(dtype, strict=True))
        except pl.exceptions.InvalidOperationError as exc:
            raise BarsSchemaError(f"{what}: column {name} cannot be stored as {dtype}: {exc}") from exc
    return pl.DataFrame(columns)


def insert_new_rows(path: str, rows: pl.DataFrame, key: tuple[str, ...], *, what: str,
                    configuration: Mapping[str, str] | None = None) -> int:
    """Append the rows whose `key` is not in the table yet (creating it on first write): a retried task or a
    re-run batch never stores a row twice. Returns how many rows were new. A table written before a column was
    added to its schema gains the column (null in its older rows). `configuration`: table properties the table is
    created with (a table created without them gets them set, one commit, by the first insert that finds them
    missing)."""
    if rows.is_empty():
        return 0
    settings = dict(configuration or {})

    def write_new() -> int:
        table = try_open(path)
        if table is None:
            write(path, rows, mode="error", configuration=settings)
            return rows.height
        configure(table, settings)
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in key)
        metrics = table.merge(rows, predicate, source_alias="s", target_alias="t", merge_schema=True) \
            .when_not_matched_insert_all().execute()
        return int(metrics.get("num_target_rows_inserted", 0))

    inserted, _ = with_commit_retries(write_new, what=what)
    return inserted


def open_in_background(path: str) -> Future[DeltaTable | None]:
    """`try_open` on a thread of its own: delta-rs reads the log without holding the GIL, so a table the caller
    writes next is opened while it does something else (commits to another table, say). Not a daemon thread: one
    still inside delta-rs when the interpreter exits (a command failing before it waits) crashed the process with
    a segmentation fault; the interpreter waits for this one instead."""
    opening: Future[DeltaTable | None] = Future()

    def run() -> None:
        try:
            opening.set_result(try_open(path))
        except BaseException as exc:  # handed to whoever waits for the table
            opening.set_exception(exc)

    threading.Thread(target=run, name=f"open {path}").start()
    return opening


def warm_up(path: str) -> None:
    """Open the table and read one row of it on a thread, and forget the result: a process's first Delta open and
    first Parquet query cost ~10 and ~8 ms of delta-rs and polars setting themselves up (runtimes, readers), and
    ~1.5 ms each after that. Started before a command's remaining imports, that set-up runs beside them (it holds
    the GIL for little of it), not before the command's first read. Errors are left to that read to report. Not a
    daemon thread, as in `open_in_background`; so, local tables only: on an object store, a command exiting early
    (bad arguments) would wait for the open's network time-outs."""
    if is_remote(path):
        return

    def run() -> None:
        try:
            table = try_open(path)
            files = [] if table is None else table.file_uris()
            if files:  # one file, as Parquet: a Delta scan would import pyarrow
                pl.scan_parquet(files[0], storage_options=storage_options(path)).head(1).collect()
        except Exception:  # the command's own read of the table reports what is wrong
            pass

    threading.Thread(target=run, name=f"warm up {path}").start()


TRANSACTION_RETENTION = "interval 7 days"
"""How long a table remembers the app ids of `append_once` writes: retries come within minutes; a week is plenty,
and the ids expire from checkpoints instead of growing the log forever."""


def stats_only_on(*columns: str) -> dict[str, str]:
    """Table configuration keeping Delta's per-file statistics (min, max, null count) on `columns` only, instead
    of the first 32 columns. Opening a table parses the statistics of every live file, and a commit parses them
    again when it refreshes the table: for a table that gains a file per run, that made an append cost more the
    more runs were stored. Opening the 48-column results table with 10 / 100 / 1000 files: 4.1 / 6.0 / 22.9 ms
    with 32 columns' statistics, 3.7 / 4.0 / 6.5 ms with two. Keep the columns readers filter on."""
    return {"delta.dataSkippingStatsColumns": ",".join(columns)}


NO_LOG_CLEANUP = PostCommitHookProperties(cleanup_expired_logs=False)
"""delta-rs lists the whole `_delta_log` after every commit to delete the commits older than the log retention
(30 days), so each commit cost more the more commits the log held: a results append's commit with 10 / 100 / 1000
commits in the log, 5.9 / 6.8 / 17.5 ms, 5.4 / 5.7 / 9.9 ms without the listing (locally; a LIST on an object
store). Expired commits can go only once a checkpoint covers them: `append_once` cleans the log after the commits
that write a checkpoint (as Delta's reference implementation does), not after every one."""


def append_once(path: str, rows: pl.DataFrame, app_id: str, *, what: str,
                opened: Future[DeltaTable | None] | None = None,
                configuration: Mapping[str, str] | None = None) -> int:
    """Append `rows` as one commit stamped with Delta's application transaction `app_id` (a run id, say), unless a
    commit with that id already landed: a retried store never appends twice, and two writers racing with the same
    id cannot both land (delta-rs refuses the second commit as a concurrent transaction; the retry then finds the
    id). A plain append, so it costs what an append costs, not a MERGE: one log read and one commit, no data file
    read. A table written before a column was added to its schema gains the column. Returns how many rows were
    appended (0 when already stored). `opened`: the table being opened meanwhile (`open_in_background`), used by
    the first attempt; a retry opens it again. `configuration`: table properties the table is created with (a
    table created without them gets them set, one commit, by the first append that finds them missing)."""
    if rows.is_empty():
        return 0
    stamp = CommitProperties(app_transactions=[Transaction(app_id, 1)])
    settings = dict(configuration or {})
    first = [opened] if opened is not None else []

    def append() -> int:
        table = first.pop().result() if first else try_open(path)
        if table is None:
            write(path, rows, mode="error", commit_properties=stamp,
                  configuration={"delta.setTransactionRetentionDuration": TRANSACTION_RETENTION, **settings})
            return rows.height
        if table.transaction_version(app_id) is not None:
            return 0
        configure(table, settings)
        present = {field.name for field in table.schema().fields}
        merge = {"schema_mode": "merge"} if not present.issuperset(rows.columns) else {}
        write_deltalake(table, rows, mode="append", commit_properties=stamp,  # type: ignore[arg-type]
                        post_commithook_properties=NO_LOG_CLEANUP, **merge)
        clean_log_if_checkpointed(table)
        return rows.height

    appended, _ = with_commit_retries(append, what=what)
    return appended


def configure(table: DeltaTable, settings: Mapping[str, str]) -> None:
    """Set the properties of `settings` the table lacks (a table created before they were chosen)."""
    current = table.metadata().configuration
    missing = {key: value for key, value in settings.items() if current.get(key) != value}
    if missing:
        table.alter.set_table_properties(missing)


def clean_log_if_checkpointed(table: DeltaTable) -> None:
    """Delete the expired commits (`DeltaTable.cleanup_metadata`) when the table's last commit wrote a checkpoint
    (see `NO_LOG_CLEANUP`), unless the table turned log cleanup off."""
    config = table.metadata().configuration
    interval = int(config.get("delta.checkpointInterval", "100"))
    if (table.version() + 1) % interval == 0 and config.get("delta.enableExpiredLogCleanup", "true") != "false":
        table.cleanup_metadata()


CREATE_ONCE = CommitProperties(max_commit_retries=0)
"""Creating a table allows no commit retry: delta-rs would commit the loser of two creations as a second copy
(see storage.bars_table); the loser fails, and its retry writes into the winner's table instead."""


def replace_where(path: str, rows: pl.DataFrame, predicate: str, *, what: str) -> int:
    """Make the rows matching `predicate` exactly `rows`, in one commit (creating the table when there is none);
    returns the table version written. Readers see the old rows or the new ones, never a mix."""

    def replace() -> int:
        if try_open(path) is None:
            try:
                write(path, rows, mode="error", commit_properties=CREATE_ONCE)
                return 0
            except DeltaError as exc:  # created meanwhile: replace the rows in the winner's table instead
                if "already exists" not in str(exc):
                    raise
        write(path, rows, mode="overwrite", predicate=predicate)
        version = current_version(path)
        assert version is not None
        return version

    version, _ = with_commit_retries(replace, what=what)
    return version
