"""The backtest_results table: one row per (run, symbol), so any result can be traced to its inputs and re-run.

Identity columns say what ran on which data (strategy, parameters as JSON, range, bars-table version, code
version); the metric columns are the engine's `Metrics`, typed, so results can be filtered and ranked in SQL or
polars without parsing. Appends are insert-if-absent on (run_id, symbol): a retried task never doubles a run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from backtest.metrics import Metrics
from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import conform, exists, insert_new_rows

IDENTITY_COLUMNS: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "flow_run_id": pl.String(),
    "created_at": UTC_US,
    "symbol": pl.String(),
    "strategy": pl.String(),
    "params": pl.String(),
    "bar_size": pl.String(),
    "what_to_show": pl.String(),
    "use_rth": pl.Boolean(),
    "range_start": UTC_US,
    "range_end": UTC_US,
    "bars_version": pl.Int64(),
    "code_version": pl.String(),
    "cash": pl.Float64(),
    "commission": pl.String(),
    "slippage_bps": pl.Float64(),
    "sizing": pl.String(),
    "mode": pl.String(),
}


def _metric_dtype(annotation: Any) -> pl.DataType:
    base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation) \
        if isinstance(annotation, types.UnionType) else annotation
    return {datetime: UTC_US, timedelta: pl.Float64(), int: pl.Int64(), float: pl.Float64(), str: pl.String()}[base]


METRIC_COLUMNS: dict[str, pl.DataType] = {
    f.name: _metric_dtype(hint) for f, hint in
    ((f, typing.get_type_hints(Metrics)[f.name]) for f in dataclasses.fields(Metrics))
}
"""Every `Metrics` field; durations are stored in seconds."""

RESULTS_SCHEMA = pl.Schema({**IDENTITY_COLUMNS, **METRIC_COLUMNS})


def metric_values(metrics: Metrics) -> dict[str, Any]:
    values = dataclasses.asdict(metrics)
    return {k: v.total_seconds() if isinstance(v, timedelta) else v for k, v in values.items()}


def result_row(*, identity: dict[str, Any], metrics: Metrics) -> dict[str, Any]:
    row = {**identity, **metric_values(metrics)}
    row["params"] = json.dumps(row["params"], sort_keys=True) if not isinstance(row["params"], str) else row["params"]
    row.setdefault("created_at", datetime.now(UTC))
    return row


def append_backtest_results(location: TableLocation, rows: list[dict[str, Any]]) -> int:
    """Store result rows; returns how many were new."""
    if not rows:
        return 0
    frame = conform(pl.DataFrame(rows, schema_overrides=dict(RESULTS_SCHEMA), strict=False), RESULTS_SCHEMA,
                    what="backtest results")
    return insert_new_rows(location.backtest_results, frame, ("run_id", "symbol"), what="backtest results append")


def read_backtest_results(location: TableLocation) -> pl.DataFrame:
    if not exists(location.backtest_results):
        return pl.DataFrame(schema=RESULTS_SCHEMA)
    return pl.read_delta(location.backtest_results).sort("created_at")
