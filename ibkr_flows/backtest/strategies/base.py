"""The strategy contract: typed, validated parameters in, target positions per bar out.

A strategy is a frozen dataclass whose fields are its parameters, so a parameter set is hashable (a grid can use it
as a key), cannot change after validation, and documents its own types and defaults.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Self, get_type_hints

import numpy as np
import polars as pl

from ibkr_flows.backtest.errors import StrategyParameterError

_TYPE_NAMES = {int: "an integer", float: "a number"}

Entry = Literal["state", "cross"]
"""When a rule's condition takes a position: "state", on every bar where it holds (long while fast > slow, from the
first bar both averages exist); "cross", only on the bar where it starts to hold after a bar where the opposite was
true (backtesting.py's `crossover()`, vectorbt's `crossed_above`): a condition already true when the indicators
appear waits for the next crossing."""


@dataclass(frozen=True)
class Strategy(ABC):
    """Base for every strategy; subclasses add parameter fields, `validate`, `warmup_bars` and `target`.

    Positions are targets, not orders: +1 long, 0 flat, -1 short (flat in long-only mode), decided on a bar's close.
    Turning targets into fills is the engine's job, so a strategy cannot peek at the bar it would trade on.
    """

    name: ClassVar[str]
    """Registry key, the name users type."""
    entries: ClassVar[tuple[Entry, ...]] = ("state",)
    """The entry conventions `target` knows; a strategy listing "cross" takes the entry as `target`'s argument."""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Self:
        """Build from user input (CLI, config file); unknown keys are errors, not silently ignored typos."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise StrategyParameterError(f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; "
                                         f"known parameters: {', '.join(known) or 'none'}")
        return cls(**params)

    def validate(self) -> None:  # noqa: B027 - an optional hook: parameterless strategies have no rules
        """Raise `StrategyParameterError` naming the parameters that cannot work together; runs on construction."""

    @property
    @abstractmethod
    def warmup_bars(self) -> int:
        """Leading bars whose target is always flat because the indicators are not defined yet."""

    @abstractmethod
    def target(self) -> pl.Expr:
        """Target position as an expression over the bar columns; null where undefined (treated as flat). A strategy
        whose `entries` include "cross" defines `target(self, entry: Entry = "state")` and builds its conditions
        with `above(a, b, entry)`."""

    def signals(self, bars: pl.DataFrame, entry: Entry = "state") -> pl.Series:
        """Target position per bar (Int8 in {-1, 0, 1}), known at that bar's close."""
        expression = self.target() if entry == "state" else self.target(entry)  # type: ignore[call-arg]
        return bars.with_columns(expression.fill_null(0).cast(pl.Int8).alias("signal")).get_column("signal")

    def check_entry(self, entry: str) -> None:
        """Raise `StrategyParameterError` for an entry convention this strategy does not know."""
        if entry not in self.entries:
            raise StrategyParameterError(f"{self.name} has no entry {entry!r}; it knows: {', '.join(self.entries)}")

    @classmethod
    def grid_targets(cls, bars: pl.DataFrame, strategies: Sequence[Self], out: np.ndarray, entry: Entry = "state"
                     ) -> None:
        """Write `strategies[k].signals(bars, entry)` into row k of `out` (int8, len(strategies) x bars.height), for
        each k.

        This is how a parameter grid gets a strategy's signals, and why adding a strategy never touches the kernel:
        the strategy declares its signal as data, one -1/0/1 target per bar and combination, and the grid kernel
        (`grid.kernel.targets_grid`) turns each row into fills, costs and metrics exactly as the engine does,
        whatever rule wrote it. A new strategy therefore runs compiled with `target` alone; this default evaluates
        `signals` once per combination, which is right by construction but repeats the indicator work that
        combinations share (and polars rolling and EWM expressions take ~0.1-0.4 s per million bars). Override it to
        compute each distinct indicator once for all `strategies` (they are this class, with different parameters)
        and to decide the targets in compiled code: `grid.indicators` has numba twins of the built-in indicators
        and of `hold`'s decision rule (both entry conventions).

        The contract is bit-for-bit equality with `signals`, row by row: the same -1/0/1 at every bar, hence the
        same fills. Indicator values must therefore be the expression's own (a compiled twin must repeat its
        floating-point operations in order; a sum in another order can flip a comparison); the tests check every
        built-in override against `signals` on random series and every grid row against `run_backtest`. The grid
        calls it from several threads at once, each with its own contiguous part of the combinations and of `out`.
        """
        for row, strategy in zip(out, strategies, strict=True):
            row[:] = strategy.signals(bars, entry).to_numpy()

    def _check_types(self) -> None:
        hints = get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = hints[field.name]
            accepted = (int, float) if expected is float else (expected,)
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise StrategyParameterError(
                    f"{self.name}: {field.name} must be {_TYPE_NAMES.get(expected, expected.__name__)}, got {value!r}")
            if expected is float:  # so that lower=30 and lower=30.0 print and serialize the same
                object.__setattr__(self, field.name, float(value))


