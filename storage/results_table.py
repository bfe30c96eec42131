"""The backtest_results table: one row per (run, symbol), so any result can be traced to its inputs and re-run.

Identity columns say what ran on which data (strategy, parameters as JSON, range, bars-table version, code
version); the metric columns are every field of the engine's `Metrics`, typed, so results can be filtered and
ranked in SQL or polars without parsing. The schema is defined here (storage is the bottom layer and imports no
engine); a test keeps it equal to `Metrics`. A run's rows are one append stamped with the run id (`append_once`):
a retried task never doubles a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable

from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import append_once, conform, exists, open_in_background, scan, stats_only_on
from storage.trades_table import append_trades

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
    "request": pl.String(),
    "adjust": pl.String(),
    "currency": pl.String(),
}
"""`request` is the whole request as JSON with the bars-table version pinned: what `ibkr backtest rerun` runs
again. Rows stored before it existed have it null (and cannot be re-run). `adjust` is the price adjustment the run
read (none, splits, total); rows stored before it existed have it null (they read the stored bars: splits).
`currency` is what the run's money (cash, PnL, final equity, commissions) is in: the instrument's currency, a
currency pair's quote currency; rows stored before it existed have it null (they could only be US stocks: USD).
All three were added by schema evolution: the first append after a column was added merges it into the table's
schema, so older tables stay readable and keep their rows. `commission` is the model charged (`auto` resolved per
symbol, e.g. ibkr_futures)."""


RUN_METRIC_COLUMNS: dict[str, pl.DataType] = {
    "start": UTC_US,
    "end": UTC_US,
}
"""Metrics that describe the evaluated range: the same for every combination of one grid evaluation."""
NUMERIC_METRIC_COLUMNS: dict[str, pl.DataType] = {
    "bars": pl.Int64(),
    "total_return_pct": pl.Float64(),
    "annualized_return_pct": pl.Float64(),
    "annualized_volatility_pct": pl.Float64(),
    "sharpe": pl.Float64(),
    "sortino": pl.Float64(),
    "calmar": pl.Float64(),
    "max_drawdown_pct": pl.Float64(),
    "max_drawdown_duration": pl.Float64(),
    "exposure_pct": pl.Float64(),
    "trades": pl.Int64(),
    "win_rate_pct": pl.Float64(),
    "best_trade_pct": pl.Float64(),
    "worst_trade_pct": pl.Float64(),
    "avg_trade_pct": pl.Float64(),
    "profit_factor": pl.Float64(),
    "expectancy": pl.Float64(),
    "buy_and_hold_return_pct": pl.Float64(),
    "final_equity": pl.Float64(),
    "commissions": pl.Float64(),
    "periods_per_year": pl.Float64(),
}
"""Every numeric metric, shared with the grid_results table; `max_drawdown_duration` in seconds."""
METRIC_COLUMNS: dict[str, pl.DataType] = {
    **RUN_METRIC_COLUMNS,
    **NUMERIC_METRIC_COLUMNS,
    "annualization": pl.String(),
}
"""Every field of the engine's `Metrics`, in its order."""

RESULTS_SCHEMA = pl.Schema({**IDENTITY_COLUMNS, **METRIC_COLUMNS})

RESULTS_CONFIGURATION = stats_only_on("run_id", "created_at")
"""Per-file statistics on the run id and time only: the table is read whole (by time) or looked up by run, and
every append would otherwise pay for the statistics of 32 columns of every stored run's file."""


def result_row(*, identity: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One row from a run's identity and its metric values (as `METRIC_COLUMNS` names them)."""
    row = {**identity, **metrics}
    row["params"] = json.dumps(row["params"], sort_keys=True) if not isinstance(row["params"], str) else row["params"]
    row.setdefault("created_at", datetime.now(UTC))
    return row


def append_backtest_results(location: TableLocation, run_id: str, rows: list[dict[str, Any]],
                            opened: Future[DeltaTable | None] | None = None) -> int:
    """Store one run's rows in one commit; returns how many were new (0 when the run is already stored).
    `opened`: the table being opened meanwhile (`open_in_background`)."""
    frame = conform(pl.DataFrame(rows, schema_overrides=dict(RESULTS_SCHEMA), strict=False), RESULTS_SCHEMA,
                    what="backtest results")
    return append_once(location.backtest_results, frame, f"backtest_results:{run_id}", what="backtest results append",
                       opened=opened, configuration=RESULTS_CONFIGURATION)


@dataclass(frozen=True)
class RunTables:
    """The two tables a run is stored into, being opened (`open_run_tables`)."""

    trades: Future[DeltaTable | None]
    results: Future[DeltaTable | None]


def open_run_tables(location: TableLocation) -> RunTables:
    """Start opening the trades and results tables, each on a thread. Opening one replays its log since the last
    checkpoint (up to 9 commits, 5-10 ms locally), and a store needs both: a command that starts this before it
    reads and backtests stores in about the time of the two commits."""
    return RunTables(open_in_background(location.backtest_trades), open_in_background(location.backtest_results))


def store_run(location: TableLocation, run_id: str, trades: Mapping[str, pl.DataFrame],
              rows: list[dict[str, Any]], opened: RunTables | None = None) -> int:
    """A run's trades, then its result rows (each one commit stamped with the run id: a retried store never
    doubles a run; a results row implies its trades are stored). `opened`: the tables as `open_run_tables` began
    opening them earlier (default: now, the results table opening while the trades commit). Returns how many
    result rows were new."""
    tables = opened or open_run_tables(location)
    append_trades(location, run_id, trades, opened=tables.trades)
    return append_backtest_results(location, run_id, rows, opened=tables.results)


def read_backtest_results(location: TableLocation) -> pl.DataFrame:
    if not exists(location.backtest_results):
        return pl.DataFrame(schema=RESULTS_SCHEMA)
    return scan(location.backtest_results).sort("created_at").collect()
