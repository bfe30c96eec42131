"""The parameter grid: spec validation, chunking, equality with the single-run engine, overfitting statistics."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ibkr_flows.backtest.grid.evaluate as grid_evaluate
from ibkr_flows.backtest import engine
from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed, IBKRTiered, NoCommission, PercentCommission
from ibkr_flows.backtest.engine import BacktestConfig, Finalize, Mode
from ibkr_flows.backtest.errors import UnknownStrategyError
from ibkr_flows.backtest.grid import (
    METRIC_COLUMNS,
    EmptyGridError,
    GridSpec,
    GridSpecError,
    UnknownMetricError,
    UnknownParameterError,
    compiled,
    deflated_sharpe_ratio,
    evaluate_grid,
    expected_max_sharpe,
    holdout_split,
    metric_row,
    plateau_score,
    run_grid,
    walk_forward_folds,
)
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, Sizing
from ibkr_flows.backtest.strategies import STRATEGIES, get_strategy
from ibkr_flows.backtest.strategies.base import AverageCrossover, Entry

START = datetime(2024, 1, 2, tzinfo=UTC)
CROSSOVER_GRID = {"fast_period": range(2, 31, 2), "slow_period": range(5, 81, 5)}

BIT_IDENTICAL = ("bars", "trades", "final_equity", "total_return_pct", "annualized_return_pct", "calmar",
                 "max_drawdown_pct", "max_drawdown_duration", "exposure_pct", "win_rate_pct", "best_trade_pct",
                 "worst_trade_pct", "buy_and_hold_return_pct", "periods_per_year")
"""Fields the kernel computes with the engine's own operations in the engine's order; the rest are sums (of
returns, squared returns, trade PnL) whose order differs from numpy's pairwise summation."""


def bars_from(close: np.ndarray, open_: np.ndarray, step: timedelta = timedelta(minutes=5)) -> pl.DataFrame:
    n = len(close)
    return pl.DataFrame({
        "ts": pl.datetime_range(START, START + (n - 1) * step, step, eager=True, time_zone="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
        "close": close, "volume": np.full(n, 1e4),
    })


def walk(n: int, seed: int, start: float = 100.0, vol: float = 0.01) -> pl.DataFrame:
    """Geometric random walk with close-to-open gaps, so fills at the open differ from marks at the close."""
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0, vol, n)))
    return bars_from(close, np.r_[start, close[:-1]] * np.exp(rng.normal(0, vol / 3, n)))


def whole_dollars(n: int, seed: int) -> pl.DataFrame:
    """Prices on a whole-dollar grid moving at most a dollar a bar: moving averages tie often, which must keep the
    previous side in the kernel exactly as in the engine."""
    rng = np.random.default_rng(seed)
    close = np.maximum(50 + np.cumsum(rng.integers(-1, 2, n)), 1).astype(np.float64)
    return bars_from(close, np.r_[50.0, close[:-1]])


SETTINGS = [  # (id, strategy, bars, mode, commission, sizing, cash, slippage_bps)
    ("sma-fixed-small-cash", "sma_crossover", walk(2500, 1), "long_only", IBKRFixed(), AllIn(), 2_000.0, 0.0),
    ("sma-nocommission-short", "sma_crossover", walk(2500, 2), "long_short", NoCommission(), AllIn(), 1e5, 0.0),
    ("ema-fixed-slippage-short", "ema_crossover", walk(2500, 3), "long_short", IBKRFixed(), AllIn(), 1e5, 1.5),
    ("ema-nocommission", "ema_crossover", walk(2500, 4), "long_only", NoCommission(), AllIn(), 1e5, 0.0),
    ("sma-tiered-fixed-shares", "sma_crossover", walk(2500, 5), "long_short", IBKRTiered(), FixedShares(40), 1e4,
     2.0),
    ("sma-percent-fraction", "sma_crossover", walk(2500, 6), "long_only", PercentCommission(0.001),
     FixedFraction(0.3), 1e5, 0.0),
    ("sma-ties", "sma_crossover", whole_dollars(2500, 7), "long_short", IBKRFixed(), AllIn(), 1e4, 0.0),
    ("ema-penny-cap", "ema_crossover", walk(2500, 8, start=0.3, vol=0.02), "long_short", IBKRFixed(), AllIn(),
     1_000.0, 0.0),  # 1% cap below the USD 1 minimum
]


