"""The built-in strategies' rules inside the kernel, one block of bars at a time: no signal row per combination.

Every built-in signal is `hold(when(up condition).then(up).when(down condition).then(down))`: a crossover goes long
where the fast average is above the slow one and short (flat in long-only mode) where it is below; rsi_reversion
long where RSI is under its lower level and flat where it is over its upper one; donchian_breakout long where the
close breaks above its channel and short where it breaks below. A grid here computes, for each block of bars, the
indicator values the block needs (each distinct average, RSI or channel table once, into arrays of block size that
stay in cache), writes each combination's two decision masks from them (`indicators`' functions, the same ones the
strategies' `grid_targets` hold into signal rows, so the hooks' bit-for-bit tests cover them), and `kernel.advance`
walks the combination through the block on its masks: holding the last decision is the run-end scan the kernel
makes anyway. Going through signal rows instead wrote and read back a combinations x bars array (64 MB for a
1M-bar grid of 64 RSI combinations), built every indicator row of the whole series first, and held each row's
decisions in a serial loop.

Every grid takes the kernel's inputs (opens, closes, int64 times) and its rule's, and returns the final (state_f,
state_i) of each combination, in the order of its per-combination arrays.
"""

from __future__ import annotations

import numpy as np

from ibkr_flows.backtest.grid import indicators, kernel
from ibkr_flows.backtest.grid.charges import CommissionRule, SizingRule
from ibkr_flows.backtest.grid.compiled import jit

AVERAGE_ROWS, AVERAGE_SMA, AVERAGE_EMA = 0, 1, 2
"""Where `crossover_grid` gets a block's moving averages: ROWS copies them from rows computed beforehand (a
crossover known only by its polars `average`), SMA computes them from the running sums of the closes, EMA from the
closes (`indicators.sma_block`, `ema_block`)."""


