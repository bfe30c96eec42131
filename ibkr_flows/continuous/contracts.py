"""The inputs of a continuous series: the root's dated contracts (from the instruments table: conId, id text,
expiry) and their stored bars of one series, read at one bars-table version so a build can be repeated."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl

from ibkr_flows.continuous.errors import NoContractsError
from ibkr_flows.continuous.rules import Adjustment, RollKind, RollRule
from ibkr_flows.continuous.sessions import calendar_for, session_labels
from storage.bars_table import read_bars, table_version
from storage.instruments_table import read_instruments
from storage.location import TableLocation

EVERYTHING = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""The bar-start range read: every stored bar of the contracts."""
BAR_VALUES = ["con_id", "ts", "open", "high", "low", "close", "volume", "wap", "bar_count"]


@dataclass(frozen=True)
class ContinuousSpec:
    """Which continuous series to build: a futures root on its exchange, one stored series of its dated contracts
    (size, data type, session hours), the roll rule and the back-adjustment."""

    root: str
    exchange: str = "CME"
    bar_size: str = "1 hour"
    what_to_show: str = "TRADES"
    use_rth: bool = True
    rule: RollRule = field(default_factory=lambda: RollRule(RollKind.SESSIONS_BEFORE_EXPIRY))
    adjustment: Adjustment = Adjustment.NONE

    @property
    def calendar(self) -> str:
        return calendar_for(self.exchange)

    def series_key(self) -> dict[str, object]:
        """The values of `storage.continuous_table.SERIES_COLUMNS` for this series."""
        return {"root": self.root, "exchange": self.exchange, "bar_size": self.bar_size,
                "what_to_show": self.what_to_show, "use_rth": self.use_rth, "rule": str(self.rule),
                "adjustment": str(self.adjustment)}

    def describe(self) -> str:
        hours = "RTH" if self.use_rth else "ETH"
        return f"{self.root}@{self.exchange} {self.bar_size} {self.what_to_show} {hours}"


@dataclass(frozen=True)
class ContractBars:
    contracts: pl.DataFrame
    """con_id, instrument_id, expiry (Date): the contracts with bars, by expiry."""
    bars: pl.DataFrame
    """`BAR_VALUES` plus `session` (the exchange's trade date), by con_id and ts."""
    bars_version: int


def dated_contracts(location: TableLocation, spec: ContinuousSpec) -> pl.DataFrame:
    """The root's dated futures the instruments table knows (an expiry does not change, so the latest table
    serves a build at any bars version): con_id, instrument_id, expiry."""
    instruments = read_instruments(location)
    return (
        instruments
        .filter(pl.col("sec_type") == "FUT", pl.col("symbol") == spec.root, pl.col("expiry").is_not_null(),
                (pl.col("exchange") == spec.exchange) | (pl.col("primary_exchange") == spec.exchange))
        .select("con_id", "instrument_id", pl.col("expiry").str.slice(0, 8).str.to_date("%Y%m%d"))
        .unique("con_id")
        .sort("expiry")
    )


def contract_bars(location: TableLocation, spec: ContinuousSpec, version: int | None = None) -> ContractBars:
    """The stored bars of the root's dated contracts at bars-table `version` (default: the latest), each labelled
    with its session; `NoContractsError` when none has bars of the series there."""
    contracts = dated_contracts(location, spec)
    read_version = version if version is not None else table_version(location)
    if contracts.is_empty() or read_version is None:
        raise NoContractsError(spec.root, spec.exchange, spec.describe(), version)
    bars, read_version = read_bars(location, contracts["instrument_id"].to_list(), columns=BAR_VALUES,
                                   bar_size=spec.bar_size, start=EVERYTHING[0], end=EVERYTHING[1],
                                   what_to_show=spec.what_to_show, use_rth=spec.use_rth, version=read_version)
    bars = bars.filter(pl.col("con_id").is_in(contracts["con_id"].to_list()))
    if bars.is_empty():
        raise NoContractsError(spec.root, spec.exchange, spec.describe(), read_version)
    bars = bars.with_columns(session_labels(bars["ts"], spec.calendar)).sort("con_id", "ts")
    held = contracts.filter(pl.col("con_id").is_in(bars["con_id"].unique().to_list()))
    return ContractBars(held, bars, read_version)


def daily_volume(bars: pl.DataFrame) -> pl.DataFrame:
    """con_id, session, volume: each contract's volume per session (the volume rule's input)."""
    return bars.group_by("con_id", "session").agg(pl.col("volume").clip(lower_bound=0).sum())


def expiry_of(contracts: pl.DataFrame, con_id: int) -> date:
    return contracts.filter(pl.col("con_id") == con_id)["expiry"].item()
