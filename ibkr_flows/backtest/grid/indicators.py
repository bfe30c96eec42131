"""Numba twins of the built-in strategies' indicators and decision rules, for `Strategy.grid_targets` and the
kernel's built-in grids (`builtin`).

Each function reproduces a polars expression of a strategy operation for operation, so a grid's signals are the
engine's bit for bit (tests/test_grid_strategies.py compares them on random series): compiled, a grid computes an
indicator in a few ms per million bars where the polars expression takes ~0.1-0.4 s, and each distinct indicator
once for every combination that shares it. The indicators are computed for a range of bars (`start`..`stop`) with
their state carried from the range before, so that the kernel can compute them one block of bars at a time, in
cache, instead of writing and reading back a row of the whole series per indicator.
"""

from __future__ import annotations

import numpy as np

from ibkr_flows.backtest.grid.compiled import jit


@jit
def ema_block(close: np.ndarray, periods: np.ndarray, start: int, stop: int, means: np.ndarray, out: np.ndarray
              ) -> None:
    """ema_crossover.ema of bars start..stop - 1 for each period into the rows of `out` (NaN where null): polars'
    `ewm_mean(span=p, adjust=False, min_samples=p)`, seeded with the first value, then mean += (x - mean) * (alpha /
    ((1 - alpha) + alpha)) with alpha = 2 / (p + 1), its order of operations. `means` carries each average from
    the range before (seeded here when `start` is 0).

    Each average is a serial chain (~4 ms per million bars alone), so four advance together, bar by bar, in
    registers, and the CPU overlaps their chains (9 averages of 1M bars: ~7 ms; all nine together through the
    `means` array: ~15 ms; polars ~45 ms).
    """
    rows = periods.shape[0]
    closes = close[start:stop]
    if start == 0 < stop:
        means[:] = close[0]
        out[:, 0] = close[0]
        closes = close[1:stop]
    into = out[:, stop - start - closes.shape[0]:]  # bar 0 is the seed, written above
    for k in range(0, rows, 4):
        # four rows at a time, a row repeated when fewer are left: computed twice, the same bits written twice
        a, b, c, d = k, min(k + 1, rows - 1), min(k + 2, rows - 1), min(k + 3, rows - 1)
        step_a, step_b, step_c, step_d = (_ema_step(periods[a]), _ema_step(periods[b]), _ema_step(periods[c]),
                                          _ema_step(periods[d]))
        mean_a, mean_b, mean_c, mean_d = means[a], means[b], means[c], means[d]
        for t in range(closes.shape[0]):
            x = closes[t]
            mean_a = mean_a + (x - mean_a) * step_a
            mean_b = mean_b + (x - mean_b) * step_b
            mean_c = mean_c + (x - mean_c) * step_c
            mean_d = mean_d + (x - mean_d) * step_d
            into[a, t], into[b, t], into[c, t], into[d, t] = mean_a, mean_b, mean_c, mean_d
        means[a], means[b], means[c], means[d] = mean_a, mean_b, mean_c, mean_d
    for k in range(rows):  # null until `period` values
        out[k, :max(min(periods[k] - 1, stop) - start, 0)] = np.nan


@jit
def _ema_step(period: int) -> float:
    """ewm_mean's update weight for span `period`: alpha / ((1 - alpha) + alpha), alpha = 2 / (period + 1)."""
    alpha = 2.0 / (period + 1.0)
    return alpha / ((1.0 - alpha) + alpha)


@jit
def running_sums(values: np.ndarray) -> np.ndarray:
    """`numpy.cumsum` (and polars' `cum_sum`): one sum after another, the same bits, compiled (numpy's accumulate
    took ~3 ns a value, ~0.3 ms per 100k bars, more than a small grid's kernel)."""
    return np.cumsum(values)


