"""The backtest_trades table: every trade of every stored backtest run, keyed by (run_id, symbol, entry_time), so
`ibkr backtest show` lists a past run's trades without running it again. A run's trades are one append. The
duration is not stored: it is `exit_time - entry_time`, and Delta has no duration type."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future

import polars as pl
from deltalake import DeltaTable

from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import append_once, conform, exists, scan, stats_only_on

TRADE_COLUMNS: dict[str, pl.DataType] = {
    "entry_time": UTC_US,
    "exit_time": UTC_US,
    "side": pl.String(),
    "size": pl.Float64(),
    "entry_price": pl.Float64(),
    "exit_price": pl.Float64(),
    "pnl": pl.Float64(),
    "return_pct": pl.Float64(),
    "commission": pl.Float64(),
}
"""The engine's trade columns but `duration`; a test keeps them equal."""
TRADES_SCHEMA = pl.Schema({"run_id": pl.String(), "symbol": pl.String(), **TRADE_COLUMNS})
TRADES_CONFIGURATION = stats_only_on("run_id", "symbol")
"""Per-file statistics on what `read_trades` looks up: a run's trades (see `stats_only_on`)."""


def append_trades(location: TableLocation, run_id: str, trades: Mapping[str, pl.DataFrame],
                  opened: Future[DeltaTable | None] | None = None) -> int:
    """Store a run's trades, per symbol, in one commit stamped with the run id (`append_once`: a retried store
    never doubles them). Returns how many rows were new. `opened`: the table being opened meanwhile
    (`open_in_background`)."""
    rows = pl.concat([frame.select(list(TRADE_COLUMNS)).with_columns(pl.lit(run_id).alias("run_id"),
                                                                     pl.lit(symbol).alias("symbol"))
                      for symbol, frame in trades.items()])
    return append_once(location.backtest_trades, conform(rows, TRADES_SCHEMA, what="backtest trades"),
                       f"backtest_trades:{run_id}", what="backtest trades append", opened=opened,
                       configuration=TRADES_CONFIGURATION)


def read_trades(location: TableLocation, run_id: str) -> pl.DataFrame:
    """A run's trades in order, with the duration derived again."""
    if not exists(location.backtest_trades):
        return pl.DataFrame(schema=TRADES_SCHEMA)
    return (scan(location.backtest_trades).filter(pl.col("run_id") == run_id)
            .sort("symbol", "entry_time").collect()
            .with_columns(duration=pl.col("exit_time") - pl.col("entry_time")))
