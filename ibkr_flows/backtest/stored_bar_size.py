"""Which bar size a backtest reads when the user names none: the one that is stored.

A default of "1 min" found nothing for a user who had ingested daily bars and ended with "no bars"; the stored bars
know what there is (`storage.bars_catalog.stored_bar_sizes`), so the choice is made from them: one stored size is
used (and said), several are an error listing them, none leaves the request's default so the missing-bars error can
say how to ingest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ibkr_flows.backtest.continuous_bars import is_continuous, series_key
from ibkr_flows.backtest.errors import BacktestError
from storage.bars_catalog import stored_bar_sizes
from storage.continuous_table import stored_bar_sizes as continuous_bar_sizes
from storage.location import TableLocation


class AmbiguousBarSizeError(BacktestError):
    """Several bar sizes are stored for the series asked for and none was named; the message lists them."""

    def __init__(self, what: str, sizes: Sequence[str]) -> None:
        self.sizes = list(sizes)
        choices = ", ".join(f"--bar-size '{size}'" for size in self.sizes)
        super().__init__(f"{what} is stored in {len(self.sizes)} bar sizes ({', '.join(self.sizes)}); pick one with "
                         f"{choices}")


@dataclass(frozen=True)
class BarSizeChoice:
    """The bar size a run reads and where it came from: "given" (--bar-size) or "stored" (the only one stored)."""

    bar_size: str | None
    """None: nothing is stored for the series, the request keeps its default (and fails listing the ingest)."""
    source: str

    def describe(self, what: str) -> str:
        if self.source == "given":
            return f"bar size {self.bar_size} (given)"
        return f"bar size {self.bar_size}: the only one stored for {what}"


def choose_bar_size(location: TableLocation, given: str | None, symbols: Sequence[str], what_to_show: str,
                    use_rth: bool, roll: str | None = None, roll_adjust: str = "none") -> BarSizeChoice:
    """`given` when the user named one; otherwise the single stored size, `AmbiguousBarSizeError` for several.
    Continuous futures' sizes are those of their series in the continuous table (`roll`, `roll_adjust`: which)."""
    if given is not None:
        return BarSizeChoice(given, "given")
    if symbols and all(is_continuous(s) for s in symbols):
        sizes = sorted({size for s in symbols for size in continuous_bar_sizes(
            location, series_key(s, "", what_to_show, use_rth, roll, roll_adjust))})
    else:
        sizes = stored_bar_sizes(location, list(symbols), what_to_show, use_rth)
    if len(sizes) > 1:
        raise AmbiguousBarSizeError(series_text(symbols, what_to_show, use_rth), sizes)
    return BarSizeChoice(sizes[0] if sizes else None, "stored")


def series_text(symbols: Sequence[str], what_to_show: str, use_rth: bool) -> str:
    return f"{', '.join(symbols)} {what_to_show} {'RTH' if use_rth else 'ETH'}"