@jit
def crossover_grid(open_: np.ndarray, close: np.ndarray, ts: np.ndarray, source: np.ndarray, kind: int,
                   periods: np.ndarray, fast: np.ndarray, slow: np.ndarray, settings: kernel.Settings,
                   commission: CommissionRule, sizing: SizingRule, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair k compares the averages of periods[fast[k]] and periods[slow[k]] (`AverageCrossover`'s trend rule).

    `source` is what `kind` reads: the averages' rows (one per period, NaN where undefined), or one row, the
    running sums of the closes (SMA); EMA reads the closes. Under entry "cross" a pair's masks are blank until its
    first crossing (`indicators.first_crossing`, found block by block): from there on every change of side is a
    crossing, so the state rule's masks are the crossing rule's.
    """
    n = close.shape[0]
    pairs = fast.shape[0]
    state_f, state_i = kernel.initial_state(pairs, settings)
    armed = np.full(pairs, -1 if settings.cross_entry else 0, dtype=np.int64)  # the first bar whose masks count
    side = np.zeros(pairs, dtype=np.int64)  # until then, where fast last was against slow
    averages = np.empty((periods.shape[0], block))
    means = np.empty(periods.shape[0])
    above, below = _masks(block)
    above_bytes, below_bytes = above.view(np.uint8), below.view(np.uint8)
    no_targets = np.zeros(0, dtype=np.int8)
    short = 0 if settings.long_only else -1  # engine.held_positions: a -1 target is flat in long-only mode
    for start in range(0, n, block):
        stop = min(start + block, n)
        m = stop - start
        if kind == AVERAGE_SMA:
            indicators.sma_block(source[0], periods, start, stop, averages)
        elif kind == AVERAGE_EMA:
            indicators.ema_block(close, periods, start, stop, means, averages)
        else:
            averages[:, :m] = source[:, start:stop]
        opens, closes = open_[start:stop], close[start:]  # closes to the end of the series: `kernel.advance`
        for k in range(pairs):
            f, s = averages[fast[k], :m], averages[slow[k], :m]
            if armed[k] < 0:
                crossing, now = indicators.first_crossing(f, s, side[k])
                armed[k], side[k] = -1 if crossing < 0 else start + crossing, now
            indicators.crossing_masks(f, s, (stop if armed[k] < 0 else armed[k]) - start, above_bytes, below_bytes)
            kernel.advance(start, n, opens, closes, ts, above, below, no_targets, 1, short, state_f[k], state_i[k],
                           settings, commission, sizing)
    return state_f, state_i


@jit
def rsi_grid(open_: np.ndarray, close: np.ndarray, ts: np.ndarray, periods: np.ndarray, gains: np.ndarray,
             losses: np.ndarray, row: np.ndarray, lower: np.ndarray, upper: np.ndarray, settings: kernel.Settings,
             commission: CommissionRule, sizing: SizingRule, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Combination k: RSI of periods[row[k]] against lower[k] and upper[k] (`RsiReversion`'s rule, long only by
    design: its "down" is flat in both modes). `gains` and `losses` are each period's Wilder seeds
    (`rsi_reversion.wilder_seeds`); they are copied, not consumed."""
    n = close.shape[0]
    count = row.shape[0]
    state_f, state_i = kernel.initial_state(count, settings)
    gains, losses = gains.copy(), losses.copy()
    rsi = np.empty((periods.shape[0], block))
    sides = np.zeros((count, 2), dtype=np.int64)  # entry "cross": where RSI last was against each level
    above, below = _masks(block)
    above_bytes, below_bytes = above.view(np.uint8), below.view(np.uint8)
    no_targets = np.zeros(0, dtype=np.int8)
    for start in range(0, n, block):
        stop = min(start + block, n)
        indicators.rsi_block(close, periods, start, stop, gains, losses, rsi)
        opens, closes = open_[start:stop], close[start:]  # closes to the end of the series: `kernel.advance`
        for k in range(count):
            indicators.threshold_masks(rsi[row[k], :stop - start], lower[k], upper[k], settings.cross_entry,
                                       sides[k], above_bytes, below_bytes)
            kernel.advance(start, n, opens, closes, ts, above, below, no_targets, 1, 0, state_f[k], state_i[k],
                           settings, commission, sizing)
    return state_f, state_i


@jit
def breakout_grid(open_: np.ndarray, close: np.ndarray, ts: np.ndarray, high: np.ndarray, low: np.ndarray,
                  lookbacks: np.ndarray, settings: kernel.Settings, commission: CommissionRule, sizing: SizingRule,
                  block: int) -> tuple[np.ndarray, np.ndarray]:
    """Combination k: the Donchian channel of lookbacks[k] bars (`DonchianBreakout`'s rule). Each block builds one
    sparse table of the highs and one of the lows (`indicators.extremes_block`) over the block and the longest
    lookback's bars before it, and every lookback reads its channel from them."""
    n = close.shape[0]
    count = lookbacks.shape[0]
    state_f, state_i = kernel.initial_state(count, settings)
    longest = lookbacks.max()
    levels = indicators.extremes_levels(longest)
    highs, lows = np.empty((levels, block + longest)), np.empty((levels, block + longest))
    above, below = _masks(block)
    above_bytes, below_bytes = above.view(np.uint8), below.view(np.uint8)
    no_targets = np.zeros(0, dtype=np.int8)
    short = 0 if settings.long_only else -1
    for start in range(0, n, block):
        stop = min(start + block, n)
        lo = max(start - longest, 0)
        indicators.extremes_block(high, lo, stop, True, highs)
        indicators.extremes_block(low, lo, stop, False, lows)
        opens, closes = open_[start:stop], close[start:]  # closes to the end of the series: `kernel.advance`
        for k in range(count):
            indicators.breakout_masks(close, highs, lows, lo, start, stop, lookbacks[k], above_bytes, below_bytes)
            kernel.advance(start, n, opens, closes, ts, above, below, no_targets, 1, short, state_f[k], state_i[k],
                           settings, commission, sizing)
    return state_f, state_i


@jit
def _masks(block: int) -> tuple[np.ndarray, np.ndarray]:
    """Two masks of one byte per bar of a block, as uint64 words (`kernel.advance` scans them eight bars at a
    time), with a spare word: a scan may read one word past the block's last bar."""
    return np.zeros(block // 8 + 1, dtype=np.uint64), np.zeros(block // 8 + 1, dtype=np.uint64)
