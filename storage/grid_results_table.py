"""The grid_results table: every combination of every grid run, keyed by (run_id, params), so a grid can be
re-ranked, compared with a later run, or audited without re-running it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl

from storage.location import TableLocation
from storage.results_table import NUMERIC_METRIC_COLUMNS
from storage.schema import UTC_US
from storage.tables import append_once, conform, exists, scan, stats_only_on

GRID_IDENTITY: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "flow_run_id": pl.String(),
    "created_at": UTC_US,
    "symbol": pl.String(),
    "strategy": pl.String(),
    "params": pl.String(),
    "rank": pl.Int64(),
    "rank_by": pl.String(),
    "bar_size": pl.String(),
    "range_start": UTC_US,
    "range_end": UTC_US,
    "bars_version": pl.Int64(),
    "code_version": pl.String(),
    "request": pl.String(),
}
"""As in backtest_results, `request` is the grid request as JSON with the bars-table version pinned."""
GRID_RESULTS_SCHEMA = pl.Schema({**GRID_IDENTITY, **NUMERIC_METRIC_COLUMNS})


def grid_rows(results: pl.DataFrame, axes: list[str], identity: dict[str, Any]) -> pl.DataFrame:
    """A ranked `evaluate_grid` table as grid_results rows: the parameters folded into JSON, rank from order."""
    params = [json.dumps(row, sort_keys=True) for row in results.select(axes).iter_rows(named=True)]
    frame = results.select(list(NUMERIC_METRIC_COLUMNS)).with_columns(
        pl.Series("params", params), pl.int_range(1, results.height + 1).alias("rank"),
        *[pl.lit(v).alias(k) for k, v in {**identity, "created_at": datetime.now(UTC)}.items()])
    return conform(frame, GRID_RESULTS_SCHEMA, what="grid results")


GRID_RESULTS_CONFIGURATION = stats_only_on("run_id", "created_at")
"""As the results table's (`results_table.RESULTS_CONFIGURATION`): one file per grid run, read whole or by run."""


def append_grid_results(location: TableLocation, run_id: str, rows: pl.DataFrame) -> int:
    """Every combination of one grid run in one commit stamped with the run id (`append_once`)."""
    return append_once(location.grid_results, rows, f"grid_results:{run_id}", what="grid results append",
                       configuration=GRID_RESULTS_CONFIGURATION)


def read_grid_results(location: TableLocation, run_id: str | None = None) -> pl.DataFrame:
    if not exists(location.grid_results):
        return pl.DataFrame(schema=GRID_RESULTS_SCHEMA)
    lazy = scan(location.grid_results)
    if run_id is not None:
        lazy = lazy.filter(pl.col("run_id") == run_id)
    return lazy.sort("run_id", "rank").collect()
