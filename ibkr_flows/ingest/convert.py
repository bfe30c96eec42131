"""ib_async bars -> polars rows in the bars table's shape."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
from ib_async import BarData, ContractDetails

from ibkr_flows.ingest.plan import Chunk
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS


def _bar_start(value: datetime | date) -> datetime:
    """formatDate=2 gives aware UTC datetimes; daily and longer bars come as dates, stored at 00:00 UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive bar time {value!r}: request bars with formatDate=2")
        return value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def bars_to_frame(bars: list[BarData], *, symbol: str, details: ContractDetails, chunk: Chunk, bar_size: str,
                  what_to_show: str, use_rth: bool, flow_run_id: str, ingested_at: datetime) -> pl.DataFrame:
    """Rows for the bars starting inside the chunk (a yearly daily request may return a few bars before it).
    `symbol` is the instrument's id text (a US stock's ticker, `FUT:ES@CME:202503`, ...); conId, exchanges and
    currency are the resolved contract's."""
    contract = details.contract
    assert contract is not None
    starts = [_bar_start(b.date) for b in bars]
    frame = pl.DataFrame(
        {
            "symbol": [symbol] * len(bars),
            "con_id": [contract.conId] * len(bars),
            "exchange": [contract.exchange] * len(bars),
            "primary_exchange": [contract.primaryExchange] * len(bars),
            "currency": [contract.currency] * len(bars),
            "bar_size": [bar_size] * len(bars),
            "what_to_show": [what_to_show] * len(bars),
            "use_rth": [use_rth] * len(bars),
            "ts": starts,
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [float(b.volume) for b in bars],
            "wap": [b.average for b in bars],
            "bar_count": [b.barCount for b in bars],
            "ingested_at": [ingested_at] * len(bars),
            "flow_run_id": [flow_run_id] * len(bars),
            "request": [chunk.describe(symbol, bar_size, what_to_show, use_rth)] * len(bars),
        },
        schema={**BAR_COLUMNS, **LINEAGE_COLUMNS},
    )
    return frame.filter(pl.col("ts").is_between(chunk.start, chunk.end, closed="left"))
