"""The bars table: idempotent MERGEs on the natural key, watermarks read from the table, pruned reads.

Layout: partitioned by `month` (YYYY-MM of the bar start). A MERGE names the months it touches as literals, so
delta-rs rewrites only those partitions instead of scanning the table (0.4 s vs 7.7 s per 100k rows into 10M
measured here); a symbol's date-range read skips the other months from the log alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from storage.commits import with_commit_retries
from storage.errors import BarsSchemaError, CorruptTableError
from storage.location import TableLocation, storage_options
from storage.schema import BAR_KEY, BARS_SCHEMA, PARTITION_COLUMN, PRICE_COLUMNS, UTC_US
from storage.tables import (
    configure,
    conform,
    current_version,
    delta_table,
    open_table,
    scan_table,
    stats_only_on,
    try_open,
    write,
)

log = logging.getLogger("ibkr.storage")

MONTH_FORMAT = "%Y-%m"


@dataclass(frozen=True)
class MergeResult:
    version: int | None
    """Table version after the write (None: nothing written and no table yet)."""
    rows_inserted: int
    rows_updated: int
    """Stored bars whose values changed (IB revised them); identical re-fetches leave rows and files alone."""
    attempts: int
    rows_deleted: int = 0
    """Stored bars of a replaced series that the new snapshot no longer has (`replace_series` only)."""
    operation: str = ""
    """How it was written: "create" (the table's first commit), "append" (only new bars), "merge" (revised bars,
    with the new ones), "replace" (`replace_series`), "none" (every bar already stored as is: no commit)."""


SERIES_KEY = ("con_id", "bar_size", "what_to_show", "use_rth")
"""One series: an instrument's bars of one size, type and session (the bar key without `ts`)."""

BARS_CONFIGURATION = stats_only_on("symbol", *BAR_KEY)
"""Per-file statistics on the symbol and the bar key only, not on all 20 columns: what files are selected by.
`watermarks` and `scan_bars` select files by symbol, series and `ts` from them; beyond
`storage.tables.SMALL_TABLE_FILES` files (and on an object store) polars' Delta scan selects by them too: by
con_id, series and `ts` for the write plan's read of the stored overlap, by symbol or con_id for the catalog's
reads. No reader selects files by a price or lineage column. Opening the table parses the statistics of every live
file (see `stats_only_on`): checkpointed tables of 6 / 63 / 307 files (bench/growth.py's layout) opened in
2.2 / 2.9 / 6.2 ms with every column's statistics, 1.9 / 2.3 / 3.9 ms with these six. A table created before gets
the setting at its next write; its older files keep their statistics until a write or a compaction rewrites them."""

OPERATION_KEY = "ibkr.operation"
FLOW_RUN_KEY = "ibkr.flow_run_id"
SYMBOLS_KEY = "ibkr.symbols"
"""Commit metadata every write to the bars table carries (`DeltaTable.history()` shows them as top-level keys)."""


