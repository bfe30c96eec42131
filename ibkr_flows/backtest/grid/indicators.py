"""Numba twins of the built-in strategies' indicators and decision rules, for `Strategy.grid_targets`.

Each function reproduces a polars expression of a strategy operation for operation, so a grid's signals are the
engine's bit for bit (tests/test_grid_strategies.py compares them on random series): compiled, a grid computes an
indicator in a few ms per million bars where the polars expression takes ~0.1-0.4 s, and each distinct indicator
once for every combination that shares it.
"""

from __future__ import annotations

import numpy as np

from ibkr_flows.backtest.grid.compiled import jit


class SparseExtremes:
    """The extremes (max or min) of one series over many windows, as polars' `rolling_max` / `rolling_min` give
    them: a sparse table, level k holding the extreme of every 2**k consecutive values, so that any window is
    covered by two overlapping runs of one level (`breakout_targets` reads them).

    Max and min are exact whatever the order, so any algorithm gives polars' values; this one is numpy's
    vectorized maximum throughout, once per level for all windows (a one-pass rolling max is a serial chain, ~10x
    slower, per window). The table holds log2(longest window) copies of the series.
    """

    def __init__(self, values: np.ndarray, longest: int, highest: bool) -> None:
        pick = np.maximum if highest else np.minimum
        self.levels = [np.asarray(values, dtype=np.float64)]
        while 2 ** len(self.levels) <= longest:
            below, half = self.levels[-1], 2 ** (len(self.levels) - 1)
            self.levels.append(pick(below[:-half], below[half:]))

    def level(self, window: int) -> tuple[np.ndarray, int]:
        """The level covering `window` values in two runs, and its run length (the largest power of 2 in it)."""
        k = window.bit_length() - 1
        return self.levels[k], 2**k


@jit
def wilder_rsi(close: np.ndarray, period: int, gain: float, loss: float, out: np.ndarray) -> None:
    """rsi_reversion.wilder_rsi of `close` into `out` (NaN where null), given the two Wilder averages at row
    `period` (their seeds: polars' rolling mean, which the caller takes from the expression itself).

    From the seed on, polars' `ewm_mean(alpha, adjust=False)` updates mean += (x - mean) * (alpha / weight), the
    weight being (1 - alpha) + alpha, the order of operations kept here.
    """
    n = close.shape[0]
    out[: min(period, n)] = np.nan
    if n <= period:
        return
    alpha = 1 / period
    step = alpha / ((1.0 - alpha) + alpha)
    out[period] = _rsi(gain, loss)
    for i in range(period + 1, n):
        change = close[i] - close[i - 1]
        gain = gain + (max(change, 0.0) - gain) * step
        loss = loss + (max(-change, 0.0) - loss) * step
        out[i] = _rsi(gain, loss)


@jit
def _rsi(gain: float, loss: float) -> float:
    total = gain + loss
    if total > 0:
        return 100 * gain / total
    return 50.0 if total == 0 else np.nan


@jit
def threshold_targets(values: np.ndarray, below: float, above: float, when_below: int, when_above: int,
                      out: np.ndarray) -> None:
    """`hold(when(values < below).then(when_below).when(values > above).then(when_above))`, nulls filled with 0:
    the last decision is kept where neither threshold is crossed (flat before the first). NaN compares false, as a
    null decides nothing."""
    target = 0
    for i in range(out.shape[0]):
        if values[i] < below:
            target = when_below
        elif values[i] > above:
            target = when_above
        out[i] = target


@jit
def breakout_targets(close: np.ndarray, highs: np.ndarray, lows: np.ndarray, span: int, lookback: int,
                     out: np.ndarray) -> None:
    """donchian_breakout's target: `hold(when(close > prior_high).then(1).when(close < prior_low).then(-1))`, nulls
    filled with 0, where prior_high at bar i is the highest high of bars i - lookback..i - 1 (`rolling_max` shifted
    one bar; null for the first `lookback` bars, which decide nothing). `highs` and `lows` are `SparseExtremes`
    levels of run length `span`: the window is their runs starting at i - lookback and at i - span."""
    n = out.shape[0]
    out[: min(lookback, n)] = 0
    target = 0
    for i in range(lookback, n):
        if close[i] > max(highs[i - lookback], highs[i - span]):
            target = 1
        elif close[i] < min(lows[i - lookback], lows[i - span]):
            target = -1
        out[i] = target
