"""Grids of every strategy on the compiled path: each strategy's `grid_targets` against its own `signals`, and every
grid row against the single-run engine (the same tests as the crossovers' in test_grid.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher

import ibkr_flows.backtest.grid.evaluate as grid_evaluate
from ibkr_flows.backtest import engine
from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed, IBKRTiered, NoCommission, PercentCommission
from ibkr_flows.backtest.engine import BacktestConfig, Finalize, Mode
from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.grid import GridSpec, builtin, evaluate_grid, indicators, kernel, metric_row, realism, run_grid
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, Sizing
from ibkr_flows.backtest.strategies import STRATEGIES, Strategy, get_strategy, strategy_params
from ibkr_flows.backtest.strategies.base import Entry, require_positive
from tests.test_grid import assert_grid_matches_engine, assert_rows_equal, walk, whole_dollars

GRIDS = {
    "rsi_reversion": {"period": [2, 5, 14, 30], "lower": [20, 27.5, 35.0], "upper": [60.0, 70, 85.0]},
    "donchian_breakout": {"lookback": [1, 2, 3, 7, 16, 40, 120, 1200]},
    "buy_and_hold": {},
}
"""Grids of the strategies that are not crossovers (those are test_grid.py's): periods from degenerate (1, 2) to
longer than a kernel block (a channel of 1200 bars when the tests cut 1000-bar blocks)."""

SETTINGS = [  # (id, bars, mode, commission, sizing, cash, slippage_bps)
    ("fixed-small-cash", walk(2500, 21), "long_only", IBKRFixed(), AllIn(), 2_000.0, 0.0),
    ("nocommission-short", walk(2500, 22), "long_short", NoCommission(), AllIn(), 1e5, 0.0),
    ("fixed-slippage-short", walk(2500, 23, vol=0.02), "long_short", IBKRFixed(), AllIn(), 1e5, 1.5),
    ("tiered-fixed-shares", walk(2500, 24), "long_short", IBKRTiered(), FixedShares(40), 1e4, 2.0),
    ("percent-fraction", walk(2500, 25), "long_only", PercentCommission(0.001), FixedFraction(0.3), 1e5, 0.0),
    ("ties", whole_dollars(2500, 26), "long_short", IBKRFixed(), AllIn(), 1e4, 0.0),
    ("penny-cap", walk(2500, 27, start=0.3, vol=0.02), "long_short", IBKRFixed(), AllIn(), 1_000.0, 0.0),
]


def conventions(strategy: str) -> list[tuple[Entry, Finalize]]:
    """Every (entry, finalize) the strategy knows."""
    return [(e, f) for e in get_strategy(strategy).entries for f in ("close", "open")]


@pytest.mark.parametrize(("strategy", "entry", "finalize"), [(s, *c) for s in sorted(GRIDS) for c in conventions(s)],
                         ids=["-".join((s, *c)) for s in sorted(GRIDS) for c in conventions(s)])
@pytest.mark.parametrize(("bars", "mode", "commission", "sizing", "cash", "slippage_bps"),
                         [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_every_combination_equals_the_engine(strategy: str, entry: Entry, finalize: Finalize, bars: pl.DataFrame,
                                             mode: Mode, commission: CommissionModel, sizing: Sizing, cash: float,
                                             slippage_bps: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every combination against `run_backtest`, under every entry and finalize convention the strategy knows. The
    kernel path must compute them (the grid's own access to the engine is cut), across several bar blocks (the
    built-in rules' indicators and decisions carried from block to block) and threads."""
    spec = GridSpec(strategy, GRIDS[strategy])
    base = BacktestConfig(strategy, cash=cash, commission=commission, slippage_bps=slippage_bps, sizing=sizing,
                          mode=mode, entry=entry, finalize=finalize)
    with monkeypatch.context() as patch:
        patch.setattr(grid_evaluate, "run_backtest", pytest.fail)
        patch.setattr(grid_evaluate, "BLOCK_BARS", 1000)  # 3 blocks for 2500 bars
        patch.setattr(grid_evaluate, "KERNEL_THREADS", 3)
        table = evaluate_grid(bars, "5 mins", spec, base)
    assert table.height == spec.size
    assert (table["exposure_pct"] > 0).mean() >= 0.75  # not a vacuous comparison: most combinations trade
    for combination, row in zip(spec.combinations(), table.iter_rows(named=True), strict=True):
        assert {name: row[name] for name in spec.axes} == combination
        single = engine.run_backtest(bars, "5 mins", grid_evaluate.combination_config(base, combination))
        assert_rows_equal(row, metric_row(single.metrics))


def _combination(name: str, draw: st.DrawFn) -> dict[str, object]:
    """A random valid parameter set of any registered strategy."""
    cls = get_strategy(name)
    if name in ("sma_crossover", "ema_crossover"):
        fast = draw(st.integers(1, 20))
        return {"fast_period": fast, "slow_period": fast + draw(st.integers(1, 30))}
    if cls is get_strategy("rsi_reversion"):
        lower = draw(st.floats(0, 99))
        return {"period": draw(st.integers(1, 40)), "lower": lower, "upper": draw(st.floats(lower + 0.5, 100))}
    if cls is get_strategy("donchian_breakout"):
        return {"lookback": draw(st.integers(1, 300))}  # also longer than the bars
    return {}


@st.composite
def strategy_sets(draw: st.DrawFn) -> tuple[str, list[Strategy], Entry]:
    name = draw(st.sampled_from(sorted(STRATEGIES)))
    combinations = [_combination(name, draw) for _ in range(draw(st.integers(1, 4)))]
    return name, [strategy_params(name, c) for c in combinations], draw(st.sampled_from(get_strategy(name).entries))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chosen=strategy_sets(), n=st.integers(1, 400), seed=st.integers(0, 10_000), ties=st.booleans())
