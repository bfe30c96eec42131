"""Recognising a split or a dividend from prices alone: the stored bars of a series against the same bars fetched
again (the overlap re-fetch), and overnight jumps inside one batch.

IB serves TRADES split-adjusted and ADJUSTED_LAST split- and dividend-adjusted *as of the request*. A bar stored
before a split therefore comes back, re-fetched after it, divided by the split ratio; under ADJUSTED_LAST a bar
stored before an ex-date comes back multiplied by (1 - dividend / previous close). So over the overlap the ratio
stored / fresh is one constant on the bars before the event and 1 on the bars after it. Anything else (ratios that
drift, several levels, a constant that is neither a split ratio nor a plausible dividend) is not an adjustment
this module can explain: it says so with a typed result rather than guessing, and nothing gets re-scaled.

Pure functions on polars frames (`ts` and the price columns); the ingestion stages call them and act on the
result (`storage.bars_rescale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction

import polars as pl

from ibkr_flows.ib.calendars import NYSE, calendar_named
from ibkr_flows.ib.historical import bar_step
from storage.corporate_actions_table import ActionKind

PRICE_COLUMNS = ("open", "high", "low", "close")
COMMON_SPLIT_RATIOS: tuple[Fraction, ...] = tuple(sorted({
    *(Fraction(n) for n in (2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 25, 30, 40, 50, 100)),
    Fraction(3, 2), Fraction(4, 3), Fraction(5, 4), Fraction(5, 2),
    *(Fraction(1, n) for n in (2, 3, 4, 5, 8, 10, 15, 20, 25, 30, 50, 100)),
    Fraction(2, 3),
}))
"""Forward splits (new shares per old: 4 = 4:1) and reverse splits (1/10 = 1:10) seen in practice; a measured
ratio is snapped to the nearest one within `SNAP_TOLERANCE`."""
SNAP_TOLERANCE = 2e-3
"""Relative distance from a common ratio still read as that split (IB rounds adjusted prices)."""
SAME_SCALE_TOLERANCE = 2e-4
"""|stored / fresh - 1| up to this is the same scale (a revised print of a cent or two at $100); a dividend's
factor is further from 1 than this for every payer in practice (AAPL's, the smallest, ~1e-3)."""
CONSTANT_TOLERANCE = 1e-4
"""How far a bar's ratio may stray from the median ratio and still be the same constant (rounding of adjusted
prices); more than this is a drifting ratio, not one event."""
JUMP_TOLERANCE = 0.05
"""An overnight jump within this of a split ratio is reported: the market moves overnight too (an open a few
percent from the previous close is common), so a batch's jump cannot be held to `SNAP_TOLERANCE`."""
MAX_DIVIDEND_FRACTION = 0.1
"""A dividend larger than this share of the price is not a regular one: read as unexplained, not guessed."""


@dataclass(frozen=True)
class AdjustmentEvent:
    """A split or dividend between the stored bars and the fresh ones. Stored prices before `first_new_bar`
    divided by `factor` are on the fresh scale (4.0 for a 4:1 split; just above 1 for a dividend)."""

    kind: ActionKind
    factor: float
    last_old_bar: datetime
    """The last overlapping bar still on the old scale."""
    first_new_bar: datetime | None
    """The first fresh bar after it: the effective session (None when the fresh bars end at `last_old_bar`)."""
    effective_date: date | None
    """The session date of `first_new_bar`: the split's first day on the new scale, a dividend's ex-date."""
    bars_compared: int
    measured_ratio: float
    """The median stored / fresh ratio before snapping to `factor`."""


@dataclass(frozen=True)
class ScalesAgree:
    """Stored and fresh bars are on one scale over the whole overlap: nothing happened."""

    bars_compared: int


@dataclass(frozen=True)
class UnexplainedDifference:
    """The overlap differs in a way that is not one split or dividend: left alone and reported."""

    reason: str
    bars_compared: int


OverlapVerdict = AdjustmentEvent | ScalesAgree | UnexplainedDifference


def session_of(ts: datetime, bar_size: str, calendar: str = NYSE) -> date:
    """The session a bar belongs to: dated bars are stamped 00:00 UTC of their date; an intraday bar's is its
    session on the instrument's calendar (`ib.calendars`: the exchange's date, a Globex evening's next day)."""
    return ts.date() if bar_step(bar_size) >= timedelta(days=1) else calendar_named(calendar).session_day(ts)


def snap_split_ratio(ratio: float, tolerance: float = SNAP_TOLERANCE) -> Fraction | None:
    """The common split ratio within `tolerance` (relative) of `ratio`, or None."""
    nearest = min(COMMON_SPLIT_RATIOS, key=lambda r: abs(ratio / float(r) - 1))
    return nearest if abs(ratio / float(nearest) - 1) <= tolerance else None


def compare_overlap(stored: pl.DataFrame, fresh: pl.DataFrame, *, bar_size: str, dividend_adjusted: bool,
                    calendar: str = NYSE) -> OverlapVerdict:
    """The verdict on one series' stored bars against the same range fetched again. `dividend_adjusted`: the
    series is ADJUSTED_LAST (only there can a dividend move stored prices; a dividend-sized constant in TRADES
    is unexplained). `calendar`: the instrument's session calendar, which dates the event's session."""
    joined = stored.select("ts", *PRICE_COLUMNS).join(
        fresh.select("ts", *PRICE_COLUMNS), on="ts", how="inner", suffix="_fresh").sort("ts")
    if joined.is_empty():
        return UnexplainedDifference("no bar of the fresh fetch overlaps the stored ones", 0)
    ratios = joined.select(
        "ts", *[(pl.col(c) / pl.col(f"{c}_fresh")).alias(c) for c in PRICE_COLUMNS])
    same = pl.all_horizontal([(pl.col(c) - 1).abs() <= SAME_SCALE_TOLERANCE for c in PRICE_COLUMNS])
    flagged = ratios.with_columns(same.alias("same"))
    differing = flagged.filter(~pl.col("same"))
    if differing.is_empty():
        return ScalesAgree(joined.height)
    last_old = differing["ts"].max()
    if not flagged.filter(pl.col("ts") < last_old)["same"].not_().all():
        return UnexplainedDifference("bars on the same scale lie between bars that differ: not one event",
                                     joined.height)
    values = differing.select(pl.concat_list(PRICE_COLUMNS).alias("r")).explode("r")["r"]
    median = float(values.median())  # type: ignore[arg-type]
    spread = float(((values / median) - 1).abs().max())  # type: ignore[arg-type]
    if spread > CONSTANT_TOLERANCE:
        return UnexplainedDifference(f"stored / fresh ratios vary by {spread:.2e} around {median:.6g}: not one "
                                     f"constant", joined.height)
    split = snap_split_ratio(median)
    if split is not None:
        kind, factor = ActionKind.SPLIT, float(split)
    elif dividend_adjusted and 1.0 < median <= 1.0 / (1.0 - MAX_DIVIDEND_FRACTION):
        kind, factor = ActionKind.DIVIDEND, median
    else:
        return UnexplainedDifference(f"constant stored / fresh ratio {median:.6g} is neither a common split ratio"
                                     + (" nor a dividend" if dividend_adjusted else ""), joined.height)
    later = fresh.filter(pl.col("ts") > last_old)["ts"]
    first_new = later.min() if later.len() else None
    return AdjustmentEvent(kind=kind, factor=factor, last_old_bar=last_old,  # type: ignore[arg-type]
                           first_new_bar=first_new,  # type: ignore[arg-type]
                           effective_date=session_of(first_new, bar_size, calendar) if first_new else None,  # type: ignore[arg-type]
                           bars_compared=joined.height, measured_ratio=median)


@dataclass(frozen=True)
class SplitLikeJump:
    """A quality finding: between two sessions of one batch the price moved by a common split ratio, which no
    market does overnight; the batch may mix scales (a split IB had not yet applied to part of it)."""

    ts: datetime
    """The first bar after the jump."""
    previous_close: float
    open: float
    ratio: Fraction

    def describe(self) -> str:
        return (f"{self.ts:%Y-%m-%d}: open {self.open:g} after close {self.previous_close:g}, a {self.ratio} jump "
                f"(a split ratio): re-fetch the series' history so it is on one scale")


def split_like_jumps(bars: pl.DataFrame, *, bar_size: str, calendar: str = NYSE) -> list[SplitLikeJump]:
    """Overnight moves (previous session's last close to the next session's first open) of a common split ratio in
    one series' bars, sessions on the instrument's `calendar`. Intraday moves are not looked at: a split takes
    effect between sessions."""
    ordered = bars.sort("ts").select("ts", "open", "close")
    findings = []
    previous: tuple[date, float] | None = None
    for ts, open_, close in ordered.iter_rows():
        session = session_of(ts, bar_size, calendar)
        if previous is not None and session != previous[0] and open_ > 0:
            ratio = snap_split_ratio(previous[1] / open_, JUMP_TOLERANCE)
            if ratio is not None:
                findings.append(SplitLikeJump(ts, previous[1], open_, ratio))
        previous = (session, close)
    return findings
