"""The Python API for notebooks: the stored bars and results as polars DataFrames, read the way the CLI reads
them (one pinned table version, UTC timestamps), without Prefect or a TWS connection.

    from ibkr_flows.api import load_bars, load_results
    series = list_series()                      # what is stored: one row per series, sessions missing
    contracts = list_instruments()              # the contracts ingestions resolved: multiplier, currency, zone
    bars = load_bars("AAPL", start="2024-07-01", end="2024-07-13")
    es = load_bars("FUT:ES@CME:202503", start="2025-03-03", end="2025-03-08", bar_size="1 hour")
    best = load_results(sort_by="sharpe").head(5)
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from ibkr_flows.backtest.catalog import RunKind, list_runs
from ibkr_flows.ib.historical import BarSize, WhatToShow
from ibkr_flows.ib.instruments import InstrumentId
from ibkr_flows.quality.bars_view import bars_view
from ibkr_flows.quality.review import catalog_series, symbol_calendar
from storage.bars_catalog import collect_series
from storage.bars_table import scan_bars
from storage.instruments_table import read_instruments
from storage.location import TableLocation


def list_series(data_dir: str | None = None) -> pl.DataFrame:
    """Every stored series as `ibkr data ls` lists it: first and last bar, rows, sessions missing, quarantined rows,
    last ingest."""
    return catalog_series(TableLocation.at(data_dir))[0]


def list_instruments(data_dir: str | None = None) -> pl.DataFrame:
    """Every contract an ingestion resolved, one row per conId, as `ibkr data instruments --json` lists it."""
    return read_instruments(TableLocation.at(data_dir))


def load_bars(symbol: str, *, start: datetime | str, end: datetime | str, bar_size: BarSize = "1 min",
              what_to_show: WhatToShow = "TRADES", use_rth: bool = True, version: int | None = None,
              data_dir: str | None = None) -> pl.DataFrame:
    """One instrument's stored bars in [start, end), sorted by time, each with its `session` date (`bars_view`);
    `symbol` is its id as ingested (`AAPL`, `CASH:EUR.USD@IDEALPRO`, any case). `version` reads an older table
    version. Naive times and dates are UTC."""
    location = TableLocation.at(data_dir)
    instrument = str(InstrumentId.parse(symbol))
    bars, _ = scan_bars(location, [instrument], bar_size=bar_size, start=_utc(start), end=_utc(end),
                        what_to_show=what_to_show, use_rth=use_rth, version=version)
    return collect_series(bars_view(bars, bar_size, symbol_calendar(location, instrument)), location)


def load_results(*, kind: RunKind = "backtest", strategy: str | None = None, symbol: str | None = None,
                 since: datetime | str | None = None, sort_by: str = "created_at", descending: bool = True,
                 data_dir: str | None = None) -> pl.DataFrame:
    """Stored runs with every column (metrics, parameters as JSON, the request each ran), as
    `ibkr backtest results` lists them."""
    return list_runs(TableLocation.at(data_dir), kind=kind, strategy=strategy, symbol=symbol,
                     since=_utc(since) if since is not None else None, sort_by=sort_by, descending=descending)


def _utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
