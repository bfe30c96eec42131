"""The splits and cash dividends of the simulator's symbols, on their real dates, and the factors that restate
today's (fully adjusted) generated prices as IB would have served them on an earlier "as of" day.

The generator's price levels (`price_anchors.json`) are real closes adjusted for every split in `SPLITS` and for
no dividend, which is exactly what IB serves today as TRADES. Restating for an earlier day multiplies the bars
before each later split back onto the old scale (prices times the split ratio, volume divided by it); ADJUSTED_LAST
also scales the bars before each ex-date by (1 - dividend / previous close), the usual total-return factor.
Splits before 2015 are not listed: the generator's history is always on their new scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np

from storage.corporate_actions_table import ActionKind


@dataclass(frozen=True)
class CorporateAction:
    """One event of one symbol. A split's `effective` is its first session on the new scale and its `value` the
    new shares per old share (4.0 for 4:1); a dividend's `effective` is its ex-date and its `value` the cash per
    share on today's split-adjusted scale (so its ratio to a generated close needs no split correction)."""

    symbol: str
    kind: ActionKind
    effective: date
    value: float


SPLITS: tuple[CorporateAction, ...] = (
    CorporateAction("AAPL", ActionKind.SPLIT, date(2020, 8, 31), 4.0),
    CorporateAction("NVDA", ActionKind.SPLIT, date(2021, 7, 20), 4.0),
    CorporateAction("NVDA", ActionKind.SPLIT, date(2024, 6, 10), 10.0),
)


@dataclass(frozen=True)
class QuarterlyDividends:
    """A regular payer: its ex-dates as (month, day) each year, the quarter (0..3) its yearly raise takes
    effect, and per year the amount before and from the raise (split-adjusted to today, rounded to real
    declarations: AAPL's 0.82 of 2020 before its 4:1 split is 0.205 here)."""

    ex_days: tuple[tuple[int, int], ...]
    raise_quarter: int
    amounts: dict[int, tuple[float, float]]


DIVIDEND_PAYERS: dict[str, QuarterlyDividends] = {
    "AAPL": QuarterlyDividends(((2, 7), (5, 10), (8, 7), (11, 6)), 1, {
        2015: (0.1175, 0.13), 2016: (0.13, 0.1425), 2017: (0.1425, 0.1575), 2018: (0.1575, 0.1825),
        2019: (0.1825, 0.1925), 2020: (0.1925, 0.205), 2021: (0.205, 0.22), 2022: (0.22, 0.23),
        2023: (0.23, 0.24), 2024: (0.24, 0.25), 2025: (0.25, 0.26), 2026: (0.26, 0.27),
    }),
    "MSFT": QuarterlyDividends(((2, 18), (5, 18), (8, 17), (11, 17)), 3, {
        2015: (0.31, 0.36), 2016: (0.36, 0.39), 2017: (0.39, 0.42), 2018: (0.42, 0.46), 2019: (0.46, 0.51),
        2020: (0.51, 0.56), 2021: (0.56, 0.62), 2022: (0.62, 0.68), 2023: (0.68, 0.75), 2024: (0.75, 0.83),
        2025: (0.83, 0.91), 2026: (0.91, 1.00),
    }),
    "IBM": QuarterlyDividends(((2, 8), (5, 8), (8, 8), (11, 8)), 1, {
        2015: (1.10, 1.30), 2016: (1.30, 1.40), 2017: (1.40, 1.50), 2018: (1.50, 1.57), 2019: (1.57, 1.62),
        2020: (1.62, 1.63), 2021: (1.63, 1.64), 2022: (1.64, 1.65), 2023: (1.65, 1.66), 2024: (1.66, 1.67),
        2025: (1.67, 1.68), 2026: (1.68, 1.69),
    }),
}


def _dividends() -> tuple[CorporateAction, ...]:
    return tuple(
        CorporateAction(symbol, ActionKind.DIVIDEND, date(year, month, day), amounts[quarter >= payer.raise_quarter])
        for symbol, payer in DIVIDEND_PAYERS.items()
        for year, amounts in payer.amounts.items()
        for quarter, (month, day) in enumerate(payer.ex_days)
    )


DIVIDENDS: tuple[CorporateAction, ...] = _dividends()


def actions_of(symbol: str, kind: ActionKind | None = None) -> list[CorporateAction]:
    """The symbol's events (of one kind, if given), oldest first."""
    return sorted((a for a in SPLITS + DIVIDENDS if a.symbol == symbol and kind in (None, a.kind)),
                  key=lambda a: a.effective)


def split_multipliers(symbol: str, days: np.ndarray, as_of: date) -> np.ndarray:
    """Per bar day (datetime64[D]): the product of the ratios of the splits still to come on `as_of` and after
    that day, i.e. what today's prices must be multiplied by (and volumes divided by) to show them as of then."""
    factors = np.ones(len(days))
    for split in actions_of(symbol, ActionKind.SPLIT):
        if split.effective > as_of:
            factors[days < np.datetime64(split.effective, "D")] *= split.value
    return factors


def dividend_multipliers(symbol: str, days: np.ndarray, as_of: date,
                         close_before: Callable[[date], float]) -> np.ndarray:
    """Per bar day: the product of (1 - dividend / close of the session before its ex-date) over the dividends
    with an ex-date on or before `as_of` and after that day (ADJUSTED_LAST's dividend adjustment as of then).
    `close_before(ex_date)` gives that close on today's split-adjusted scale, the dividends' own scale."""
    factors = np.ones(len(days))
    for dividend in actions_of(symbol, ActionKind.DIVIDEND):
        if dividend.effective <= as_of:
            previous_close = close_before(dividend.effective)
            if np.isfinite(previous_close) and previous_close > dividend.value:
                factors[days < np.datetime64(dividend.effective, "D")] *= 1.0 - dividend.value / previous_close
    return factors
