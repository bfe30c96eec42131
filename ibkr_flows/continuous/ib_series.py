"""IB's own continuous future (CONTFUT) in the continuous table, beside the project's rolls of the same root: IB
picks the contracts and the roll dates and serves the series only up to now, so each ingestion stores a snapshot
that replaces the previous one (rule `ib-contfut`). Not in the bars table: TWS describes a CONTFUT as its front
contract, so its bars would carry that contract's conId and collide with the dated contract's own bars."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from ibkr_flows.continuous.sessions import calendar_for, session_labels
from ibkr_flows.ib.instruments import InstrumentId
from storage.continuous_table import CONTINUOUS_SCHEMA, IB_ADJUSTMENT, IB_CONTFUT_RULE, replace_series
from storage.location import TableLocation


def ib_contfut_rows(bars: pl.DataFrame, built_at: datetime | None = None) -> pl.DataFrame:
    """Bars of one CONTFUT series (bars-table columns, `symbol` its id text, e.g. CONTFUT:ES@CME) as continuous
    table rows: `contract` and `instrument_id` null (IB's answer does not say which contract a bar came from),
    `bars_version` null (not built from stored bars)."""
    instrument = InstrumentId.parse(bars["symbol"][0])
    return bars.select(
        pl.lit(instrument.symbol).alias("root"), pl.lit(instrument.exchange).alias("exchange"),
        "bar_size", "what_to_show", "use_rth", pl.lit(IB_CONTFUT_RULE).alias("rule"),
        pl.lit(IB_ADJUSTMENT).alias("adjustment"), pl.lit(None, pl.Int64).alias("bars_version"), "ts",
        session_labels(bars["ts"], calendar_for(instrument.exchange)).alias("session"),
        "open", "high", "low", "close", "volume", "wap", "bar_count",
        pl.lit(None, pl.Int64).alias("contract"), pl.lit(None, pl.String).alias("instrument_id"),
        pl.lit(built_at or datetime.now(UTC)).alias("built_at"),
    ).sort("ts").select(CONTINUOUS_SCHEMA.names())


def store_ib_contfut(location: TableLocation, bars: pl.DataFrame) -> int:
    """Replace the stored snapshot of the series with `bars` (one commit); the continuous table version, or -1
    when `bars` is empty (an empty answer never wipes a stored series)."""
    if bars.is_empty():
        return -1
    return replace_series(location, ib_contfut_rows(bars))