def test_grid_targets_are_the_signals_bit_for_bit(chosen: tuple[str, list[Strategy], Entry], n: int, seed: int,
                                                   ties: bool) -> None:
    """The hook's contract, for every registered strategy and entry: row k is strategies[k].signals(bars, entry),
    at every bar, including series shorter than the indicators' warm-up and flat stretches (RSI's 0 / 0)."""
    name, strategies, entry = chosen
    bars = whole_dollars(n, seed) if ties else walk(n, seed)
    out = np.full((len(strategies), n), 7, dtype=np.int8)
    get_strategy(name).grid_targets(bars, strategies, out, entry)
    for row, strategy in zip(out, strategies, strict=True):
        np.testing.assert_array_equal(row, strategy.signals(bars, entry).to_numpy(), err_msg=f"{strategy} {entry}")


LONG_SETS = {
    "sma_crossover": [{"fast_period": 2, "slow_period": 5}, {"fast_period": 3, "slow_period": 40}],
    "ema_crossover": [{"fast_period": 2, "slow_period": 5}, {"fast_period": 3, "slow_period": 40}],
    "rsi_reversion": [{"period": 5, "lower": 30.0, "upper": 70.0}, {"period": 14, "lower": 20.0, "upper": 80.0}],
    "donchian_breakout": [{"lookback": 3}, {"lookback": 50}, {"lookback": 1500}],
    "buy_and_hold": [{}],
}
"""Parameter sets for series longer than the ranges `grid.indicators` decides at a time."""


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("name", "entry"), [(name, entry) for name in sorted(LONG_SETS)
                                             for entry in get_strategy(name).entries])
def test_grid_targets_carry_their_state_across_ranges(name: str, entry: Entry, ties: bool) -> None:
    """The hooks decide `indicators.RANGE` bars at a time, holding the last decision, the levels' sides and the
    channels' earlier bars from one range to the next: on 3.5 ranges of bars, row k is still the signals."""
    n = indicators.RANGE * 7 // 2
    bars = whole_dollars(n, 41) if ties else walk(n, 41)
    strategies = [strategy_params(name, params) for params in LONG_SETS[name]]
    out = np.full((len(strategies), n), 7, dtype=np.int8)
    get_strategy(name).grid_targets(bars, strategies, out, entry)
    for row, strategy in zip(out, strategies, strict=True):
        np.testing.assert_array_equal(row, strategy.signals(bars, entry).to_numpy(), err_msg=f"{strategy} {entry}")


@dataclass(frozen=True)
class Momentum(Strategy):
    """A strategy the grid code has never heard of: only `target`, no `grid_targets` of its own."""

    name: ClassVar[str] = "test_momentum"
    lookback: int = 10

    def validate(self) -> None:
        require_positive(self, "lookback")

    @property
    def warmup_bars(self) -> int:
        return self.lookback

    def target(self) -> pl.Expr:
        change = pl.col("close") / pl.col("close").shift(self.lookback) - 1
        return pl.when(change > 0.01).then(1).when(change < -0.01).then(-1).otherwise(0)