def assert_grid_matches_engine(table: pl.DataFrame, bars: pl.DataFrame, spec: GridSpec, base: BacktestConfig
                               ) -> None:
    """Every row of a grid `table` equals `run_backtest` of its combination on `bars` ("5 mins")."""
    for combination, row in zip(spec.combinations(), table.iter_rows(named=True), strict=True):
        single = engine.run_backtest(bars, "5 mins", grid_evaluate.combination_config(base, combination))
        assert_rows_equal(row, metric_row(single.metrics))


def assert_rows_equal(grid_row: dict, engine_row: dict) -> None:
    for name in METRIC_COLUMNS:
        ours, theirs = grid_row[name], engine_row[name]
        if name in BIT_IDENTICAL or theirs is None or ours is None:
            assert ours == theirs, name
        else:
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), name


def test_spec_validation_errors() -> None:
    with pytest.raises(UnknownParameterError, match=r"sma_crossover has no parameter\(s\) fast; known parameters: "
                                                    r"fast_period, slow_period"):
        GridSpec("sma_crossover", {"fast": [1, 2]})
    with pytest.raises(UnknownMetricError, match=r"cannot rank by 'sharp'; rank metrics: sharpe, sortino"):
        GridSpec("sma_crossover", {"fast_period": [5]}, rank_by="sharp")
    with pytest.raises(EmptyGridError, match=r"all 4 combinations failed validation, e\.g\. sma_crossover: "
                                             r"fast_period \(20\) must be smaller than slow_period \(10\)"):
        GridSpec("sma_crossover", {"fast_period": [20, 30], "slow_period": [10, 15]})
    with pytest.raises(EmptyGridError, match="slow_period has no values"):
        GridSpec("sma_crossover", {"fast_period": [5], "slow_period": []})
    with pytest.raises(GridSpecError, match=r"fast_period values must be integers, got 5\.5"):
        GridSpec("sma_crossover", {"fast_period": [5, 5.5]})
    with pytest.raises(GridSpecError, match="exactly the keys start, stop, step"):
        GridSpec("sma_crossover", {"fast_period": {"start": 1, "stop": 5}})
    with pytest.raises(GridSpecError, match="step must be positive"):
        GridSpec("sma_crossover", {"fast_period": {"start": 1, "stop": 5, "step": 0}})
    with pytest.raises(GridSpecError, match="needs 'strategy' and 'params'"):
        GridSpec.from_dict({"strategy": "sma_crossover", "grid": {}})
    with pytest.raises(UnknownStrategyError):
        GridSpec("sma_cross", {})
    with pytest.raises(GridSpecError, match="is not a combination of this sma_crossover grid"):
        evaluate_grid(walk(100, 0), "5 mins", GridSpec("sma_crossover", {"fast_period": [2]}), None,
                      [{"fast_period": 3}])
    with pytest.raises(GridSpecError, match="no params"):
        evaluate_grid(walk(100, 0), "5 mins", GridSpec("sma_crossover", {"fast_period": [2]}),
                      BacktestConfig("sma_crossover", {"slow_period": 20}))


def test_spec_expands_values_and_drops_invalid_combinations() -> None:
    spec = GridSpec.from_dict({"strategy": "sma_crossover", "rank_by": "calmar",
                               "params": {"fast_period": {"start": 5, "stop": 50, "step": 5},
                                          "slow_period": [40, 20, 20, 30]}})
    assert spec.axes == {"fast_period": tuple(range(5, 51, 5)), "slow_period": (20, 30, 40)}
    assert (spec.size, spec.dropped) == (3 + 5 + 7, 30 - 15)  # fast below slow 20, 30, 40
    assert all(c["fast_period"] < c["slow_period"] for c in spec.combinations())
    assert spec.max_warmup_bars == 39
    rsi = GridSpec("rsi_reversion", {"lower": {"start": 20, "stop": 30, "step": 2.5}, "upper": 70, "period": [14]})
    assert rsi.axes["lower"] == (20, 22.5, 25.0, 27.5, 30.0)
    assert rsi.size == 5
    assert rsi.combinations()[0] == {"lower": 20, "upper": 70, "period": 14}


