"""The bars table: idempotent MERGEs on the natural key, watermarks read from the table, pruned reads.

Layout: partitioned by `month` (YYYY-MM of the bar start). A MERGE names the months it touches as literals, so
delta-rs rewrites only those partitions instead of scanning the table (0.4 s vs 7.7 s per 100k rows into 10M
measured here); a symbol's date-range read skips the other months from the log alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from storage.commits import with_commit_retries
from storage.errors import BarsSchemaError, CorruptTableError
from storage.location import TableLocation
from storage.schema import BAR_KEY, BARS_SCHEMA, PARTITION_COLUMN, PRICE_COLUMNS
from storage.tables import conform, current_version, exists, open_table

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


def _merge_predicate(months: list[str]) -> str:
    keys = " AND ".join(f"t.{k} = s.{k}" for k in BAR_KEY)
    literal = ", ".join(f"'{m}'" for m in months)
    return f"{keys} AND t.{PARTITION_COLUMN} IN ({literal})"


def _changed() -> str:
    return " OR ".join(f"t.{c} != s.{c}" for c in PRICE_COLUMNS)


def merge_bars(location: TableLocation, frame: pl.DataFrame) -> MergeResult:
    """Insert new bars and replace revised ones; safe to repeat and to run from several processes at once."""
    path = location.bars
    if frame.is_empty():
        return MergeResult(current_version(path), 0, 0, 0)
    bars = conform_bars(frame)
    months = sorted(bars[PARTITION_COLUMN].unique().to_list())

    def write() -> dict[str, Any]:
        if not exists(path):
            try:
                bars.write_delta(path, mode="error", delta_write_options={"partition_by": [PARTITION_COLUMN]})
                return {"num_target_rows_inserted": bars.height, "num_target_rows_updated": 0}
            except DeltaError as exc:  # another writer created it first: fall through to the MERGE
                if "already exists" not in str(exc):
                    raise
                log.info("bars table created concurrently (%s); merging instead", exc)
        merger = DeltaTable(path).merge(
            bars.to_arrow(), _merge_predicate(months), source_alias="s", target_alias="t",
        )
        return merger.when_matched_update_all(predicate=_changed()).when_not_matched_insert_all().execute()

    metrics, attempts = with_commit_retries(write, what="bars MERGE")
    return MergeResult(
        version=DeltaTable(path).version(),
        rows_inserted=int(metrics.get("num_target_rows_inserted", 0)),
        rows_updated=int(metrics.get("num_target_rows_updated", 0)),
        attempts=attempts,
    )


SERIES_KEY = ("con_id", "bar_size", "what_to_show", "use_rth")
"""One series: an instrument's bars of one size, type and session (the bar key without `ts`)."""


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
    if not exists(path):
        return merge_bars(location, frame)  # nothing stored yet: creating the table is the one commit
    in_series = " AND ".join(f"t.{k} = {_sql_literal(v)}" for k, v in series.row(0, named=True).items())

    def write() -> dict[str, Any]:
        keys = " AND ".join(f"t.{k} = s.{k}" for k in BAR_KEY)
        return (DeltaTable(path).merge(bars.to_arrow(), keys, source_alias="s", target_alias="t")
                .when_matched_update_all(predicate=_changed())
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(predicate=in_series)
                .execute())

    metrics, attempts = with_commit_retries(write, what="bars series replace")
    return MergeResult(
        version=DeltaTable(path).version(),
        rows_inserted=int(metrics.get("num_target_rows_inserted", 0)),
        rows_updated=int(metrics.get("num_target_rows_updated", 0)),
        attempts=attempts,
        rows_deleted=int(metrics.get("num_target_rows_deleted", 0)),
    )


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def watermarks(location: TableLocation, *, bar_size: str, what_to_show: str, use_rth: bool,
               symbols: list[str]) -> dict[str, datetime]:
    """The last stored bar start per symbol for one series: where the next run resumes."""
    if not exists(location.bars):
        return {}
    last = (
        pl.scan_delta(location.bars)
        .filter(pl.col("symbol").is_in(symbols), pl.col("bar_size") == bar_size,
                pl.col("what_to_show") == what_to_show, pl.col("use_rth") == use_rth)
        .group_by("symbol")
        .agg(pl.col("ts").max())
        .collect()
    )
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


def scan_bars(location: TableLocation, symbols: list[str], *, bar_size: str, start: datetime, end: datetime,
              what_to_show: str = "TRADES", use_rth: bool = True, version: int | None = None
              ) -> tuple[pl.LazyFrame, int]:
    """Bars starting in [start, end) for `symbols`, at `version` (default: the latest), and the version read.

    The month filter lets the Delta log prune partitions before any file is opened."""
    table = open_table(location.bars, version)
    read_version = table.version()
    lazy = (
        pl.scan_delta(location.bars, version=read_version)
        .filter(
            pl.col(PARTITION_COLUMN).is_between(pl.lit(f"{start:{MONTH_FORMAT}}"), pl.lit(f"{end:{MONTH_FORMAT}}")),
            pl.col("symbol").is_in(symbols),
            pl.col("bar_size") == bar_size,
            pl.col("what_to_show") == what_to_show,
            pl.col("use_rth") == use_rth,
            pl.col("ts") >= start,
            pl.col("ts") < end,
        )
        .sort("symbol", "ts")
    )
    return lazy, read_version


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