def require_positive(strategy: Strategy, *names: str) -> None:
    for name in names:
        value = getattr(strategy, name)
        if value <= 0:
            raise StrategyParameterError(f"{strategy.name}: {name} must be positive, got {value}")


def require_smaller(strategy: Strategy, smaller: str, larger: str) -> None:
    low, high = getattr(strategy, smaller), getattr(strategy, larger)
    if low >= high:
        raise StrategyParameterError(
            f"{strategy.name}: {smaller} ({low}) must be smaller than {larger} ({high})")


def require_between(strategy: Strategy, name: str, low: float, high: float) -> None:
    value = getattr(strategy, name)
    if not low <= value <= high:
        raise StrategyParameterError(f"{strategy.name}: {name} must be within {low}..{high}, got {value}")


def trend_target(fast: pl.Expr, slow: pl.Expr, entry: Entry = "state") -> pl.Expr:
    """Long while the fast average is above the slow one, short while below; a tie keeps the previous side. With
    entry "cross", the first side waits for the first crossing.

    Ties keep the side (rather than going flat) so that integer-priced data does not churn in and out on equal
    averages; a grid kernel must apply the same rule to reproduce trades.
    """
    return hold(pl.when(above(fast, slow, entry)).then(1).when(above(slow, fast, entry)).then(-1))


def above(a: pl.Expr, b: pl.Expr, entry: Entry) -> pl.Expr:
    """a > b: on every bar where it holds ("state"), or only where a crosses above b ("cross"): a > b on this bar,
    a < b on the last bar before it where the two differed (ties are skipped and nulls decide nothing, as in
    vectorbt's `crossed_above`; backtesting.py's `crossover()` also misses a crossing through an exact tie)."""
    if entry == "state":
        return a > b
    side = pl.when(a > b).then(1).when(a < b).then(-1)  # null on a tie or a null
    return (side == 1) & (side.forward_fill().shift(1) == -1)


def hold(decision: pl.Expr) -> pl.Expr:
    """Carry the last decided target forward over bars where `decision` (a when/then chain without otherwise, so
    null where no branch matched) made no new decision."""
    return decision.forward_fill()


@dataclass(frozen=True)
class AverageCrossover(Strategy):
    """Long while the fast average of closes is above the slow one, short (flat in long-only mode) while below.
    Subclasses choose the average."""

    entries: ClassVar[tuple[Entry, ...]] = ("state", "cross")
    fast_period: int
    slow_period: int

    @staticmethod
    @abstractmethod
    def average(column: str, period: int) -> pl.Expr:
        """The moving average of `column` over `period` bars, null until it has `period` values."""

    @staticmethod
    def average_rows(values: np.ndarray, periods: Sequence[int]) -> np.ndarray | None:
        """`average` of a numpy array for each period, one row each, bit for bit (NaN for null); None where only
        the expression exists. The grid evaluator uses it to build many averages of a long series straight into
        one array, without a polars frame and its copies in between."""
        return None

    def validate(self) -> None:
        require_positive(self, "fast_period", "slow_period")
        require_smaller(self, "fast_period", "slow_period")

    @property
    def warmup_bars(self) -> int:
        return self.slow_period - 1

    def target(self, entry: Entry = "state") -> pl.Expr:
        return trend_target(self.average("close", self.fast_period), self.average("close", self.slow_period), entry)
