"""Corrupting a historical reply on purpose, per `Faults.bad_bars`, and recording exactly what was corrupted.

The record lets tests check the client's quality checks against ground truth: every bad bar it should flag, and
no other.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl

from ibkr_flows.ib.historical import BAR_SIZES
from ibkr_flows.sim.faults import BadBarKind
from ibkr_flows.sim.requests import HistoricalRequest


def inject_bad_bars(symbol: str, req: HistoricalRequest, bars: pl.DataFrame, every: dict[BadBarKind, int],
                    record: list[dict[str, Any]]) -> pl.DataFrame:
    """Corrupt every Nth bar per kind in `every` (one corruption per bar) and append each one to `record`."""
    if not every:
        return bars
    rows = bars.to_dicts()
    step = BAR_SIZES[req.bar_size]
    extra: list[dict[str, Any]] = []
    corrupted: set[int] = set()
    for kind, nth in every.items():
        if kind is BadBarKind.MISALIGNED_TS and (step >= timedelta(days=1) or step < timedelta(seconds=2)):
            continue  # dates and 1-second bars cannot be misaligned on the wire
        for index in range(nth - 1, len(rows), nth):
            if index in corrupted:
                continue
            corrupted.add(index)
            row = rows[index]
            if kind is BadBarKind.HIGH_BELOW_LOW:
                row["high"], row["low"] = row["low"] - 0.01, row["high"]
            elif kind is BadBarKind.NEGATIVE_VOLUME:
                row["volume"] = -abs(row["volume"]) - 100.0
            elif kind is BadBarKind.DUPLICATE_TS:
                bump = round(row["close"] + 0.05, 2)
                extra.append({**row, "close": bump, "high": max(row["high"], bump)})
            elif kind is BadBarKind.MISALIGNED_TS:
                row["ts"] = row["ts"] + step / 2
            record.append({
                "symbol": symbol, "bar_size": req.bar_size, "what_to_show": req.what_to_show,
                "use_rth": req.use_rth, "ts": row["ts"].isoformat(), "kind": str(kind),
            })
    return pl.DataFrame(rows + extra, schema=bars.schema).sort("ts", maintain_order=True)
