"""The bars table read for a catalog: which series are stored, one series at a version, the commit log.

Everything here is read-only and lazy over `pl.scan_delta`: a listing aggregates by series (only the key, `ts` and
`ingested_at` columns are read, no row of the table is collected), and a series read names its months so the Delta
log prunes the other partitions before a file is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from storage.bars_table import MONTH_FORMAT, SERIES_KEY
from storage.errors import CorruptTableError, StorageError
from storage.location import TableLocation
from storage.quarantine_table import pending_by_series
from storage.schema import BAR_KEY, BARS_SCHEMA, PARTITION_COLUMN, PRICE_COLUMNS
from storage.tables import open_table, scan_table, try_open

LISTING_KEY = ("symbol", *SERIES_KEY)
"""A listed series: the bar key without `ts`, with the symbol a reader knows it by."""
EXPORT_COLUMNS = [c for c in BARS_SCHEMA if c != PARTITION_COLUMN]
"""What an export holds: every stored column but the partition column (derived from `ts`)."""
HISTORY_METADATA = {"ibkr.flow_run_id": "flow_run_id", "ibkr.operation": "flow_operation", "ibkr.symbols": "symbols"}
"""The custom commit metadata the project's writers attach to bars commits (absent from older commits), and the
column each is listed as (`operation` is Delta's own: MERGE, WRITE, OPTIMIZE...)."""
ROW_METRICS = {"rows_inserted": ("num_target_rows_inserted", "num_added_rows"),
               "rows_updated": ("num_target_rows_updated", "num_updated_rows"),
               "rows_deleted": ("num_target_rows_deleted", "num_deleted_rows"),
               "files_added": ("num_target_files_added", "num_added_files", "numFilesAdded"),
               "files_removed": ("num_target_files_removed", "num_removed_files", "numFilesRemoved")}
"""operationMetrics names per column: MERGE names first, then WRITE/DELETE, then OPTIMIZE (delta-rs' spellings)."""


class UnknownVersionError(StorageError, ValueError):
    """A version the table does not have (never written, or its log cleaned up): a bad argument, not damage."""


class NoSeriesError(StorageError):
    """No stored bar matches a series selection (at the version read)."""


@dataclass(frozen=True)
class SeriesSelection:
    """One stored series and an optional [start, end) window of bar starts."""

    symbol: str
    bar_size: str
    what_to_show: str = "TRADES"
    use_rth: bool = True
    start: datetime | None = None
    end: datetime | None = None

    def describe(self) -> str:
        hours = "RTH" if self.use_rth else "ETH"
        window = "" if self.start is None and self.end is None else (
            f" in [{_text(self.start)}, {_text(self.end)})")
        return f"{self.symbol} {self.bar_size} {self.what_to_show} {hours}{window}"


def _text(moment: datetime | None) -> str:
    return "…" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class SeriesListing:
    series: pl.DataFrame
    """One row per series: LISTING_KEY, first_bar, last_bar, rows, last_ingest, quarantined, bar_days (the
    distinct `session_day` values, when asked for), table_version."""
    version: int | None
    """The bars table version listed (None: no table yet)."""


def list_series(location: TableLocation, *, session_day: pl.Expr | None = None) -> SeriesListing:
    """Every stored series with its range, row count, last ingest and pending quarantined rows, in one lazy
    aggregation. `session_day` (a cheap expression over `bar_size` and `ts`: it is evaluated on every row) adds
    each series' distinct session days, from which a caller with the exchange calendar derives the sessions
    missing."""
    table = try_open(location.bars)
    version = None if table is None else table.version()
    bars = pl.DataFrame(schema=BARS_SCHEMA).lazy() if table is None else scan_table(table)
    aggregates = [pl.col("ts").min().alias("first_bar"), pl.col("ts").max().alias("last_bar"),
                  pl.len().cast(pl.Int64).alias("rows"), pl.col("ingested_at").max().alias("last_ingest")]
    if session_day is None:
        lazy = bars.group_by(LISTING_KEY).agg(aggregates)
    else:  # per series and day first, then per series: 0.9 s on 10M rows, where a unique() in one pass took 5 s
        lazy = (bars.with_columns(session_day.alias("bar_days")).group_by(*LISTING_KEY, "bar_days").agg(aggregates)
                .group_by(LISTING_KEY).agg(pl.col("first_bar").min(), pl.col("last_bar").max(), pl.col("rows").sum(),
                                           pl.col("last_ingest").max(), pl.col("bar_days").sort()))
    series = _collect(lazy, location)
    quarantined = pending_by_series(location, LISTING_KEY)
    listed = (series.join(quarantined, on=LISTING_KEY, how="full", coalesce=True, nulls_equal=True)
              .with_columns(pl.col("rows").fill_null(0), pl.col("quarantined").fill_null(0),
                            table_version=pl.lit(version))
              .sort("symbol", "bar_size", "what_to_show", "use_rth", descending=[False, False, False, True]))
    return SeriesListing(listed, version)


def stored_bar_sizes(location: TableLocation, symbols: list[str], what_to_show: str, use_rth: bool) -> list[str]:
    """The bar sizes with stored rows for any of `symbols` with this data type and session, sorted: one filtered
    read of two columns, not the whole catalog (`list_series` also counts, ranges and joins the quarantine)."""
    table = try_open(location.bars)
    if table is None:
        return []
    lazy = (scan_table(table)
            .filter(pl.col("symbol").is_in(symbols), pl.col("what_to_show") == what_to_show,
                    pl.col("use_rth") == use_rth)
            .select("bar_size").unique())
    return sorted(_collect(lazy, location)["bar_size"].to_list())


def scan_series(location: TableLocation, selection: SeriesSelection, version: int | None = None
                ) -> tuple[pl.LazyFrame, int]:
    """The series' bars, oldest first, at `version` (default: the latest), and the version read."""
    table = checked_table(location, version)
    filters = [pl.col("symbol") == selection.symbol, pl.col("bar_size") == selection.bar_size,
               pl.col("what_to_show") == selection.what_to_show, pl.col("use_rth") == selection.use_rth]
    if selection.start is not None:
        filters += [pl.col(PARTITION_COLUMN) >= f"{selection.start:{MONTH_FORMAT}}", pl.col("ts") >= selection.start]
    if selection.end is not None:
        filters += [pl.col(PARTITION_COLUMN) <= f"{selection.end:{MONTH_FORMAT}}", pl.col("ts") < selection.end]
    lazy = scan_table(table).filter(*filters).select(EXPORT_COLUMNS).sort("ts")
    return lazy, table.version()


def checked_table(location: TableLocation, version: int | None) -> DeltaTable:
    """The bars table at `version` if it has it (default: the latest); `UnknownVersionError` naming the versions it
    has otherwise, rather than delta-rs' log-segment message."""
    table = open_table(location.bars)
    latest = table.version()
    if version is None or version == latest:
        return table
    if not 0 <= version < latest:
        raise UnknownVersionError(f"the bars table has no version {version}: its versions are 0..{latest} "
                                  f"(`ibkr data history` lists them)")
    try:
        table.load_as_version(version)
    except DeltaError as exc:
        raise UnknownVersionError(f"version {version} of the bars table can no longer be read (its log was "
                                  f"cleaned up): {exc}") from exc
    return table


def series_summary(lazy: pl.LazyFrame, location: TableLocation) -> dict[str, Any]:
    """Rows, range, min/max close and total volume of a series read (volume counts only where IB has one: -1,
    IB's "none" for quotes, is left out). `NoSeriesError` when the read is empty."""
    volume = pl.col("volume").filter(pl.col("volume") >= 0)
    summary = _collect(lazy.select(
        pl.len().alias("rows"), pl.col("ts").min().alias("first_bar"), pl.col("ts").max().alias("last_bar"),
        pl.col("close").min().alias("min_close"), pl.col("close").max().alias("max_close"),
        pl.when(volume.count() > 0).then(volume.sum()).alias("total_volume")), location).row(0, named=True)
    if not summary["rows"]:
        raise NoSeriesError("no stored bars match")
    return summary


def collect_series(lazy: pl.LazyFrame, location: TableLocation, columns: list[str] | None = None) -> pl.DataFrame:
    """A series read, collected (a missing or torn data file becomes `CorruptTableError`)."""
    return _collect(lazy.select(columns) if columns else lazy, location)


def downsample(lazy: pl.LazyFrame, location: TableLocation, first: datetime, last: datetime, points: int
               ) -> pl.DataFrame:
    """A series read in at most `points` equal spans of time (ts of the span's first bar, last close, volume
    summed where IB has one): what a chart needs, aggregated lazily, so a million-bar series plots in a second."""
    width = max(-(-int((last - first).total_seconds() * 1_000_000) // points), 1)
    span = (pl.col("ts").dt.epoch("us") - int(first.timestamp() * 1_000_000)) // width
    return _collect(lazy.group_by(span.alias("span"), maintain_order=True)
                    .agg(pl.col("ts").first(), pl.col("close").last(), pl.col("volume").clip(lower_bound=0).sum())
                    .sort("span").select("ts", "close", "volume"), location)


def stored_bars_like(location: TableLocation, keys: pl.DataFrame) -> pl.DataFrame:
    """The stored bars sharing a bar key with `keys` (its BAR_KEY columns), with their price columns: what a
    quarantined row would replace if it were merged."""
    empty = pl.DataFrame(schema={k: BARS_SCHEMA[k] for k in (*BAR_KEY, *PRICE_COLUMNS)})
    keys = keys.select(BAR_KEY).drop_nulls().unique()
    table = None if keys.is_empty() else try_open(location.bars)
    if table is None:
        return empty
    months = keys["ts"].dt.strftime(MONTH_FORMAT).unique().to_list()
    lazy = (scan_table(table)
            .filter(pl.col(PARTITION_COLUMN).is_in(months), pl.col("con_id").is_in(keys["con_id"].unique().implode()))
            .select(*BAR_KEY, *PRICE_COLUMNS)
            .join(keys.lazy(), on=list(BAR_KEY), how="semi"))
    return _collect(lazy, location)


def history(location: TableLocation, limit: int | None = None) -> list[dict[str, Any]]:
    """The bars table's commits, newest first: version, time, operation, rows and files touched, and the project's
    commit metadata (flow run, operation, symbols; empty for commits written before it was recorded)."""
    return [_history_row(entry) for entry in open_table(location.bars).history(limit)]


def _history_row(entry: dict[str, Any]) -> dict[str, Any]:
    metrics = entry.get("operationMetrics") or {}
    row: dict[str, Any] = {
        "version": entry.get("version"),
        "timestamp": datetime.fromtimestamp(entry["timestamp"] / 1000, UTC) if entry.get("timestamp") else None,
        "operation": entry.get("operation"),
    }
    for column, names in ROW_METRICS.items():
        row[column] = next((int(metrics[n]) for n in names if n in metrics), None)
    for key, column in HISTORY_METADATA.items():
        value = entry.get(key)
        row[column] = "" if value is None else str(value)
    return row


def _collect(lazy: pl.LazyFrame, location: TableLocation) -> pl.DataFrame:
    try:
        return lazy.collect()
    except (OSError, pl.exceptions.ComputeError, pl.exceptions.PanicException) as exc:  # a torn parquet panics
        raise CorruptTableError(location.bars, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

