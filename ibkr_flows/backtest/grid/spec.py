"""What a parameter grid is: a strategy, the values each parameter takes and the metric that picks a winner.

A spec is validated when it is built, before any bars are read, so a typo in a flow parameter fails in
milliseconds rather than after the data load. Combinations the strategy itself rejects (for crossovers fast_period
must be below slow_period) are dropped and counted rather than errors: a rectangular grid over two periods always
contains some, and the count belongs in the report because it changes how many trials the winner was chosen from.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_type_hints

from ibkr_flows.backtest.errors import BacktestError, StrategyParameterError
from ibkr_flows.backtest.strategies import Strategy, get_strategy, strategy_params

ParamValue = int | float
Combination = dict[str, ParamValue]
ValuesInput = range | Sequence[ParamValue] | Mapping[str, ParamValue] | ParamValue
"""A `range`, a list of values, one value, or {"start", "stop", "step"} with `stop` INCLUDED (JSON has no range,
and "5 to 50 step 5" means 50 is in)."""

RANK_METRICS = ("sharpe", "sortino", "calmar", "total_return_pct", "annualized_return_pct", "final_equity",
                "profit_factor", "expectancy", "win_rate_pct", "avg_trade_pct", "max_drawdown_pct")
"""Result columns where higher is better (drawdowns are negative), so "best" is always the largest value."""


class GridSpecError(BacktestError, ValueError):
    """A grid that cannot be run as written."""


class UnknownParameterError(GridSpecError):
    def __init__(self, strategy: str, unknown: list[str], known: list[str]) -> None:
        super().__init__(f"{strategy} has no parameter(s) {', '.join(unknown)}; "
                         f"known parameters: {', '.join(known) or 'none'}")
        self.unknown = unknown
        self.known = known


class UnknownMetricError(GridSpecError):
    def __init__(self, metric: str) -> None:
        super().__init__(f"cannot rank by {metric!r}; rank metrics: {', '.join(RANK_METRICS)}")
        self.metric = metric


class EmptyGridError(GridSpecError):
    """No combination left to evaluate: an axis without values, or every combination failed validation."""


@dataclass(frozen=True, eq=False)
class GridSpec:
    """`params` maps each swept parameter to its values; parameters left out keep the strategy's defaults."""

    strategy: str
    params: Mapping[str, ValuesInput]
    rank_by: str = "sharpe"
    axes: dict[str, tuple[ParamValue, ...]] = field(init=False)
    """Each swept parameter's values, sorted and de-duplicated: the grid's coordinates."""
    dropped: int = field(init=False)
    """Combinations the strategy's validation rejected."""
    _strategies: dict[tuple[ParamValue, ...], Strategy] = field(init=False, repr=False)
    """The valid combinations' strategies, keyed by parameter values in axis order."""

    def __post_init__(self) -> None:
        cls = get_strategy(self.strategy)
        if self.rank_by not in RANK_METRICS:
            raise UnknownMetricError(self.rank_by)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise UnknownParameterError(self.strategy, unknown, known)
        axes = {name: _axis(cls, name, values) for name, values in self.params.items()}
        strategies: dict[tuple[ParamValue, ...], Strategy] = {}
        reasons: list[str] = []
        for values in itertools.product(*axes.values()):
            try:
                strategies[values] = strategy_params(self.strategy, dict(zip(axes, values, strict=True)))
            except StrategyParameterError as error:
                reasons.append(str(error))
        if not strategies:
            example = f", e.g. {reasons[0]}" if reasons else ""
            raise EmptyGridError(f"{self.strategy} grid is empty: all {len(reasons)} combinations failed "
                                 f"validation{example}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "dropped", len(reasons))
        object.__setattr__(self, "_strategies", strategies)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GridSpec:
        """From JSON-like input: {"strategy": ..., "params": {...}, "rank_by": ... (optional)}."""
        unknown = sorted(set(data) - {"strategy", "params", "rank_by"})
        if unknown or "strategy" not in data or "params" not in data:
            raise GridSpecError(f"a grid needs 'strategy' and 'params' (and optionally 'rank_by'), got keys "
                                f"{', '.join(sorted(data)) or 'none'}")
        return cls(**data)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return len(self._strategies)

    @property
    def max_warmup_bars(self) -> int:
        """The longest warm-up among the combinations: every bar slice evaluated must be longer than this."""
        return max(strategy.warmup_bars for strategy in self._strategies.values())

    def combinations(self) -> list[Combination]:
        """Every valid combination, in axis order (the last parameter varies fastest)."""
        return [dict(zip(self.axes, values, strict=True)) for values in self._strategies]

    def strategy_for(self, combination: Combination) -> Strategy:
        """The validated strategy of one of this grid's combinations."""
        try:
            return self._strategies[tuple(combination[name] for name in self.axes)]
        except KeyError:
            raise GridSpecError(f"{combination} is not a combination of this {self.strategy} grid") from None

    def chunks(self, n_chunks: int | None = None, *, chunk_size: int | None = None) -> list[list[Combination]]:
        """Contiguous batches, sizes differing by at most one, each combination in exactly one; give either the
        number of batches (capped at the grid size, so none is empty) or the batch size. Contiguous keeps the
        periods a crossover batch needs few, since each batch computes its own moving averages."""
        if (n_chunks is None) == (chunk_size is None):
            raise GridSpecError("give exactly one of n_chunks and chunk_size")
        given = chunk_size if n_chunks is None else n_chunks
        if given < 1:
            raise GridSpecError(f"{'chunk_size' if n_chunks is None else 'n_chunks'} must be at least 1, got {given}")
        count = min(math.ceil(self.size / given) if n_chunks is None else n_chunks, self.size)
        edges = [self.size * i // count for i in range(count + 1)]
        everything = self.combinations()
        return [everything[start:stop] for start, stop in itertools.pairwise(edges)]


def _axis(cls: type[Strategy], name: str, values: ValuesInput) -> tuple[ParamValue, ...]:
    """One parameter's values, sorted and unique, type-checked against the strategy's field so that a float for
    an integer period is an error here rather than every combination being silently dropped."""
    if isinstance(values, Mapping):
        expanded = _inclusive_range(name, values)
    elif isinstance(values, range | Sequence) and not isinstance(values, str):
        expanded = list(values)
    else:
        expanded = [values]  # type: ignore[list-item]
    if not expanded:
        raise EmptyGridError(f"{cls.name}: {name} has no values")
    expected = get_type_hints(cls)[name]
    accepted = (int, float) if expected is float else (expected,)
    for value in expanded:
        if isinstance(value, bool) or not isinstance(value, accepted):
            kind = "integers" if expected is int else "numbers"
            raise GridSpecError(f"{cls.name}: {name} values must be {kind}, got {value!r}")
    return tuple(sorted(set(expanded)))


def _inclusive_range(name: str, spec: Mapping[str, ParamValue]) -> list[ParamValue]:
    if set(spec) != {"start", "stop", "step"}:
        raise GridSpecError(f"{name}: a range needs exactly the keys start, stop, step; got {', '.join(sorted(spec))}")
    start, stop, step = spec["start"], spec["stop"], spec["step"]
    if not step > 0:
        raise GridSpecError(f"{name}: step must be positive, got {step}")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return list(range(int(start), int(stop) + 1, int(step)))
    count = math.floor((stop - start) / step + 1e-9) + 1  # tolerate 0.1-style steps that overshoot by an ulp
    return [start + i * step for i in range(max(count, 0))]
