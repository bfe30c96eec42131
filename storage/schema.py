"""Table schemas: the one definition of every column the project stores.

Delta Lake (delta-rs) casts silently on write (floats to ints, strings to numbers, other time zones), so every
frame is cast to these exact schemas and validated *before* it reaches a table (see `conform`).
"""

from __future__ import annotations

import polars as pl

UTC_US = pl.Datetime("us", "UTC")

BAR_KEY = ("con_id", "bar_size", "what_to_show", "use_rth", "ts")
"""Natural key of a bar: one contract, one series (size, data type, session), one start time."""

BAR_COLUMNS: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "con_id": pl.Int64(),
    "exchange": pl.String(),
    "primary_exchange": pl.String(),
    "currency": pl.String(),
    "bar_size": pl.String(),
    "what_to_show": pl.String(),
    "use_rth": pl.Boolean(),
    "ts": UTC_US,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "wap": pl.Float64(),
    "bar_count": pl.Int64(),
}
"""A bar as fetched: `ts` is the bar's start in UTC; volume/wap/bar_count are -1 where IB has none (MIDPOINT,
BID_ASK)."""

PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "wap", "bar_count")
"""The values IB may revise after the fact: a re-fetched bar differing in any of them replaces the stored one."""

LINEAGE_COLUMNS: dict[str, pl.DataType] = {
    "ingested_at": UTC_US,
    "flow_run_id": pl.String(),
    "request": pl.String(),
}
"""Where a row came from: when, which flow run, and the exact historical request (`AAPL 1 min TRADES rth
end=20240307-21:00:00 dur=1 D`)."""

PARTITION_COLUMN = "month"
"""`YYYY-MM` of `ts`: one symbol's date-range read touches few files, an upsert rewrites few, and a year of
daily runs does not make thousands of tiny files (partitioning by symbol or by day measured worse)."""

BARS_SCHEMA = pl.Schema({**BAR_COLUMNS, **LINEAGE_COLUMNS, PARTITION_COLUMN: pl.String()})

QUARANTINE_SCHEMA = pl.Schema({
    **BAR_COLUMNS,
    **LINEAGE_COLUMNS,
    "failed_check": pl.String(),
    "check_detail": pl.String(),
    "quarantined_at": UTC_US,
})
"""Rows that failed a blocking quality check: the row as received, which check, and why."""

INSTRUMENT_KEY = "con_id"

INSTRUMENTS_SCHEMA = pl.Schema({
    "con_id": pl.Int64(),
    "sec_type": pl.String(),
    "symbol": pl.String(),
    "local_symbol": pl.String(),
    "trading_class": pl.String(),
    "exchange": pl.String(),
    "primary_exchange": pl.String(),
    "currency": pl.String(),
    "multiplier": pl.Float64(),
    "min_tick": pl.Float64(),
    "time_zone_id": pl.String(),
    "trading_hours": pl.String(),
    "liquid_hours": pl.String(),
    "expiry": pl.String(),
    "instrument_id": pl.String(),
    "long_name": pl.String(),
    "first_seen": UTC_US,
    "last_updated": UTC_US,
})
"""One row per IB contract (conId) an ingestion resolved, as TWS last described it: `sec_type` is its class
(STK, FUT, CONTFUT, CASH, IND), `multiplier` null where IB gives none (stocks, pairs, indices), `expiry` a future's
last trading day (YYYYMMDD, null otherwise), `instrument_id` the id text the bars' `symbol` column holds for it,
trading and liquid hours in TWS's own format as of `last_updated` (they cover the week from then)."""
