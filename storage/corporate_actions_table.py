"""The corporate_actions table: every split or dividend the project learned of, per instrument, with the bars-table
versions around the re-scale it caused, so a reader can tell which scale any version of the bars table is on and a
backtest can undo or add adjustments (`backtest.adjust`). One append per action (app id: instrument, kind, date),
so a retried repair never records an action twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

import polars as pl

from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import append_once, conform, exists, scan

TABLE_NAME = "corporate_actions"


class ActionKind(StrEnum):
    """A split changes the scale of prices (and volumes); a cash dividend only the total-return series."""

    SPLIT = "split"
    DIVIDEND = "dividend"


CORPORATE_ACTIONS_SCHEMA = pl.Schema({
    "symbol": pl.String(),
    "con_id": pl.Int64(),
    "effective_date": pl.Date(),
    "kind": pl.String(),
    "factor": pl.Float64(),
    "detected_at": UTC_US,
    "bars_version_before": pl.Int64(),
    "bars_version_after": pl.Int64(),
})
"""`effective_date`: the first session on the new scale (a dividend's ex-date). `factor`: what a price before it is
divided by to be on the scale after it (4.0 for a 4:1 split; 1 / (1 - dividend / previous close), just above 1,
for a dividend). The bars-table versions are those before and after the re-scale (null after: recorded only)."""


@dataclass(frozen=True)
class CorporateActionRow:
    symbol: str
    con_id: int
    effective_date: date
    kind: ActionKind
    factor: float
    detected_at: datetime
    bars_version_before: int | None
    bars_version_after: int | None

    def app_id(self) -> str:
        return f"corporate_actions/{self.con_id}/{self.kind}/{self.effective_date.isoformat()}"


def corporate_actions_path(location: TableLocation) -> str:
    return location.table(TABLE_NAME)


def append_action(location: TableLocation, action: CorporateActionRow) -> int:
    """Record `action` in one commit (once: a second append of the same action is a no-op); rows appended."""
    row = pl.DataFrame([{**action.__dict__, "kind": str(action.kind)}])
    return append_once(corporate_actions_path(location), conform(row, CORPORATE_ACTIONS_SCHEMA,
                                                                 what="corporate actions"),
                       action.app_id(), what="corporate action append")


def read_actions(location: TableLocation, symbol: str | None = None) -> pl.DataFrame:
    """The recorded actions (of one instrument, by the id text its bars' `symbol` holds), oldest first; empty when
    none were ever recorded."""
    path = corporate_actions_path(location)
    if not exists(path):
        return pl.DataFrame(schema=CORPORATE_ACTIONS_SCHEMA)
    lazy = scan(path)
    if symbol is not None:
        lazy = lazy.filter(pl.col("symbol") == symbol)
    return lazy.sort("con_id", "effective_date").collect()
