"""The continuous table: continuous futures series, one per (root, exchange, bar size, data type, session hours,
rule, adjustment), kept apart from the bars table because their rows are derived (the project's own roll, rule
`days:N` or `volume`) or served by IB under the front contract's conId (rule `ib-contfut`): in the bars table either
would collide with, or be mistaken for, a dated contract's bars.

Every row carries its provenance: the rule and adjustment it was built with and the bars-table version it was
built from (null for IB's series, which is not built from stored bars), so a stored series can be rebuilt and
compared. Each build replaces its series in one commit (an overwrite limited to the series by a predicate):
readers see the previous build or the new one, never a mix; other series are untouched; Delta time travel keeps
the earlier builds.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from storage.errors import BarsSchemaError
from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import conform, current_version, replace_where, scan, try_open

TABLE_NAME = "continuous"
IB_CONTFUT_RULE = "ib-contfut"
"""The rule of IB's own CONTFUT series: IB picks the contracts and the roll dates and does not document how."""
IB_ADJUSTMENT = "ib"
"""The adjustment of IB's CONTFUT series: as IB serves it (its back-adjustment, if any, is not documented)."""

SERIES_COLUMNS = ("root", "exchange", "bar_size", "what_to_show", "use_rth", "rule", "adjustment")
"""One continuous series; with `ts`, the key of a row."""

CONTINUOUS_SCHEMA = pl.Schema({
    "root": pl.String(),
    "exchange": pl.String(),
    "bar_size": pl.String(),
    "what_to_show": pl.String(),
    "use_rth": pl.Boolean(),
    "rule": pl.String(),
    "adjustment": pl.String(),
    "bars_version": pl.Int64(),
    "ts": UTC_US,
    "session": pl.Date(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "wap": pl.Float64(),
    "bar_count": pl.Int64(),
    "contract": pl.Int64(),
    "instrument_id": pl.String(),
    "built_at": UTC_US,
})
"""`contract`: the conId of the dated contract held on the bar (`instrument_id` its id text); null for IB's
series, whose answer does not say which contract a bar came from. `session`: the exchange's trade date."""


def continuous_path(location: TableLocation) -> str:
    return location.table(TABLE_NAME)


def series_predicate(series: dict[str, object]) -> str:
    """The SQL predicate selecting one series' rows (values from `SERIES_COLUMNS`)."""
    return " AND ".join(f"{name} = {_literal(series[name])}" for name in SERIES_COLUMNS)


def replace_series(location: TableLocation, frame: pl.DataFrame) -> int:
    """Make the stored rows of the one series in `frame` exactly `frame`, in one commit; returns the table
    version written. An empty frame writes nothing (a failed build never wipes a stored series): -1."""
    rows = conform(frame, CONTINUOUS_SCHEMA, what="continuous")
    if rows.is_empty():
        return -1
    series = rows.select(SERIES_COLUMNS).unique()
    if series.height != 1:
        raise BarsSchemaError(f"continuous: one series per write, got {series.height}")
    if rows["ts"].is_duplicated().any():
        raise BarsSchemaError("continuous: two rows share a bar start; a continuous series holds one contract a bar")
    return replace_where(continuous_path(location), rows, series_predicate(series.row(0, named=True)),
                         what="continuous series replace")


def read_series(location: TableLocation, series: dict[str, object], *, version: int | None = None,
                start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
    """One stored series (bars from `start`, before `end`, when given), oldest bar first; empty (in the table's
    schema) when none is stored."""
    path = continuous_path(location)
    if try_open(path) is None:
        return pl.DataFrame(schema=CONTINUOUS_SCHEMA)
    lazy = scan(path, version).filter(*(pl.col(name) == series[name] for name in SERIES_COLUMNS))
    if start is not None:
        lazy = lazy.filter(pl.col("ts") >= start)
    if end is not None:
        lazy = lazy.filter(pl.col("ts") < end)
    return lazy.sort("ts").collect()


def stored_bar_sizes(location: TableLocation, series: dict[str, object]) -> list[str]:
    """The bar sizes stored of `series` (its `SERIES_COLUMNS` but `bar_size`), sorted."""
    path = continuous_path(location)
    if try_open(path) is None:
        return []
    keys = [name for name in SERIES_COLUMNS if name != "bar_size"]
    sizes = (scan(path).filter(*(pl.col(name) == series[name] for name in keys)).select("bar_size").unique()
             .collect())
    return sorted(sizes["bar_size"].to_list())


def continuous_version(location: TableLocation) -> int | None:
    """The table's latest version (None before the first series is stored): what a backtest pins its reads to."""
    return current_version(continuous_path(location))


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"
