"""What every table module needs: does a path hold a Delta table, which version, and exact-schema casting."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from storage.commits import with_commit_retries
from storage.errors import BarsSchemaError, NotADeltaTableError


def _delta_owned(entry: Path) -> bool:
    """Files a Delta writer puts down (data files land before the first commit of a table being created)."""
    return entry.name == "_delta_log" or "=" in entry.name or entry.suffix == ".parquet"


def exists(path: str) -> bool:
    """True for a Delta table; False for nothing, an empty directory or one a concurrent writer is creating;
    an error for anything else, so a mistyped data directory never gets a table written among unrelated files."""
    if DeltaTable.is_deltatable(path):
        return True
    local = Path(path)
    if local.exists() and (not local.is_dir() or not all(_delta_owned(e) for e in local.iterdir())):
        raise NotADeltaTableError(path, "it exists but has no _delta_log; point IBKR_DATA_DIR at a data directory "
                                        "created by this project, or at an empty one")
    return False


def open_table(path: str, version: int | None = None) -> DeltaTable:
    if not exists(path):
        raise NotADeltaTableError(path, "no table there yet (run an ingestion first)")
    return DeltaTable(path, version=version)


def current_version(path: str) -> int | None:
    return DeltaTable(path).version() if exists(path) else None


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


def insert_new_rows(path: str, rows: pl.DataFrame, key: tuple[str, ...], *, what: str) -> int:
    """Append the rows whose `key` is not in the table yet (creating it on first write): a retried task or a
    re-run batch never stores a row twice. Returns how many rows were new. A table written before a column was
    added to its schema gains the column (null in its older rows)."""
    if rows.is_empty():
        return 0

    def write() -> int:
        if not exists(path):
            rows.write_delta(path, mode="error")
            return rows.height
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in key)
        metrics = DeltaTable(path).merge(rows.to_arrow(), predicate, source_alias="s", target_alias="t",
                                         merge_schema=True) \
            .when_not_matched_insert_all().execute()
        return int(metrics.get("num_target_rows_inserted", 0))

    inserted, _ = with_commit_retries(write, what=what)
    return inserted


TRANSACTION_RETENTION = "interval 7 days"
"""How long a table remembers the app ids of `append_once` writes: retries come within minutes; a week is plenty,
and the ids expire from checkpoints instead of growing the log forever."""


def append_once(path: str, rows: pl.DataFrame, app_id: str, *, what: str) -> int:
    """Append `rows` as one commit stamped with Delta's application transaction `app_id` (a run id, say), unless a
    commit with that id already landed: a retried store never appends twice, and two writers racing with the same
    id cannot both land (delta-rs refuses the second commit as a concurrent transaction; the retry then finds the
    id). A plain append, so it costs what an append costs, not a MERGE. A table written before a column was added
    to its schema gains the column. Returns how many rows were appended (0 when already stored)."""
    if rows.is_empty():
        return 0
    stamp = CommitProperties(app_transactions=[Transaction(app_id, 1)])

    def write() -> int:
        if not exists(path):
            write_deltalake(path, rows.to_arrow(), mode="error", commit_properties=stamp,
                            configuration={"delta.setTransactionRetentionDuration": TRANSACTION_RETENTION})
            return rows.height
        table = DeltaTable(path)
        if table.transaction_version(app_id) is not None:
            return 0
        write_deltalake(table, rows.to_arrow(), mode="append", schema_mode="merge", commit_properties=stamp)
        return rows.height

    appended, _ = with_commit_retries(write, what=what)
    return appended