@dataclass(frozen=True)
class Broken(Momentum):
    name: ClassVar[str] = "test_broken"

    @classmethod
    def grid_targets(cls, bars: pl.DataFrame, strategies: object, out: np.ndarray, entry: str = "state") -> None:
        out[:] = 2


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
def test_a_new_strategy_runs_compiled_through_the_default_hook(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, Momentum.name, Momentum)
    """Its signal rows in groups (at most two rows at a time), over several blocks and threads."""
    bars = walk(1500, 31, vol=0.02)
    spec = GridSpec(Momentum.name, {"lookback": [1, 4, 12, 50, 200]})
    base = BacktestConfig(Momentum.name, mode=mode)
    with monkeypatch.context() as patch:
        patch.setattr(grid_evaluate, "run_backtest", pytest.fail)
        patch.setattr(grid_evaluate, "BLOCK_BARS", 600)
        patch.setattr(grid_evaluate, "TARGETS_BYTES", 1504 * 2)
        patch.setattr(grid_evaluate, "KERNEL_THREADS", 3)
        table = evaluate_grid(bars, "5 mins", spec, base)
    assert table["trades"].min() > 0
    assert_grid_matches_engine(table, bars, spec, base)


def test_a_hook_writing_other_values_than_signals_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, Broken.name, Broken)
    with pytest.raises(BacktestError, match=r"Broken.grid_targets must write signals in \{-1, 0, 1\}"):
        evaluate_grid(walk(100, 0), "5 mins", GridSpec(Broken.name, {"lookback": [3]}))


def test_chunked_evaluation_is_the_whole_grid_to_the_last_bit() -> None:
    """However a flow cuts the grid, each chunk computes its own indicators and the rows are the same."""
    bars = walk(5000, 32)
    spec = GridSpec("rsi_reversion", GRIDS["rsi_reversion"])
    base = BacktestConfig("rsi_reversion", slippage_bps=1.0)

    def chunked(part: pl.DataFrame) -> pl.DataFrame:
        return pl.concat([evaluate_grid(part, "5 mins", spec, base, chunk) for chunk in spec.chunks(5)][::-1])

    whole = run_grid(bars, "5 mins", spec, base, holdout=0.3)
    split = run_grid(bars, "5 mins", spec, base, holdout=0.3, evaluate=chunked)
    assert split.results.equals(whole.results)
    assert (split.best_params, split.out_of_sample) == (whole.best_params, whole.out_of_sample)


def _compiled_signatures() -> dict[str, int]:
    """How many type signatures each of the grid's numba functions has compiled in this process."""
    return {f"{module.__name__}.{name}": len(function.signatures)
            for module in (kernel, builtin, indicators, realism)
            for name, function in vars(module).items() if isinstance(function, Dispatcher)}


@pytest.mark.parametrize(("strategy", "axes", "exits"), [
    ("sma_crossover", {"fast_period": [3, 5], "slow_period": [20]}, ExitRules()),
    ("ema_crossover", {"fast_period": [3, 5], "slow_period": [20]}, ExitRules()),
    ("sma_crossover", {"fast_period": [3, 5], "slow_period": [20]}, ExitRules(stop_loss_pct=2.0)),
    *((name, axes, ExitRules()) for name, axes in GRIDS.items()),
])
def test_the_kernels_compile_once_whatever_memory_polars_hands_them(strategy: str, axes: dict[str, list[object]],
                                                                    exits: ExitRules) -> None:
    """Bars in one chunk (polars hands out read-only views) and in several (writable copies: a sliced or concatenated
    frame, as the grid flow reads) run the same compiled kernels and give the same rows: a Dask worker's preload
    warms the kernels on the one, and the flow's chunks ran on the other, compiling everything again."""
    bars = walk(2500, 41)
    pieces = pl.concat([bars.head(1000), bars.tail(1500)], rechunk=False)
    assert (bars["close"].n_chunks(), pieces["close"].n_chunks()) == (1, 2)
    spec = GridSpec(strategy, axes)
    base = BacktestConfig(strategy, exits=exits)
    whole = evaluate_grid(bars, "5 mins", spec, base)
    compiled = _compiled_signatures()
    assert evaluate_grid(pieces, "5 mins", spec, base).equals(whole)
    assert _compiled_signatures() == compiled
