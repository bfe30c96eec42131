"""The resolved contracts of a run as rows of the instruments table (`storage.instruments_table`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from ibkr_flows.ib.instruments import InstrumentClass, InstrumentId
from ibkr_flows.ingest.series import ResolvedSeries
from storage.schema import INSTRUMENTS_SCHEMA


def instrument_rows(series: Sequence[ResolvedSeries], seen_at: datetime) -> pl.DataFrame:
    """One row per resolved contract, as TWS described it at `seen_at` (first seen and last updated both: the
    upsert keeps a known contract's first sighting). IB describes a continuous future (CONTFUT) as its front
    contract, conId and all: it is recorded as that dated future, under the dated id (`FUT:ES@CME:202503`), so a
    backtest of the continuous series finds its root's multiplier and tick even when no dated contract was
    ingested."""
    rows = []
    for one in series:
        contract, details = one.contract, one.details
        dated = one.is_ib_continuous
        month = details.contractMonth or contract.lastTradeDateOrContractMonth[:6]
        rows.append({
            "con_id": contract.conId,
            "sec_type": "FUT" if dated else contract.secType,
            "symbol": contract.symbol,
            "local_symbol": contract.localSymbol,
            "trading_class": contract.tradingClass,
            "exchange": contract.exchange,
            "primary_exchange": contract.primaryExchange or contract.exchange,
            "currency": contract.currency,
            "multiplier": float(contract.multiplier) if contract.multiplier else None,
            "min_tick": details.minTick,
            "time_zone_id": details.timeZoneId,
            "trading_hours": details.tradingHours,
            "liquid_hours": details.liquidHours,
            "expiry": contract.lastTradeDateOrContractMonth or None,
            "instrument_id": str(InstrumentId(InstrumentClass.FUT, contract.symbol, one.instrument.exchange, None,
                                              month)) if dated else one.symbol,
            "long_name": details.longName,
            "first_seen": seen_at,
            "last_updated": seen_at,
        })
    return pl.DataFrame(rows, schema=INSTRUMENTS_SCHEMA)