def conform_bars(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame in the table's exact schema, with the partition column derived from `ts`."""
    with_month = frame.with_columns(pl.col("ts").dt.strftime(MONTH_FORMAT).alias(PARTITION_COLUMN)) \
        if "ts" in frame.columns else frame
    bars = conform(with_month, BARS_SCHEMA, what="bars")
    duplicated = bars.filter(pl.struct(BAR_KEY).is_duplicated())
    if duplicated.height:
        first = duplicated.row(0, named=True)
        raise BarsSchemaError(f"bars: {duplicated.height} rows share a key within one batch (e.g. con_id "
                              f"{first['con_id']} at {first['ts']}); de-duplicate before merging")
    return bars


def _joined(values: pl.Series) -> str:
    return ",".join(sorted(str(v) for v in values.drop_nulls().unique().to_list()))


def series_app_id(con_id: int, bar_size: str, what_to_show: str, use_rth: bool) -> str:
    """The Delta app-transaction id of one series: every commit writing bars of the series carries it, so two
    commits racing on one series conflict in delta-rs (`ConcurrentTransaction`) whatever files they touch."""
    return f"ibkr.bars/{con_id}/{bar_size}/{what_to_show}/{'rth' if use_rth else 'eth'}"


def _commit_properties(bars: pl.DataFrame, operation: str, table: DeltaTable | None) -> CommitProperties:
    """Commit metadata (flow runs and symbols of the batch) plus one app transaction per series in it, numbered
    with the version the commit is planned to be (one past the version of `table`, the read it is based on; 0
    when creating the table): increasing per series, and equal to the commit's version unless other series'
    commits landed in between.

    Creating the table allows no commit retry: delta-rs 1.6 commits the loser of two concurrent creations as
    the next version, data and all, without any conflict check (two processes doubled every bar that way in
    tests/test_bars_append_race.py); with no retry the loser gets `CommitFailedError` and plans again against
    the winner's table."""
    planned = table.version() + 1 if table is not None else 0
    transactions = [Transaction(series_app_id(*series), planned)
                    for series in bars.select(SERIES_KEY).unique().sort(SERIES_KEY).iter_rows()]
    metadata = {FLOW_RUN_KEY: _joined(bars["flow_run_id"]), OPERATION_KEY: operation,
                SYMBOLS_KEY: _joined(bars["symbol"])}
    return CommitProperties(custom_metadata=metadata, app_transactions=transactions,
                            max_commit_retries=0 if table is None else None)


def _merge_predicate(months: list[str]) -> str:
    keys = " AND ".join(f"t.{k} = s.{k}" for k in BAR_KEY)
    literal = ", ".join(f"'{m}'" for m in months)
    return f"{keys} AND t.{PARTITION_COLUMN} IN ({literal})"


def _changed() -> str:
    return " OR ".join(f"t.{c} != s.{c}" for c in PRICE_COLUMNS)


@dataclass(frozen=True)
class WritePlan:
    """A batch split against the stored bars of one table version."""

    version: int
    new: pl.DataFrame
    """Rows whose key is not stored: a plain append."""
    changed: pl.DataFrame
    """Stored keys with different values (IB revised the bar): these need a MERGE."""
    unchanged: int
    """Rows stored with the same values: nothing to write."""


def stored_in_range(table: DeltaTable, bars: pl.DataFrame) -> pl.DataFrame:
    """The stored bars (key and values) the batch could collide with, read at `table`'s version: only the months
    the batch touches (partition pruning from the log), only its series and its [first, last] bar start (file
    statistics skip files outside it). A key can only be stored in the month of its `ts`, so this is exact."""
    months = bars[PARTITION_COLUMN].unique().to_list()
    series = bars.select(SERIES_KEY).unique()
    lo, hi = bars["ts"].min(), bars["ts"].max()
    return (
        scan_table(table)
        .filter(
            pl.col(PARTITION_COLUMN).is_in(months),
            pl.col("ts").is_between(pl.lit(lo, dtype=UTC_US), pl.lit(hi, dtype=UTC_US)),
            *(pl.col(k).is_in(series[k].unique().to_list()) for k in SERIES_KEY),
        )
        .select(*BAR_KEY, *PRICE_COLUMNS)
        .collect()
    )


def stored_overlap(location: TableLocation, frame: pl.DataFrame) -> pl.DataFrame:
    """The stored bars of `frame`'s series in its [first, last] bar start (`stored_in_range` at the latest
    version); empty when the table does not exist yet."""
    table = try_open(location.bars)
    if table is None:
        return pl.DataFrame(schema={k: BARS_SCHEMA[k] for k in (*BAR_KEY, *PRICE_COLUMNS)})
    return stored_in_range(table, conform_bars(frame))


def plan_write(table: DeltaTable, bars: pl.DataFrame) -> WritePlan:
    """Split `bars` (conformed) into new rows, revised rows and rows already stored, against `table`'s version."""
    stored = stored_in_range(table, bars)
    if stored.is_empty():
        return WritePlan(table.version(), bars, bars.clear(), 0)
    matched = bars.join(stored, on=list(BAR_KEY), how="inner", suffix="__stored")
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__stored")) for c in PRICE_COLUMNS)
    changed = matched.filter(differs).select(bars.columns)
    new = bars.join(stored.select(BAR_KEY), on=list(BAR_KEY), how="anti")
    return WritePlan(table.version(), new, changed, matched.height - changed.height)


def write_plan(table: DeltaTable, bars: pl.DataFrame, plan: WritePlan) -> tuple[int, int, int, str]:
    """Commit `plan` (made from `table`'s version) as one commit based on that version: (version, inserted,
    updated, operation). Raises `CommitFailedError` when a commit since then wrote bars of one of its series."""
    if plan.changed.is_empty() and plan.new.is_empty():
        return plan.version, 0, 0, "none"
    if plan.changed.is_empty():
        write_deltalake(table, plan.new, mode="append", partition_by=[PARTITION_COLUMN],
                        commit_properties=_commit_properties(bars, "append-bars", table))
        return table.version(), plan.new.height, 0, "append"
    months = sorted(plan.changed[PARTITION_COLUMN].unique().to_list())
    metrics = (
        table.merge(pl.concat([plan.changed, plan.new]), _merge_predicate(months), source_alias="s",
                    target_alias="t", commit_properties=_commit_properties(bars, "merge-bars", table))
        .when_matched_update_all(predicate=_changed())
        .when_not_matched_insert_all()
        .execute()
    )
    return (table.version(), int(metrics.get("num_target_rows_inserted", 0)),
            int(metrics.get("num_target_rows_updated", 0)), "merge")


def merge_bars(location: TableLocation, frame: pl.DataFrame) -> MergeResult:
    """Insert new bars and replace revised ones; safe to repeat and to run from several processes at once.

    The batch is compared with the stored bars of its series in its time range at one table version v (a pruned
    read): bars not stored are appended, revised bars (and then the new ones with them) go through one MERGE
    limited to the months of the revisions, bars stored identically are not written. Always one commit (none
    when nothing changed), based on version v and carrying each series' app transaction: if another writer
    committed bars of the same series after v, delta-rs refuses the commit (`ConcurrentTransaction`) and the
    whole write is planned again from the newer version, so no key is ever stored twice. A table created before
    `BARS_CONFIGURATION` gets it first, in a commit of its own."""
    path = location.bars
    if frame.is_empty():
        return MergeResult(current_version(path), 0, 0, 0)
    bars = conform_bars(frame)

    def write_bars() -> tuple[int, int, int, str]:
        table = try_open(path)
        if table is None:
            try:
                write(path, bars, mode="error", partition_by=[PARTITION_COLUMN], configuration=BARS_CONFIGURATION,
                      commit_properties=_commit_properties(bars, "append-bars", None))
                return 0, bars.height, 0, "create"
            except CommitFailedError:  # another writer created it first: plan again, against its table
                raise
            except DeltaError as exc:  # the same, seen before writing
                if "already exists" not in str(exc):
                    raise
                log.info("bars table created concurrently (%s); merging instead", exc)
            table = delta_table(path)
        configure(table, BARS_CONFIGURATION)
        return write_plan(table, bars, plan_write(table, bars))

    (version, inserted, updated, operation), attempts = with_commit_retries(write_bars, what="bars write")
    return MergeResult(version=version, rows_inserted=inserted, rows_updated=updated, attempts=attempts,
                       operation=operation)


def replace_series(location: TableLocation, frame: pl.DataFrame) -> MergeResult:
    """Make the stored bars of the one series in `frame` exactly `frame`, in one commit: for series IB re-adjusts
    as a whole (ADJUSTED_LAST), where each fetch is a new snapshot and stored bars from an older one must not mix
    with it. One MERGE inserts, updates changed bars and deletes the series' bars the snapshot lacks; readers
    see the old series or the new one, never a mix. Bars of other series are untouched."""
    bars = conform_bars(frame)
    series = bars.select(SERIES_KEY).unique()
    if series.height != 1:
        raise BarsSchemaError(f"bars: replace_series takes one series, got {series.height}")
    path = location.bars
    if try_open(path) is None:
        return merge_bars(location, frame)  # nothing stored yet: creating the table is the one commit
    in_series = " AND ".join(f"t.{k} = {_sql_literal(v)}" for k, v in series.row(0, named=True).items())

    def write_series() -> tuple[dict[str, Any], int]:
        keys = " AND ".join(f"t.{k} = s.{k}" for k in BAR_KEY)
        table = delta_table(path)
        configure(table, BARS_CONFIGURATION)
        metrics = (table.merge(bars, keys, source_alias="s", target_alias="t",
                               commit_properties=_commit_properties(bars, "replace-series", table))
                   .when_matched_update_all(predicate=_changed())
                   .when_not_matched_insert_all()
                   .when_not_matched_by_source_delete(predicate=in_series)
                   .execute())
        return metrics, table.version()

    (metrics, version), attempts = with_commit_retries(write_series, what="bars series replace")
    return MergeResult(
        version=version,
        rows_inserted=int(metrics.get("num_target_rows_inserted", 0)),
        rows_updated=int(metrics.get("num_target_rows_updated", 0)),
        attempts=attempts,
        rows_deleted=int(metrics.get("num_target_rows_deleted", 0)),
        operation="replace",
    )


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def watermarks(location: TableLocation, *, bar_size: str, what_to_show: str, use_rth: bool,
               symbols: list[str]) -> dict[str, datetime]:
    """The last stored bar start per symbol for one series: where the next run resumes.

    Read newest files first, so a nightly costs what its last sessions cost, not the whole history (issue 17,
    bench/growth.py: the full scan took 0.5-0.9 s at 50M rows, 7-9x its 5M figure; this takes 40-50 ms at both).
    The log's statistics (max `ts`, and the series and symbol bounds of each file) select the files holding bars
    of the open symbols in a window ending at the table's newest bar; once those are read, a symbol whose last
    bar found is inside the window is settled, because every unread file ends before the window does. The window
    doubles until every symbol is settled or the whole table is read (a symbol never stored costs the files whose
    statistics could hold it)."""
    table = try_open(location.bars)
    if table is None or not symbols:
        return {}
    series = [pl.col("bar_size") == bar_size, pl.col("what_to_show") == what_to_show, pl.col("use_rth") == use_rth]
    if table.protocol().min_reader_version > 1:  # not plain parquet files: one full read through polars
        return _last_bars(scan_table(table), series, symbols)
    newest, oldest = _bar_start_bounds(table)
    found: dict[str, datetime] = {}
    settled: set[str] = set()
    read: set[str] = set()
    window = WATERMARK_FIRST_WINDOW
    while True:
        open_symbols = [s for s in dict.fromkeys(symbols) if s not in settled]
        floor = newest - window if newest is not None and oldest is not None and newest - window > oldest else None
        pruning: list[tuple[str, str, Any]] = [("bar_size", "=", bar_size), ("what_to_show", "=", what_to_show),
                                               ("use_rth", "=", use_rth), ("symbol", "in", open_symbols)]
        files = [f for f in table.file_uris(file_pruning_predicate=pruning + ([("ts", ">=", floor)] if floor else []))
                 if f not in read]
        read.update(files)
        if files:
            lazy = pl.scan_parquet(files, storage_options=storage_options(table.table_uri))
            try:
                step = _last_bars(lazy, series, open_symbols)
            except (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
                raise CorruptTableError(location.bars, str(exc).splitlines()[0] if str(exc) else
                                        type(exc).__name__) from exc
            for symbol, last in step.items():
                found[symbol] = max(last, found.get(symbol, last))
        if floor is None:
            return found
        settled |= {symbol for symbol, last in found.items() if last >= floor}
        if settled.issuperset(symbols):
            return found
        window *= 2


WATERMARK_FIRST_WINDOW = timedelta(days=1)
"""How far back from the table's newest bar `watermarks` reads first: a nightly's series all ended yesterday."""


def _bar_start_bounds(table: DeltaTable) -> tuple[datetime | None, datetime | None]:
    """The newest and oldest bar start in `table`'s data files, from the log's file statistics alone (None when
    no file has them: `watermarks` then reads every candidate file at once)."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty() or "max.ts" not in actions.columns or "min.ts" not in actions.columns:
        return None, None
    newest, oldest = actions.select(pl.col("max.ts").max(), pl.col("min.ts").min()).row(0)
    return newest, oldest


def _last_bars(lazy: pl.LazyFrame, series: list[pl.Expr], symbols: list[str]) -> dict[str, datetime]:
    last = (lazy.filter(pl.col("symbol").is_in(symbols), *series)
            .group_by("symbol").agg(pl.col("ts").max()).collect())
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


def scan_bars(location: TableLocation, symbols: list[str], *, bar_size: str, start: datetime, end: datetime,
              what_to_show: str = "TRADES", use_rth: bool = True, version: int | None = None
              ) -> tuple[pl.LazyFrame, int]:
    """Bars starting in [start, end) for `symbols`, at `version` (default: the latest), and the version read.

    One log read; the months and the file statistics (symbol, series, ts) select the data files from the log
    before any is opened, and only those are scanned (`pruned_files`)."""
    table = open_table(location.bars, version)
    lo, hi = (moment.astimezone(UTC) if moment.tzinfo else moment for moment in (start, end))
    files = pruned_files(table, [
        (PARTITION_COLUMN, ">=", f"{lo:{MONTH_FORMAT}}"), (PARTITION_COLUMN, "<=", f"{hi:{MONTH_FORMAT}}"),
        ("ts", ">=", lo), ("ts", "<", hi), ("symbol", "in", list(symbols)), ("bar_size", "=", bar_size),
        ("what_to_show", "=", what_to_show)])
    lazy = (
        files
        .filter(
            pl.col("symbol").is_in(symbols),
            pl.col("bar_size") == bar_size,
            pl.col("what_to_show") == what_to_show,
            pl.col("use_rth") == use_rth,
            pl.col("ts") >= start,
            pl.col("ts") < end,
        )
        .sort("symbol", "ts")
    )
    return lazy, table.version()


def pruned_files(table: DeltaTable, pruning: list[tuple[str, str, Any]]) -> pl.LazyFrame:
    """The bars in the data files of `table`'s version that `pruning` (delta-rs tuple filters over the partition
    column and the file statistics) does not rule out, in the table's schema (the month derived from `ts`, as
    every write does): a superset of the rows matching it, to be filtered. Reading the selected parquet files
    directly costs a third of `pl.scan_delta`'s cold read of the same rows (it plans over the whole log again).
    Tables whose readers need more than plain parquet (deletion vectors, column mapping: reader version 2 and
    up; this project never writes them) are read through `pl.scan_delta`."""
    if table.protocol().min_reader_version > 1:
        return scan_table(table)
    files = table.file_uris(file_pruning_predicate=pruning)
    if not files:
        return pl.DataFrame(schema=BARS_SCHEMA).lazy()
    return (pl.scan_parquet(files, storage_options=storage_options(table.table_uri))
            .with_columns(pl.col("ts").dt.strftime(MONTH_FORMAT).alias(PARTITION_COLUMN))
            .select(BARS_SCHEMA.names()))


def read_bars(location: TableLocation, symbols: list[str], *, columns: list[str], bar_size: str, start: datetime,
              end: datetime, what_to_show: str = "TRADES", use_rth: bool = True, version: int | None = None
              ) -> tuple[pl.DataFrame, int]:
    """`scan_bars`, collected: a data file the log references but that is gone or unreadable becomes a
    `CorruptTableError` naming the table, not an arrow/parquet traceback."""
    lazy, read_version = scan_bars(location, symbols, bar_size=bar_size, start=start, end=end,
                                   what_to_show=what_to_show, use_rth=use_rth, version=version)
    try:
        return lazy.select(columns).collect(), read_version
    except (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:  # a torn parquet panics
        raise CorruptTableError(location.bars, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def table_version(location: TableLocation) -> int | None:
    return current_version(location.bars)


def bars_history(location: TableLocation, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commit log, newest first: what each version did (for time travel and audits)."""
    return open_table(location.bars).history(limit)
