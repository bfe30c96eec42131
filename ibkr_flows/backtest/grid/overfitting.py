"""How much to trust a grid's winner: holdout and walk-forward splits, the deflated Sharpe ratio, the plateau score.

The best of many backtests is biased upwards by the search itself. Each tool here answers one question:
- holdout / walk-forward: does the chosen cell still work on bars it was not chosen on?
- deflated Sharpe ratio: is its Sharpe ratio more than the best of that many skill-less trials would show by luck?
- plateau score: is it on a broad ridge of good parameters, or a lone spike that neighbouring values do not share?
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import polars as pl

from ibkr_flows.backtest.grid.spec import GridSpecError, ParamValue

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class Fold:
    """Bar index ranges (positions in the bars frame) of one walk-forward step; `test` starts where `train` stops."""

    train: range
    test: range


def holdout_split(n_bars: int, fraction: float) -> tuple[range, range]:
    """(in-sample, out-of-sample): the last `fraction` of the bars is held out."""
    if not 0 < fraction < 1:
        raise GridSpecError(f"the holdout fraction must be between 0 and 1, got {fraction}")
    cut = n_bars - round(n_bars * fraction)
    return range(0, cut), range(cut, n_bars)


def walk_forward_folds(n_bars: int, folds: int) -> list[Fold]:
    """Rolling walk-forward: the bars are cut into `folds + 1` contiguous blocks of (nearly) equal length, and fold
    i chooses on block i and is scored on block i + 1. Test blocks never overlap and always come after the block
    that chose them, so every out-of-sample score uses only bars later than the ones the choice saw."""
    if folds < 1:
        raise GridSpecError(f"walk-forward needs at least 1 fold, got {folds}")
    edges = [n_bars * i // (folds + 1) for i in range(folds + 2)]
    return [Fold(range(edges[i], edges[i + 1]), range(edges[i + 1], edges[i + 2])) for i in range(folds)]


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """The Sharpe ratio the best of `n_trials` skill-less trials reaches by luck, given the variance of the trials'
    Sharpe ratios (Bailey and Lopez de Prado 2014, from the False Strategy Theorem):

        SR0 = sqrt(V[SR]) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e))),  g = Euler-Mascheroni constant.

    One trial involves no selection, so its benchmark is 0."""
    if n_trials < 2:
        return 0.0
    quantile = NormalDist().inv_cdf
    return math.sqrt(variance) * ((1 - EULER_GAMMA) * quantile(1 - 1 / n_trials)
                                  + EULER_GAMMA * quantile(1 - 1 / (n_trials * math.e)))


def deflated_sharpe_ratio(sharpe: float, n_trials: int, trial_variance: float, skew: float, kurtosis: float,
                          n_returns: int) -> float | None:
    """Probability that the selected strategy's true Sharpe ratio beats the best of `n_trials` lucky ones.

    Bailey, D. H. and Lopez de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5), 94-107:

        DSR = Z((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2))

    with SR0 from `expected_max_sharpe`. Every Sharpe ratio here is PER BAR (not annualized), `trial_variance` is
    the variance of the trials' per-bar Sharpe ratios, `skew` and `kurtosis` (Pearson's, 3 for a normal
    distribution) are those of the selected strategy's per-bar returns and T = `n_returns`. Near 1: the Sharpe
    survives the search; 0.5 or less: it is what the search would find by luck. None where the non-normality
    correction is not positive (extreme skew), for which the formula has no answer.
    """
    denominator = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if denominator <= 0 or n_returns < 2:
        return None
    z = (sharpe - expected_max_sharpe(n_trials, trial_variance)) * math.sqrt(n_returns - 1) / math.sqrt(denominator)
    return NormalDist().cdf(z)


def skew_kurtosis(returns: np.ndarray) -> tuple[float, float] | None:
    """Population skewness and (non-excess) kurtosis; None for returns that never vary."""
    deviation = returns - returns.mean()
    m2 = float(np.mean(deviation**2))
    if m2 == 0:
        return None
    return float(np.mean(deviation**3)) / m2**1.5, float(np.mean(deviation**4)) / m2**2


def plateau_score(results: pl.DataFrame, axes: Mapping[str, Sequence[ParamValue]], metric: str,
                  best: Mapping[str, ParamValue]) -> float | None:
    """Mean `metric` of the best cell's neighbours over the best cell's own value: 1 on a flat plateau, near 0 or
    negative on a lone spike.

    Neighbours are every cell within one step along each axis (up to 3^k - 1 for k swept parameters); cells the
    constraints dropped and cells with no value (e.g. a Sharpe ratio of a run that never traded) are skipped. None
    without neighbours or when the best value is not a positive finite number (the ratio would not mean "share
    of the peak").
    """
    peak = results.filter(_cell(axes, best, 0))[metric]
    value = peak[0] if peak.len() else None
    if value is None or not 0 < value < math.inf:
        return None
    around = results.filter(_cell(axes, best, 1) & ~_cell(axes, best, 0))[metric].drop_nulls()
    around = around.filter(around.is_finite())
    return None if around.is_empty() else float(around.mean()) / value


def _cell(axes: Mapping[str, Sequence[ParamValue]], at: Mapping[str, ParamValue], reach: int) -> pl.Expr:
    """Rows within `reach` steps of `at` on every axis. An axis mixing integers and floats (lower = 20, 27.5) is a
    Float64 column (see `evaluate_grid`), and polars' `is_in` will not compare it with a list of integers."""
    condition = pl.lit(True)
    for name, values in axes.items():
        i = list(values).index(at[name])
        near = list(values[max(i - reach, 0):i + reach + 1])
        if not all(isinstance(v, int) for v in values):
            near = [float(v) for v in near]
        condition &= pl.col(name).is_in(near)
    return condition
