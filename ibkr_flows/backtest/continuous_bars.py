"""Continuous futures in a backtest: a `CONTFUT:ES@CME` id reads one series of the continuous table, not the bars
table.

Without a roll rule it is IB's own CONTFUT series (rule `ib-contfut`, as `ibkr data ingest CONTFUT:ES@CME` stored
it): IB picks the contracts and the roll dates and does not say which contract a bar came from, so no roll can be
charged. With a rule (`days:N` or `volume`) and a back-adjustment, it is the project's own roll that
`ibkr data roll` built from the stored dated contracts: its bars name the contract held (`contract`), and the
engine charges each change of contract as a roll (closing and reopening the position: both orders' commissions
and slippage). Either way the run's table version is the continuous table's, which `table_version` then pins.

Ids are recognised by their class prefix, without `ib.instruments` (which imports ib_async, 0.25 s of every
backtest): backtest ids are canonical already (`InstrumentId`'s text, upper case)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from storage.continuous_table import IB_ADJUSTMENT, IB_CONTFUT_RULE, continuous_version, read_series
from storage.location import TableLocation

CONTINUOUS_PREFIX = "CONTFUT:"
"""`ib.instruments.InstrumentClass.CONTFUT` as an id starts: `CONTFUT:ES@CME`."""
BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]


def is_continuous(symbol: str) -> bool:
    return symbol.startswith(CONTINUOUS_PREFIX)


def root_and_exchange(symbol: str) -> tuple[str, str]:
    """`CONTFUT:ES@CME` -> (ES, CME)."""
    root, _, exchange = symbol.removeprefix(CONTINUOUS_PREFIX).partition("@")
    return root, exchange


def series_key(symbol: str, bar_size: str, what_to_show: str, use_rth: bool, roll: str | None,
               roll_adjust: str) -> dict[str, object]:
    """The continuous table's key (`SERIES_COLUMNS`) of `symbol`'s series: the project's roll `roll` /
    `roll_adjust`, or IB's own series when `roll` is None."""
    root, exchange = root_and_exchange(symbol)
    rule, adjustment = (roll, roll_adjust) if roll is not None else (IB_CONTFUT_RULE, IB_ADJUSTMENT)
    return {"root": root, "exchange": exchange, "bar_size": bar_size, "what_to_show": what_to_show,
            "use_rth": use_rth, "rule": rule, "adjustment": adjustment}


def read_continuous(location: TableLocation, series: dict[str, object], start: datetime, end: datetime,
                    version: int | None) -> tuple[pl.DataFrame, int | None]:
    """The series' bars in [start, end) at continuous-table `version` (None: the latest), with `contract` when
    every bar names its contract (the project's rolls; IB's series names none); the version read, None when the
    table does not exist yet."""
    read_version = version if version is not None else continuous_version(location)
    if read_version is None:
        return pl.DataFrame(), None
    bars = read_series(location, series, version=read_version, start=start, end=end)
    rolled = bars.height > 0 and bars["contract"].null_count() == 0
    return bars.select([*BAR_COLUMNS, *(["contract"] if rolled else [])]), read_version
