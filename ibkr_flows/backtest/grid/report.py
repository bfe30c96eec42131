"""A grid run end to end: evaluate in-sample, pick the best cell, and say how far to trust it.

`run_grid` takes the evaluation as a function of the bars (default: `evaluate_grid` in this process) so that a
Prefect flow can fan the combinations out over tasks with `GridSpec.chunks` and still build the report here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl

from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.backtest.grid.evaluate import combination_config, evaluate_grid, grid_base, metric_row
from ibkr_flows.backtest.grid.overfitting import (
    deflated_sharpe_ratio,
    holdout_split,
    plateau_score,
    skew_kurtosis,
    walk_forward_folds,
)
from ibkr_flows.backtest.grid.spec import Combination, GridSpec
from ibkr_flows.backtest.metrics import Metrics, bar_returns

Evaluate = Callable[[pl.DataFrame], pl.DataFrame]
"""Bars in, `evaluate_grid`'s table for every combination of the spec out (any row order)."""


@dataclass(frozen=True)
class WalkForward:
    folds: pl.DataFrame
    """One row per fold: its train and test bar times, the parameters chosen in-sample, the rank metric in-sample
    (is_<metric>) and out-of-sample (oos_<metric>), and the out-of-sample return, trades and drawdown."""
    mean_in_sample: float | None
    mean_out_of_sample: float | None
    efficiency: float | None
    """Mean out-of-sample over mean in-sample rank metric (walk-forward efficiency); None unless in-sample > 0."""
    out_of_sample_return_pct: float
    """The folds' out-of-sample returns compounded: trading each fold's choice on the next block, in turn."""


@dataclass(frozen=True)
class GridReport:
    strategy: str
    rank_by: str
    results: pl.DataFrame
    """Every combination on the in-sample bars, best first (nulls last, ties by parameter values)."""
    best_params: Combination
    best_metrics: Metrics
    """The single-run engine's metrics for the best cell in-sample (with start, end and annualization)."""
    out_of_sample: Metrics | None
    """The best cell on the held-out bars, if a holdout was asked for."""
    walk_forward: WalkForward | None
    deflated_sharpe: float | None
    """Probability that the best cell's Sharpe ratio is more than the search's luck, with N = combinations_tried.
    Neighbouring cells are correlated, so the effective N is smaller: this errs on the side of doubt."""
    plateau_score: float | None
    """Mean rank metric of the best cell's grid neighbours over its own (see `overfitting.plateau_score`)."""
    combinations_tried: int
    combinations_dropped: int
    """Rejected by the strategy's validation (e.g. fast >= slow) and never backtested."""
    elapsed_s: float

    def top(self, n: int = 20) -> pl.DataFrame:
        return self.results.head(n)


def run_grid(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig | None = None, *,
             holdout: float | None = None, folds: int | None = None, evaluate: Evaluate | None = None) -> GridReport:
    """Evaluate `spec` on one symbol's bars and report the best cell with its overfitting checks.

    `holdout` (e.g. 0.3) keeps the last share of the bars out of the search and scores the best cell on them;
    `folds` runs a walk-forward over the in-sample bars (see `walk_forward_folds`). Every slice is backtested on
    its own (indicators warm up and the account starts flat inside it), as `run_backtest` on that slice would.
    """
    started = time.perf_counter()
    base = grid_base(spec, base)
    evaluate = evaluate or partial(evaluate_grid, bar_size=bar_size, spec=spec, base=base)
    in_sample, held_out = (range(bars.height), None) if holdout is None else holdout_split(bars.height, holdout)
    train = _slice(bars, in_sample, spec, "the in-sample part")
    results = rank(evaluate(train), spec)
    best_params = {name: results[name][0] for name in spec.axes}
    best = run_backtest(train, bar_size, combination_config(base, best_params))
    out_of_sample = None
    if held_out is not None:
        test = _slice(bars, held_out, spec, f"the held-out {holdout:.0%}")
        out_of_sample = run_backtest(test, bar_size, combination_config(base, best_params)).metrics
    return GridReport(
        strategy=spec.strategy, rank_by=spec.rank_by, results=results, best_params=best_params,
        best_metrics=best.metrics, out_of_sample=out_of_sample,
        walk_forward=None if folds is None else _walk_forward(train, bar_size, spec, base, folds, evaluate),
        deflated_sharpe=_deflated_sharpe(results, best.metrics, best.equity["equity"].to_numpy()),
        plateau_score=plateau_score(results, spec.axes, spec.rank_by, best_params),
        combinations_tried=results.height, combinations_dropped=spec.dropped,
        elapsed_s=time.perf_counter() - started)


