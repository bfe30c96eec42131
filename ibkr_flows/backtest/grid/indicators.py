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
def ema_rows(close: np.ndarray, periods: np.ndarray, out: np.ndarray) -> None:
    """ema_crossover.ema of `close` for each period into the rows of `out` (NaN where null): polars'
    `ewm_mean(span=p, adjust=False, min_samples=p)`, seeded with the first value, then mean += (x - mean) * (alpha /
    ((1 - alpha) + alpha)) with alpha = 2 / (p + 1), its order of operations.

    All periods advance together, bar by bar: each average is a serial chain (~4 ms per million bars alone), and
    interleaving independent chains lets the CPU overlap them (9 averages of 1M bars: ~9 ms, polars ~45 ms).
    """
    n = close.shape[0]
    rows = periods.shape[0] if n else 0
    steps = np.empty(rows)
    means = np.empty(rows)
    for k in range(rows):
        alpha = 2.0 / (periods[k] + 1.0)
        steps[k] = alpha / ((1.0 - alpha) + alpha)
        means[k] = close[0]
    for i in range(n):
        x = close[i]
        for k in range(rows):
            if i > 0:
                means[k] = means[k] + (x - means[k]) * steps[k]
            out[k, i] = means[k] if i >= periods[k] - 1 else np.nan


@jit
def sma_rows(running: np.ndarray, periods: np.ndarray, out: np.ndarray) -> None:
    """sma_crossover.sma from the running sum of the values (`numpy.cumsum`, polars' `cum_sum` order) into the rows
    of `out`: (running[i] - running[i - p]) * (1 / p), running[p - 1] * (1 / p) first, NaN before, one pass per
    row (numpy took two, a subtraction then a multiplication in place)."""
    n = running.shape[0]
    for k in range(periods.shape[0]):
        p = periods[k]
        scale = 1 / p
        row = out[k]
        for i in range(min(p - 1, n)):
            row[i] = np.nan
        if p - 1 < n:
            row[p - 1] = running[p - 1] * scale
        for i in range(p, n):
            row[i] = (running[i] - running[i - p]) * scale


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
def threshold_targets(values: np.ndarray, below: float, above: float, when_below: int, when_above: int, cross: bool,
                      out: np.ndarray) -> None:
    """`hold(when(values < below).then(when_below).when(values > above).then(when_above))`, nulls filled with 0:
    the last decision is kept where neither threshold is crossed (flat before the first). NaN compares false, as a
    null decides nothing. With `cross` (entry "cross", `strategies.base.above`), a level decides only on the bar
    where the values cross it: beyond it now, on its other side at the last bar that was not on it."""
    target = 0
    side_below = 0  # where the values last were against `below`: -1 under it, 1 over it, 0 never seen
    side_above = 0
    for i in range(out.shape[0]):
        value = values[i]
        if value < below and (not cross or side_below == 1):
            target = when_below
        elif value > above and (not cross or side_above == -1):
            target = when_above
        out[i] = target
        if value < below:
            side_below = -1
        elif value > below:
            side_below = 1
        if value < above:
            side_above = -1
        elif value > above:
            side_above = 1


@jit
def trend_targets(fast: np.ndarray, slow: np.ndarray, cross: bool, out: np.ndarray) -> None:
    """`strategies.base.trend_target` of two averages (NaN where null): 1 while fast > slow, -1 while below, a tie
    or a NaN keeps the last side (flat before the first). With `cross` (entry "cross") nothing is decided before
    the first crossing, where the averages are strictly on the other side than at the last bar they differed; from
    there on every change of side is a crossing, so the state rule applies."""
    side = 0  # where fast last was against slow: 1 above, -1 below, 0 never seen
    armed = not cross
    target = 0
    for i in range(out.shape[0]):
        now = 1 if fast[i] > slow[i] else (-1 if fast[i] < slow[i] else 0)
        if now != 0:
            armed = armed or (side != 0 and now != side)
            side = now
            if armed:
                target = now
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
    for i in range(lookback, n):  # selects, not branches: a breakout is as likely as not where it matters
        up = close[i] > max(highs[i - lookback], highs[i - span])
        down = close[i] < min(lows[i - lookback], lows[i - span])
        target = 1 if up else (-1 if down else target)
        out[i] = target
