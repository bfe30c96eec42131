"""The rolls table: every roll of a continuous futures series the project built (`ibkr_flows.continuous`), one
row per roll: which contract was held before and after, the first session on the new one, the price gap measured
at the last bar both shared, and the bars-table version the roll was computed from.

Keyed by series, rule, adjustment and bars-table version: rebuilding from the same version rewrites the same rows
(one commit replacing them), while rolls computed from another version of the bars (after more contracts were
ingested, say) are kept beside them, so the roll dates a backtest used can always be looked up.
"""

from __future__ import annotations

import polars as pl

from storage.continuous_table import SERIES_COLUMNS, series_predicate
from storage.errors import BarsSchemaError
from storage.location import TableLocation
from storage.schema import UTC_US
from storage.tables import conform, replace_where, scan, try_open

TABLE_NAME = "rolls"

ROLLS_SCHEMA = pl.Schema({
    "root": pl.String(),
    "exchange": pl.String(),
    "bar_size": pl.String(),
    "what_to_show": pl.String(),
    "use_rth": pl.Boolean(),
    "rule": pl.String(),
    "adjustment": pl.String(),
    "bars_version": pl.Int64(),
    "roll_session": pl.Date(),
    "from_con_id": pl.Int64(),
    "to_con_id": pl.Int64(),
    "from_instrument": pl.String(),
    "to_instrument": pl.String(),
    "gap_ts": UTC_US,
    "from_close": pl.Float64(),
    "to_close": pl.Float64(),
    "price_gap": pl.Float64(),
    "price_ratio": pl.Float64(),
    "reason": pl.String(),
    "built_at": UTC_US,
})
"""`roll_session`: the first session on `to_con_id`. `gap_ts`: the last bar start before it where both contracts
have a bar; `price_gap` = to_close - from_close there (what `difference` adds to earlier prices), `price_ratio` =
to_close / from_close (what `ratio` multiplies them by). `reason`: why the rule rolled then, in words."""


def rolls_path(location: TableLocation) -> str:
    return location.table(TABLE_NAME)


def replace_rolls(location: TableLocation, rows: pl.DataFrame) -> int:
    """Store the rolls of one build (one series, one bars version) in place of any stored for the same key, in one
    commit; returns the table version, or -1 when there are no rolls (one contract: nothing to record)."""
    rolls = conform(rows, ROLLS_SCHEMA, what="rolls")
    if rolls.is_empty():
        return -1
    keys = rolls.select(*SERIES_COLUMNS, "bars_version").unique()
    if keys.height != 1:
        raise BarsSchemaError(f"rolls: one series and bars version per write, got {keys.height}")
    key = keys.row(0, named=True)
    predicate = f"{series_predicate(key)} AND bars_version = {int(key['bars_version'])}"
    return replace_where(rolls_path(location), rolls, predicate, what="rolls replace")


def read_rolls(location: TableLocation, root: str | None = None) -> pl.DataFrame:
    """Every stored roll (of one root), by series, bars version and roll session; empty before the first build."""
    path = rolls_path(location)
    if try_open(path) is None:
        return pl.DataFrame(schema=ROLLS_SCHEMA)
    lazy = scan(path)
    if root is not None:
        lazy = lazy.filter(pl.col("root") == root)
    return lazy.sort(*SERIES_COLUMNS, "bars_version", "roll_session").collect()