def rank(results: pl.DataFrame, spec: GridSpec) -> pl.DataFrame:
    """Best first by the spec's rank metric; ties go to the smaller parameter values, so the order is stable."""
    return results.sort([spec.rank_by, *spec.axes], descending=[True, *[False] * len(spec.axes)], nulls_last=True)


def _deflated_sharpe(results: pl.DataFrame, best: Metrics, equity: np.ndarray) -> float | None:
    """The best cell's deflated Sharpe ratio, with all per-bar quantities de-annualized."""
    moments = skew_kurtosis(bar_returns(equity))
    if best.sharpe is None or not math.isfinite(best.sharpe) or moments is None:
        return None
    scale = math.sqrt(best.periods_per_year)
    trials = results["sharpe"].drop_nulls()
    trials = trials.filter(trials.is_finite()) / scale
    variance = float(trials.var()) if trials.len() > 1 else 0.0
    return deflated_sharpe_ratio(best.sharpe / scale, results.height, variance, *moments, best.bars - 1)


def _walk_forward(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig, folds: int,
                  evaluate: Evaluate) -> WalkForward:
    metric = spec.rank_by
    rows = []
    for number, fold in enumerate(walk_forward_folds(bars.height, folds), start=1):
        train = _slice(bars, fold.train, spec, f"walk-forward block {number}")
        test = _slice(bars, fold.test, spec, f"walk-forward block {number + 1}")
        chosen = rank(evaluate(train), spec).row(0, named=True)
        params = {name: chosen[name] for name in spec.axes}
        scored = metric_row(run_backtest(test, bar_size, combination_config(base, params)).metrics)
        rows.append({
            "fold": number, "train_start": train["ts"][0], "train_end": train["ts"][-1],
            "test_start": test["ts"][0], "test_end": test["ts"][-1], **params,
            f"is_{metric}": chosen[metric], f"oos_{metric}": scored[metric],
            "oos_total_return_pct": scored["total_return_pct"], "oos_trades": scored["trades"],
            "oos_max_drawdown_pct": scored["max_drawdown_pct"]})
    table = pl.DataFrame(rows)
    mean_in, mean_out = table[f"is_{metric}"].mean(), table[f"oos_{metric}"].mean()
    compounded = math.prod(1 + r / 100 for r in table["oos_total_return_pct"])
    return WalkForward(
        folds=table, mean_in_sample=mean_in, mean_out_of_sample=mean_out,
        efficiency=mean_out / mean_in if mean_in is not None and mean_out is not None and mean_in > 0 else None,
        out_of_sample_return_pct=(compounded - 1) * 100)


def _slice(bars: pl.DataFrame, rows: range, spec: GridSpec, what: str) -> pl.DataFrame:
    """The bars in `rows`, refusing a slice too short for the grid's longest warm-up with a message that says
    which split made it so."""
    needed = spec.max_warmup_bars + 3
    if len(rows) < needed:
        raise BacktestError(f"{what} has {len(rows)} bars, but the {spec.strategy} grid needs {needed} (its longest "
                            "warm-up plus a bar to decide on, one to fill on and one to exit on); use more bars, "
                            "a smaller holdout or fewer folds")
    return bars.slice(rows.start, len(rows))
