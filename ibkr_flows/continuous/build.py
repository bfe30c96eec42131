"""Build a continuous futures series from stored dated contracts, and store it with its rolls.

A build reads one bars-table version (`contracts.contract_bars`), rolls under the spec's rule (`schedule`),
measures each roll's price gap at the last bar both contracts share before the roll session, keeps on every bar
the contract held then (`contract`), and back-adjusts the earlier contracts' prices so the series has no jump at
the rolls. Everything it reads is pinned to that version (and the expiries, which never change), so building
again at the stored `bars_version` gives the same frame, whatever was ingested since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from ibkr_flows.continuous.contracts import ContinuousSpec, ContractBars, contract_bars
from ibkr_flows.continuous.errors import NoOverlapError
from ibkr_flows.continuous.rules import Adjustment
from ibkr_flows.continuous.schedule import Roll, roll_schedule
from storage.continuous_table import replace_series
from storage.location import TableLocation
from storage.rolls_table import replace_rolls

ADJUSTED_PRICES = ("open", "high", "low", "close")
SERIES_COLUMNS = ["ts", "session", "open", "high", "low", "close", "volume", "wap", "bar_count", "contract",
                  "instrument_id"]
ROLL_COLUMNS = ["roll_session", "from_con_id", "to_con_id", "from_instrument", "to_instrument", "gap_ts",
                "from_close", "to_close", "price_gap", "price_ratio", "reason"]


@dataclass(frozen=True)
class ContinuousBuild:
    spec: ContinuousSpec
    bars_version: int
    """The bars-table version every input was read at."""
    series: pl.DataFrame
    """`SERIES_COLUMNS`, oldest bar first: one bar per timestamp, from the contract held in its session."""
    rolls: pl.DataFrame
    """`ROLL_COLUMNS`, oldest roll first."""


def build_continuous(location: TableLocation, spec: ContinuousSpec, *, version: int | None = None
                     ) -> ContinuousBuild:
    """The continuous series of `spec` from the bars table at `version` (default: the latest)."""
    inputs = contract_bars(location, spec, version)
    rolls = roll_schedule(inputs, spec.rule, spec.calendar)
    measured = _measure_gaps(inputs, rolls)
    held = _held_bars(inputs, rolls)
    series = _back_adjust(held, measured, spec.adjustment).select(SERIES_COLUMNS).sort("ts")
    return ContinuousBuild(spec, inputs.bars_version, series, measured)


def store_build(location: TableLocation, build: ContinuousBuild, *, built_at: datetime | None = None
                ) -> tuple[int, int]:
    """Store the series (replacing the spec's stored series) and its rolls (replacing those of the same bars
    version): (continuous table version, rolls table version; -1 when there were no rolls to store)."""
    stamp = built_at or datetime.now(UTC)
    provenance = {**build.spec.series_key(), "bars_version": build.bars_version, "built_at": stamp}
    columns = [pl.lit(value).alias(name) for name, value in provenance.items()]
    series_version = replace_series(location, build.series.with_columns(columns))
    rolls_version = replace_rolls(location, build.rolls.with_columns(columns))
    return series_version, rolls_version


def roll_and_store(location: TableLocation, spec: ContinuousSpec, *, version: int | None = None) -> ContinuousBuild:
    build = build_continuous(location, spec, version=version)
    store_build(location, build)
    return build


def _names(inputs: ContractBars) -> dict[int, str]:
    return dict(inputs.contracts.select("con_id", "instrument_id").iter_rows())


def _measure_gaps(inputs: ContractBars, rolls: list[Roll]) -> pl.DataFrame:
    """Each roll's gap: both contracts' closes at the last bar start they share before the roll session."""
    names = _names(inputs)
    rows = []
    for roll in rolls:
        before = inputs.bars.filter(pl.col("session") < roll.roll_session)
        shared = (before.filter(pl.col("con_id") == roll.from_con_id).select("ts", from_close="close")
                  .join(before.filter(pl.col("con_id") == roll.to_con_id).select("ts", to_close="close"), on="ts"))
        if shared.is_empty():
            raise NoOverlapError(names[roll.from_con_id], names[roll.to_con_id], roll.roll_session)
        gap_ts, from_close, to_close = shared.sort("ts").row(-1)
        rows.append({"roll_session": roll.roll_session, "from_con_id": roll.from_con_id,
                     "to_con_id": roll.to_con_id, "from_instrument": names[roll.from_con_id],
                     "to_instrument": names[roll.to_con_id], "gap_ts": gap_ts, "from_close": from_close,
                     "to_close": to_close, "price_gap": to_close - from_close,
                     "price_ratio": to_close / from_close, "reason": roll.reason})
    schema = {"roll_session": pl.Date, "from_con_id": pl.Int64, "to_con_id": pl.Int64, "from_instrument": pl.String,
              "to_instrument": pl.String, "gap_ts": pl.Datetime("us", "UTC"), "from_close": pl.Float64,
              "to_close": pl.Float64, "price_gap": pl.Float64, "price_ratio": pl.Float64, "reason": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _held_bars(inputs: ContractBars, rolls: list[Roll]) -> pl.DataFrame:
    """Each contract's bars on the sessions it is held, with `segment` (its index by expiry) for the
    adjustment."""
    order = inputs.contracts["con_id"].to_list()
    starts = [None, *(r.roll_session for r in rolls)]
    ends = [*(r.roll_session for r in rolls), None]
    segments = pl.DataFrame({"con_id": order, "segment": list(range(len(order))), "held_from": starts,
                             "held_until": ends}, schema={"con_id": pl.Int64, "segment": pl.Int64,
                                                         "held_from": pl.Date, "held_until": pl.Date})
    names = inputs.contracts.select("con_id", "instrument_id")
    return (
        inputs.bars.join(segments, on="con_id").join(names, on="con_id")
        .filter(pl.col("held_from").is_null() | (pl.col("session") >= pl.col("held_from")),
                pl.col("held_until").is_null() | (pl.col("session") < pl.col("held_until")))
        .rename({"con_id": "contract"})
    )


def _back_adjust(held: pl.DataFrame, rolls: pl.DataFrame, adjustment: Adjustment) -> pl.DataFrame:
    """Move each segment's prices by the gaps of every later roll: added (`difference`) or multiplied (`ratio`);
    the last contract's prices stay as traded. A WAP IB leaves empty (-1, quotes) stays empty."""
    if adjustment is Adjustment.NONE or rolls.is_empty():
        return held
    later = len(rolls)
    gaps, ratios = rolls["price_gap"].to_list(), rolls["price_ratio"].to_list()
    offsets, factors = [0.0] * (later + 1), [1.0] * (later + 1)
    for index in range(later - 1, -1, -1):  # segment i moves by rolls i, i+1, ... (those after it)
        offsets[index] = offsets[index + 1] + gaps[index]
        factors[index] = factors[index + 1] * ratios[index]
    moves = pl.DataFrame({"segment": list(range(later + 1)), "offset": offsets, "factor": factors})
    held = held.join(moves, on="segment")

    def moved(column: str) -> pl.Expr:
        price = pl.col(column)
        return price + pl.col("offset") if adjustment is Adjustment.DIFFERENCE else price * pl.col("factor")

    return held.with_columns(
        *(moved(c).alias(c) for c in ADJUSTED_PRICES),
        pl.when(pl.col("wap") > 0).then(moved("wap")).otherwise(pl.col("wap")).alias("wap"),
    )