@pytest.mark.parametrize(("n_chunks", "chunk_size"), [(1, None), (7, None), (500, None), (None, 10), (None, 1)])
def test_chunks_cover_every_combination_exactly_once(n_chunks: int | None, chunk_size: int | None) -> None:
    spec = GridSpec("sma_crossover", CROSSOVER_GRID)
    chunks = spec.chunks(n_chunks, chunk_size=chunk_size)
    flat = [tuple(c.values()) for chunk in chunks for c in chunk]
    assert flat == [tuple(c.values()) for c in spec.combinations()]
    assert all(chunks)
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    if chunk_size is not None:
        assert max(map(len, chunks)) <= chunk_size
    else:
        assert len(chunks) == min(n_chunks, spec.size)
    for bad in ({}, {"n_chunks": 2, "chunk_size": 2}, {"n_chunks": 0}):
        with pytest.raises(GridSpecError):
            spec.chunks(**bad)


CONVENTIONS = [("state", "close"), ("cross", "close"), ("state", "open"), ("cross", "open")]
"""(entry, finalize): the default first."""


@pytest.mark.parametrize(("entry", "finalize"), CONVENTIONS, ids=["-".join(c) for c in CONVENTIONS])
@pytest.mark.parametrize(("strategy", "bars", "mode", "commission", "sizing", "cash", "slippage_bps"),
                         [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_kernel_equals_single_run_engine(strategy: str, bars: pl.DataFrame, mode: Mode, commission: CommissionModel,
                                         sizing: Sizing, cash: float, slippage_bps: float, entry: Entry,
                                         finalize: Finalize, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampled combinations of a 15 x 16 grid against `run_backtest`, under every entry and finalize convention.
    The kernel path must compute them (the grid's own access to the engine is cut), across several bar blocks
    (averages computed block by block, their state carried over) and threads."""
    spec = GridSpec(strategy, CROSSOVER_GRID)
    base = BacktestConfig(strategy, cash=cash, commission=commission, slippage_bps=slippage_bps, sizing=sizing,
                          mode=mode, entry=entry, finalize=finalize)
    rng = np.random.default_rng(len(strategy) + len(mode))
    combinations = spec.combinations()
    sample = [combinations[i] for i in rng.choice(len(combinations), 12, replace=False)]
    with monkeypatch.context() as patch:
        patch.setattr(grid_evaluate, "run_backtest", pytest.fail)
        patch.setattr(grid_evaluate, "BLOCK_BARS", 1000)  # 3 blocks for 2500 bars
        patch.setattr(grid_evaluate, "KERNEL_THREADS", 3)  # pairs split over three threads
        table = evaluate_grid(bars, "5 mins", spec, base, sample)
    assert table.columns == [*spec.axes, *METRIC_COLUMNS]
    assert table["trades"].sum() > 100
    for combination, row in zip(sample, table.iter_rows(named=True), strict=True):
        assert {name: row[name] for name in spec.axes} == combination
        single = engine.run_backtest(bars, "5 mins", grid_evaluate.combination_config(base, combination))
        assert_rows_equal(row, metric_row(single.metrics))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["sma_crossover", "ema_crossover"]),
       closes=st.lists(st.floats(0.01, 1e6), min_size=1, max_size=300),
       periods=st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_compiled_averages_are_the_polars_averages_bit_for_bit(name: str, closes: list[float], periods: list[int]
                                                               ) -> None:
    """The grid builds averages with `average_rows` (compiled); the engine with the `average` expression. Same bits,
    same crossings."""
    cls = get_strategy(name)
    frame = pl.DataFrame({"close": closes})
    expected = [frame.select(cls.average("close", p)).to_series().fill_null(np.nan).to_numpy() for p in periods]
    np.testing.assert_array_equal(cls.average_rows(np.array(closes), periods), np.array(expected))


@dataclass(frozen=True)
class MedianCrossover(AverageCrossover):
    """A crossover whose average only polars knows (no `average_rows`): the grid computes its averages whole,
    with the expression, in groups."""

    name: ClassVar[str] = "test_median_crossover"
    fast_period: int = 3
    slow_period: int = 9

    @staticmethod
    def average(column: str, period: int) -> pl.Expr:
        return pl.col(column).rolling_median(period)


@pytest.mark.parametrize("entry", ["state", "cross"])
def test_a_crossover_known_only_by_its_expression_equals_the_engine(entry: Entry,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pair against `run_backtest`, its averages in groups of at most three, over several blocks and
    threads."""
    monkeypatch.setitem(STRATEGIES, MedianCrossover.name, MedianCrossover)
    bars = whole_dollars(2500, 11)  # medians of whole dollars tie often
    spec = GridSpec(MedianCrossover.name, {"fast_period": [2, 3, 5, 8], "slow_period": [6, 10, 20]})
    base = BacktestConfig(MedianCrossover.name, cash=1e4, mode="long_short", entry=entry)
    with monkeypatch.context() as patch:
        patch.setattr(grid_evaluate, "run_backtest", pytest.fail)
        patch.setattr(grid_evaluate, "BLOCK_BARS", 1000)
        patch.setattr(grid_evaluate, "AVERAGES_BYTES", 8 * bars.height * 3)  # at most 3 averages at a time
        patch.setattr(grid_evaluate, "KERNEL_THREADS", 3)
        table = evaluate_grid(bars, "5 mins", spec, base)
    assert table["trades"].min() > 0
    assert_grid_matches_engine(table, bars, spec, base)


def test_kernel_compiles_without_a_cache_location() -> None:
    """Code with no source file has nowhere to cache, like a read-only install without a user cache directory."""
    namespace: dict[str, object] = {}
    exec("def twice(x):\n    return 2 * x", namespace)
    assert compiled.jit(namespace["twice"])(21) == 42


@dataclass(frozen=True)
class FlatFee(IBKRFixed):
    """A cost model the kernel does not know, although it is an IBKRFixed."""

    def commission(self, shares: int, price: float) -> float:
        return 2.0


def test_costs_the_kernel_does_not_know_run_the_engine() -> None:
    bars = walk(600, 9, vol=0.02)
    spec = GridSpec("sma_crossover", {"fast_period": [3, 5], "slow_period": [10, 20]})
    table = evaluate_grid(bars, "5 mins", spec, BacktestConfig("sma_crossover", commission=FlatFee()))
    assert table.height == spec.size
    for row in table.iter_rows(named=True):
        combination = {name: row[name] for name in spec.axes}
        single = engine.run_backtest(bars, "5 mins", BacktestConfig("sma_crossover", combination, commission=FlatFee()))
        assert metric_row(single.metrics) == {name: row[name] for name in METRIC_COLUMNS}
    assert table["commissions"].to_list() == [2.0 * 2 * t for t in table["trades"]]


def test_deflated_sharpe_reproduces_the_papers_example() -> None:
    """Bailey and Lopez de Prado (2014), numerical example: annualized SR 2.5 from 1250 daily returns, the best of
    N = 100 trials whose annualized Sharpe ratios have variance 1/2, returns with skew -3 and kurtosis 10:
    SR0 = 0.1132 per day and DSR = 0.9004."""
    sharpe, variance = 2.5 / math.sqrt(250), 0.5 / 250
    z = NormalDist().inv_cdf
    gamma = 0.5772156649015329
    sr0 = math.sqrt(variance) * ((1 - gamma) * z(1 - 1 / 100) + gamma * z(1 - 1 / (100 * math.e)))
    by_hand = NormalDist().cdf((sharpe - sr0) * math.sqrt(1250 - 1) / math.sqrt(1 + 3 * sharpe + 9 / 4 * sharpe**2))
    assert expected_max_sharpe(100, variance) == pytest.approx(sr0, rel=1e-12)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(sharpe, 100, variance, -3.0, 10.0, 1250)
    assert dsr == pytest.approx(by_hand, rel=1e-12)
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    by_trials = [deflated_sharpe_ratio(sharpe, n, variance, -3.0, 10.0, 1250) for n in (1, 10, 100, 1000, 10_000)]
    assert by_trials == sorted(by_trials, reverse=True) and by_trials[-1] < 0.5  # type: ignore[type-var]
    assert by_trials[0] == pytest.approx(NormalDist().cdf(sharpe * math.sqrt(1249) / math.sqrt(
        1 + 3 * sharpe + 9 / 4 * sharpe**2)))  # one trial: no selection, the benchmark is 0
    assert deflated_sharpe_ratio(1.0, 10, variance, 3.0, 3.0, 1250) is None  # 1 - 3 + 0.5 < 0: no answer


def test_plateau_score_on_a_constructed_grid() -> None:
    axes = {"a": (1, 2, 3, 4), "b": (10, 20, 30)}
    values = {(1, 10): 1.0, (1, 20): 1.5, (1, 30): 0.5, (2, 10): 1.0, (2, 20): 2.0, (2, 30): None,
              (3, 20): 1.5, (3, 30): 1.0, (4, 10): 9.0, (4, 20): 9.0, (4, 30): 9.0}  # (3, 10) was dropped
    results = pl.DataFrame([{"a": a, "b": b, "sharpe": v} for (a, b), v in values.items()])
    # Neighbours of (2, 20): a in 1..3, b in 10..30, minus itself, (2, 30) (no value) and (3, 10) (absent).
    assert plateau_score(results, axes, "sharpe", {"a": 2, "b": 20}) == pytest.approx(
        (1.0 + 1.5 + 0.5 + 1.0 + 1.5 + 1.0) / 6 / 2.0)
    assert plateau_score(results, axes, "sharpe", {"a": 1, "b": 10}) == pytest.approx((1.5 + 1.0 + 2.0) / 3 / 1.0)
    assert plateau_score(results.with_columns(sharpe=-pl.col("sharpe")), axes, "sharpe", {"a": 2, "b": 20}) is None
    lone = pl.DataFrame({"a": [2], "b": [20], "sharpe": [2.0]})
    assert plateau_score(lone, axes, "sharpe", {"a": 2, "b": 20}) is None


@pytest.mark.parametrize("n_bars", [10, 101, 1000])
@pytest.mark.parametrize("folds", [1, 3, 7])
def test_walk_forward_folds_are_disjoint_and_forward(n_bars: int, folds: int) -> None:
    splits = walk_forward_folds(n_bars, folds)
    assert len(splits) == folds
    assert splits[0].train.start == 0 and splits[-1].test.stop == n_bars
    for fold in splits:
        assert fold.train.stop == fold.test.start and len(fold.train) and len(fold.test)
        assert abs(len(fold.train) - len(fold.test)) <= 1
    for before, after in itertools.pairwise(splits):
        assert before.test.stop == after.test.start  # test windows tile the data without overlap
        assert after.train == before.test  # rolling: each block chooses for the next one
    assert holdout_split(1000, 0.3) == (range(0, 700), range(700, 1000))
    with pytest.raises(GridSpecError):
        holdout_split(1000, 1.0)


def test_run_grid_reports_and_walk_forward_never_looks_ahead() -> None:
    bars = walk(2400, 10, vol=0.004)
    spec = GridSpec("sma_crossover", {"fast_period": [3, 5, 8, 13], "slow_period": [10, 20, 40, 80]})
    report = run_grid(bars, "5 mins", spec, holdout=0.25, folds=3)

    assert (report.combinations_tried, report.combinations_dropped) == (15, 1)  # 13 / 10 is dropped
    assert report.results["bars"][0] == 1800 and report.out_of_sample is not None and report.out_of_sample.bars == 600
    best = report.results.row(0, named=True)
    assert report.best_params == {"fast_period": best["fast_period"], "slow_period": best["slow_period"]}
    assert_rows_equal(best, metric_row(report.best_metrics))
    assert report.top(3).equals(report.results.head(3))
    sharpes = report.results["sharpe"].drop_nulls()
    assert sharpes.to_list() == sorted(sharpes.to_list(), reverse=True)
    assert report.deflated_sharpe is not None and 0 <= report.deflated_sharpe <= 1
    wf = report.walk_forward
    assert wf is not None and wf.folds["fold"].to_list() == [1, 2, 3]
    assert (wf.folds["train_end"] < wf.folds["test_start"]).all()
    assert (wf.folds["test_end"].head(2) < wf.folds["test_start"].tail(2)).all()
    assert wf.folds["test_end"][-1] == bars["ts"][1799]  # the holdout stays out of the walk-forward

    # Changing everything after fold 1's test block changes nothing about fold 1.
    cut = bars["ts"].search_sorted(wf.folds["test_end"][0]) + 1
    noise = np.r_[np.ones(cut), np.random.default_rng(0).uniform(0.5, 1.5, bars.height - cut)]
    changed = bars.with_columns(pl.col(c) * noise for c in ("open", "high", "low", "close"))
    again = run_grid(changed, "5 mins", spec, holdout=0.25, folds=3)
    assert again.walk_forward is not None
    assert again.walk_forward.folds.row(0) == wf.folds.row(0)
    assert again.walk_forward.folds.row(2) != wf.folds.row(2)


def test_run_grid_accepts_a_chunked_evaluation() -> None:
    """How a flow fans out: each chunk is evaluated separately (e.g. one Prefect task each) and concatenated. The
    rows are the same to the last bit however the grid is cut: a chunk needs fewer averages than the whole grid,
    and the kernel's blocks (where a held run's sums are cut) must not depend on that. 5000 bars: several blocks."""
    bars = walk(5000, 11)
    spec = GridSpec("ema_crossover", {"fast_period": range(3, 20, 4), "slow_period": range(10, 60, 10)})
    base = BacktestConfig("ema_crossover", mode="long_short")

    def chunked(part: pl.DataFrame) -> pl.DataFrame:
        return pl.concat([evaluate_grid(part, "5 mins", spec, base, chunk) for chunk in spec.chunks(4)][::-1])

    whole = run_grid(bars, "5 mins", spec, base, holdout=0.3)
    split = run_grid(bars, "5 mins", spec, base, holdout=0.3, evaluate=chunked)
    assert split.results.equals(whole.results)
    assert (split.best_params, split.out_of_sample, split.plateau_score) == (
        whole.best_params, whole.out_of_sample, whole.plateau_score)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), fast=st.integers(2, 15), gap=st.integers(1, 30),
       mode=st.sampled_from(["long_only", "long_short"]),
       commission=st.sampled_from([IBKRFixed(), NoCommission(), PercentCommission(0.0005)]),
       ties=st.booleans())
@example(seed=303, fast=11, gap=29, mode="long_only", commission=IBKRFixed(), ties=False)  # no losing trade: x / -0.0
def test_grid_agrees_with_single_runs_for_any_series(seed: int, fast: int, gap: int, mode: Mode,
                                                      commission: CommissionModel, ties: bool) -> None:
    """Property: for any price series and any (fast, slow) pair, the kernel's row is the single run's metrics."""
    bars = whole_dollars(400, seed) if ties else walk(400, seed)
    combination = {"fast_period": fast, "slow_period": fast + gap}
    spec = GridSpec("sma_crossover", {k: [v] for k, v in combination.items()})
    base = BacktestConfig("sma_crossover", commission=commission, mode=mode, cash=10_000.0)
    row = evaluate_grid(bars, "5 mins", spec, base).row(0, named=True)
    single = engine.run_backtest(bars, "5 mins", BacktestConfig("sma_crossover", combination, cash=10_000.0,
                                                                 commission=commission, mode=mode))
    assert_rows_equal(row, metric_row(single.metrics))