@jit
def sma_block(running: np.ndarray, periods: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """sma_crossover.sma of bars start..stop - 1, from the running sums of the values (`running_sums`, polars'
    `cum_sum` order), into the rows of `out`: (running[i] - running[i - p]) * (1 / p), running[p - 1] * (1 / p)
    first, NaN before, one pass per row (numpy took two, a subtraction then a multiplication in place)."""
    for k in range(periods.shape[0]):
        p = periods[k]
        scale = 1 / p
        row = out[k]
        for i in range(start, min(p - 1, stop)):
            row[i - start] = np.nan
        if start <= p - 1 < stop:
            row[p - 1 - start] = running[p - 1] * scale
        first = max(p, start)
        # slices, indexed from 0: numba checks an index it cannot prove positive for wraparound, which stops the
        # loop from vectorizing
        now, before, into = running[first:stop], running[first - p:stop - p], row[first - start:]
        for i in range(now.shape[0]):
            into[i] = (now[i] - before[i]) * scale


@jit
def rsi_block(close: np.ndarray, periods: np.ndarray, start: int, stop: int, gains: np.ndarray, losses: np.ndarray,
              out: np.ndarray) -> None:
    """rsi_reversion.wilder_rsi of bars start..stop - 1 for each period into the rows of `out` (NaN where null).
    `gains` and `losses` hold each period's two Wilder averages: their seeds (the averages at bar `period`, polars'
    rolling mean, which the caller takes from the expression itself) until the range that reaches that bar, then
    the averages at the range's last bar.

    From the seed on, polars' `ewm_mean(alpha, adjust=False)` updates mean += (x - mean) * (alpha / weight), the
    weight being (1 - alpha) + alpha, the order of operations kept here. All periods advance together, bar by bar,
    their serial chains overlapping (see `ema_block`).
    """
    rows = periods.shape[0]
    steps = np.empty(rows)
    for k in range(rows):
        alpha = 1 / periods[k]
        steps[k] = alpha / ((1.0 - alpha) + alpha)
    for t in range(stop - start):
        i = start + t
        change = close[i] - close[i - 1] if i > 0 else 0.0
        for k in range(rows):
            if i > periods[k]:
                gains[k] = gains[k] + (max(change, 0.0) - gains[k]) * steps[k]
                losses[k] = losses[k] + (max(-change, 0.0) - losses[k]) * steps[k]
            out[k, t] = _rsi(gains[k], losses[k]) if i >= periods[k] else np.nan


@jit
def _rsi(gain: float, loss: float) -> float:
    total = gain + loss
    if total > 0:
        return 100 * gain / total
    return 50.0 if total == 0 else np.nan


RANGE = 1024
"""Bars a whole-series target function decides at a time: its two masks stay in L1."""


@jit
def threshold_masks(values: np.ndarray, lower: float, upper: float, cross: bool, sides: np.ndarray,
                    above: np.ndarray, below: np.ndarray) -> None:
    """rsi_reversion's two decisions on each of `values`, one byte each: 1 in `above` where the value is under
    `lower` (go long), 1 in `below` where it is over `upper` (go flat); NaN decides nothing, as a null. With `cross`
    (entry "cross", `strategies.base.above`) a level decides only where the values cross it: beyond it now, on its
    other side at the last value that was not on it; `sides` carries where the values last were against `lower`
    and `upper` (-1 under, 1 over, 0 never seen) from one range of bars to the next."""
    if not cross:  # a vectorized loop
        for i in range(values.shape[0]):
            above[i] = values[i] < lower
            below[i] = values[i] > upper
        return
    side_lower, side_upper = sides[0], sides[1]
    for i in range(values.shape[0]):
        value = values[i]
        above[i] = value < lower and side_lower == 1
        below[i] = value > upper and side_upper == -1
        if value < lower:
            side_lower = -1
        elif value > lower:
            side_lower = 1
        if value < upper:
            side_upper = -1
        elif value > upper:
            side_upper = 1
    sides[0], sides[1] = side_lower, side_upper


@jit
def crossing_masks(fast: np.ndarray, slow: np.ndarray, armed: int, above: np.ndarray, below: np.ndarray) -> None:
    """`strategies.base.trend_target`'s two decisions on each bar of a range, one byte each: 1 in `above` where
    fast > slow, 1 in `below` where fast < slow (a tie or a NaN decides nothing); 0 in both before bar `armed` of
    the range (entry "cross": no crossing yet, see `first_crossing`). A vectorized loop: the comparisons cost less
    made all at once than one by one inside the kernel's runs."""
    for i in range(fast.shape[0]):
        above[i] = fast[i] > slow[i]
        below[i] = fast[i] < slow[i]
    for i in range(min(max(armed, 0), fast.shape[0])):
        above[i] = 0
        below[i] = 0


@jit
def first_crossing(fast: np.ndarray, slow: np.ndarray, side: int) -> tuple[int, int]:
    """Entry "cross": the first bar of a range where fast and slow are strictly on the other side than at the last
    bar they differed (`strategies.base.above`; NaN and ties decide nothing), -1 if there is none; and the side
    where fast last was against slow (1 above, -1 below, 0 never seen), `side` before the range."""
    for i in range(fast.shape[0]):
        now = 1 if fast[i] > slow[i] else (-1 if fast[i] < slow[i] else 0)
        if now != 0:
            if side != 0 and now != side:
                return i, now
            side = now
    return -1, side


@jit
def extremes_levels(longest: int) -> int:
    """The levels of an `extremes_block` table for windows of up to `longest` bars: 2**(levels - 1) <= longest."""
    levels = 1
    while 1 << levels <= longest:
        levels += 1
    return levels


@jit
def extremes_block(values: np.ndarray, lo: int, hi: int, highest: bool, levels: np.ndarray) -> None:
    """A sparse table of values[lo:hi]: levels[k, x] is the highest (or lowest) of values[lo + x..lo + x + 2**k - 1],
    for every such run inside the range, so that any window is covered by two overlapping runs of the level with
    the largest 2**k not over its length (`breakout_masks` reads them).

    Max and min are exact whatever the order, so any algorithm gives polars' `rolling_max` / `rolling_min`; this
    one is a vectorized loop per level over a range of bars held in cache (a one-pass rolling max is a serial
    chain, ~10x slower, per window). The bars are validated: no NaN.
    """
    levels[0, :hi - lo] = values[lo:hi]
    for k in range(1, levels.shape[0]):
        lower, level = levels[k - 1], levels[k]
        later = lower[1 << (k - 1):]  # a slice, not lower[x + half]: an index numba cannot prove positive keeps
        if highest:                   # its wraparound check, and the loop from vectorizing
            for x in range(hi - lo - (1 << k) + 1):
                level[x] = max(lower[x], later[x])
        else:
            for x in range(hi - lo - (1 << k) + 1):
                level[x] = min(lower[x], later[x])


@jit
def breakout_masks(close: np.ndarray, highs: np.ndarray, lows: np.ndarray, lo: int, start: int, stop: int,
                   lookback: int, above: np.ndarray, below: np.ndarray) -> None:
    """donchian_breakout's two decisions on bars start..stop - 1, one byte each: 1 in `above` where the close is
    over the highest high of the `lookback` bars before it (`rolling_max` shifted one bar), 1 in `below` where it
    is under their lowest low; nothing for the first `lookback` bars of the series, whose channel is null. `highs`
    and `lows` are `extremes_block` tables of the highs and lows from bar `lo` (at most start - lookback): the
    window is their runs starting at bar i - lookback and at bar i - span, span the largest power of 2 in it."""
    level = 0
    while 2 << level <= lookback:
        level += 1
    span = 1 << level
    first = min(max(start, lookback), stop)
    for i in range(first - start):
        above[i] = 0
        below[i] = 0
    # the bars' closes and their windows' two runs, as slices: no negative index to check, so the loop vectorizes
    closes = close[first:stop]
    high_from, high_to = highs[level, first - lookback - lo:], highs[level, first - span - lo:]
    low_from, low_to = lows[level, first - lookback - lo:], lows[level, first - span - lo:]
    ups, downs = above[first - start:], below[first - start:]
    for i in range(closes.shape[0]):
        ups[i] = closes[i] > max(high_from[i], high_to[i])
        downs[i] = closes[i] < min(low_from[i], low_to[i])


@jit
def hold(above: np.ndarray, below: np.ndarray, up: int, down: int, target: int, out: np.ndarray) -> int:
    """`hold(when(above).then(up).when(below).then(down))` over a range of bars, nulls filled with `target` (the
    last decision before the range): each bar's target into `out`; returns the last."""
    for i in range(out.shape[0]):
        target = up if above[i] else (down if below[i] else target)
        out[i] = target
    return target


@jit
def threshold_targets(values: np.ndarray, lower: float, upper: float, cross: bool, out: np.ndarray) -> None:
    """rsi_reversion's target on every bar: `threshold_masks` held, long below `lower`, flat above `upper`."""
    above, below = np.empty(RANGE, dtype=np.uint8), np.empty(RANGE, dtype=np.uint8)
    sides = np.zeros(2, dtype=np.int64)
    target = 0
    for start in range(0, values.shape[0], RANGE):
        stop = min(start + RANGE, values.shape[0])
        threshold_masks(values[start:stop], lower, upper, cross, sides, above, below)
        target = hold(above, below, 1, 0, target, out[start:stop])


@jit
def trend_targets(fast: np.ndarray, slow: np.ndarray, cross: bool, out: np.ndarray) -> None:
    """`strategies.base.trend_target` of two averages (NaN where null) on every bar: `crossing_masks` held, 1 while
    fast > slow, -1 while below. With `cross` (entry "cross") nothing is decided before the first crossing; from
    there on every change of side is a crossing, so the state rule applies."""
    n = out.shape[0]
    armed = 0
    if cross:
        armed = first_crossing(fast, slow, 0)[0]
        armed = n if armed < 0 else armed
    above, below = np.empty(RANGE, dtype=np.uint8), np.empty(RANGE, dtype=np.uint8)
    target = 0
    for start in range(0, n, RANGE):
        stop = min(start + RANGE, n)
        crossing_masks(fast[start:stop], slow[start:stop], armed - start, above, below)
        target = hold(above, below, 1, -1, target, out[start:stop])


@jit
def breakout_targets(close: np.ndarray, high: np.ndarray, low: np.ndarray, lookbacks: np.ndarray, out: np.ndarray
                     ) -> None:
    """donchian_breakout's target for each lookback into the rows of `out`: `breakout_masks` held, 1 after a close
    over the channel, -1 after one under it. The channels' tables are built a range of bars at a time (with the
    longest lookback's bars before it), shared by every lookback."""
    n = close.shape[0]
    longest = lookbacks.max()
    levels = extremes_levels(longest)
    highs, lows = np.empty((levels, RANGE + longest)), np.empty((levels, RANGE + longest))
    above, below = np.empty(RANGE, dtype=np.uint8), np.empty(RANGE, dtype=np.uint8)
    targets = np.zeros(lookbacks.shape[0], dtype=np.int64)
    for start in range(0, n, RANGE):
        stop = min(start + RANGE, n)
        lo = max(start - longest, 0)
        extremes_block(high, lo, stop, True, highs)
        extremes_block(low, lo, stop, False, lows)
        for k in range(lookbacks.shape[0]):
            breakout_masks(close, highs, lows, lo, start, stop, lookbacks[k], above, below)
            targets[k] = hold(above, below, 1, -1, targets[k], out[k, start:stop])
