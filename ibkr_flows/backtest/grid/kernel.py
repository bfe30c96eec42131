"""The crossover grid kernel: every (fast, slow) pair run through the engine's fill loop in one numba pass.

It is a transcription of `engine.held_positions` + `engine.simulate` + the sums behind `metrics.compute_metrics`,
operation for operation in the same order (slippage, commission, whole-share sizing, cash updates, equity marks,
per-bar returns), so every fill, share count and equity value is bit-identical to the engine's. Metrics are
accumulated while streaming instead of from a stored equity curve (running sums of returns and squared returns, the
running peak and the longest stretch below it, trade sums), so memory is O(pairs), not O(pairs x bars).

Cache blocking: bars are processed in blocks, and within a block every pair advances before the next block, so
the block's moving averages are read from cache by all pairs instead of streamed from RAM once per pair. Each
pair's state lives in a row of two arrays between blocks. Within a block a pair is walked from fill to fill
(see `_advance`), not bar by bar: fills are rare, and between two of them shares and cash are constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np

# Commission kinds: NONE is NoCommission, PER_SHARE is IBKR's schedule (Fixed or Tiered), PERCENT a value fraction.
COMMISSION_NONE, COMMISSION_PER_SHARE, COMMISSION_PERCENT = 0, 1, 2
# Sizing kinds: AllIn, FixedShares, FixedFraction.
SIZING_ALL_IN, SIZING_FIXED_SHARES, SIZING_FIXED_FRACTION = 0, 1, 2

# Float state per pair, row layout of the `state_f` array.
(F_CASH, F_ENTRY_PRICE, F_ENTRY_FEE, F_PREV_EQUITY, F_PEAK, F_MIN_PEAK_RATIO, F_SUM_R, F_SUM_R2, F_SUM_DOWN2,
 F_GROSS_PROFIT, F_GROSS_LOSS, F_SUM_PNL, F_SUM_RETURN_PCT, F_BEST_PCT, F_WORST_PCT, F_COMMISSIONS) = range(16)
N_FLOAT = 16
# Integer state per pair, row layout of the `state_i` array.
(I_SHARES, I_SIDE, I_SIGNAL, I_HELD, I_LAST_PEAK, I_LONGEST_UNDERWATER, I_EXPOSED, I_TRADES, I_WINS) = range(9)
N_INT = 9


class CommissionRule(NamedTuple):
    """The commission model as the kernel charges it: `kind` picks the formula, the fields it does not use are 0.
    A record, not a model object, because numba compiles named tuples (as plain structs) but not dataclasses."""

    kind: int  # COMMISSION_NONE, COMMISSION_PER_SHARE or COMMISSION_PERCENT
    per_share: float
    minimum: float
    max_rate: float
    rate: float


class SizingRule(NamedTuple):
    """The sizing model: `kind` picks the rule, `fixed_shares` is FixedShares' count, `fraction` FixedFraction's."""

    kind: int  # SIZING_ALL_IN, SIZING_FIXED_SHARES or SIZING_FIXED_FRACTION
    fixed_shares: int
    fraction: float


class Settings(NamedTuple):
    """The rest of the `BacktestConfig` every pair shares: starting cash, mode (long only or not) and slippage."""

    long_only: bool
    cash: float
    slippage_bps: float


def _jit(function: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Compile with an on-disk cache (compilation takes seconds and would otherwise be paid by every process,
    e.g. each Prefect task); without a writable cache location, compile per process instead of failing. The GIL
    is released so that threads (the evaluator's, Prefect's thread task runner) run pairs on every core: numba's
    own `parallel=True` is not used because its default threading layer aborts when called from two threads.
    `options` go to numba (`@_jit(fastmath=...)`)."""
    if function is None:
        return lambda f: _jit(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, **options)(function)


@_jit
def _commission(commission: CommissionRule, shares: int, price: float) -> float:
    """costs.IBKRFixed / IBKRTiered (`_per_share_order`), PercentCommission, NoCommission."""
    if commission.kind == COMMISSION_PER_SHARE:
        if shares == 0:
            return 0.0
        return min(max(shares * commission.per_share, commission.minimum), commission.max_rate * shares * price)
    if commission.kind == COMMISSION_PERCENT:
        return commission.rate * shares * price
    return 0.0


@_jit
def _affordable_shares(budget: float, price: float, commission: CommissionRule) -> int:
    """sizing.affordable_shares, step for step."""
    if budget <= 0 or price <= 0:
        return 0
    shares = int(np.floor(budget / price))
    while shares > 0:
        excess = shares * price + _commission(commission, shares, price) - budget
        if not excess > 0:
            break
        shares -= max(1, int(np.ceil(excess / price)))
    shares = max(shares, 0)
    while (shares + 1) * price + _commission(commission, shares + 1, price) <= budget:
        shares += 1
    return shares


@_jit
def _size(cash: float, price: float, sizing: SizingRule, commission: CommissionRule) -> int:
    """sizing.AllIn / FixedShares / FixedFraction."""
    if sizing.kind == SIZING_FIXED_FRACTION:
        return _affordable_shares(sizing.fraction * cash, price, commission)
    affordable = _affordable_shares(cash, price, commission)
    if sizing.kind == SIZING_FIXED_SHARES:
        return min(sizing.fixed_shares, affordable)
    return affordable


@_jit
def crossover_grid(open_: np.ndarray, close: np.ndarray, ts: np.ndarray, averages: np.ndarray, fast: np.ndarray,
                   slow: np.ndarray, settings: Settings, commission: CommissionRule, sizing: SizingRule, block: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Run pair k = (averages[fast[k]], averages[slow[k]]) for every k; returns the final (state_f, state_i).

    `averages` rows are moving averages of `close`, NaN where undefined; `ts` is int64 in the bars' time unit.
    """
    n = close.shape[0]
    pairs = fast.shape[0]
    state_f = np.zeros((pairs, N_FLOAT))
    state_i = np.zeros((pairs, N_INT), dtype=np.int64)
    state_f[:, F_CASH] = settings.cash
    state_f[:, F_PEAK] = settings.cash
    state_f[:, F_MIN_PEAK_RATIO] = 1.0
    state_f[:, F_BEST_PCT] = -np.inf
    state_f[:, F_WORST_PCT] = np.inf
    above = np.zeros(block // 8 + 1, dtype=np.uint64)  # the block's crossing masks, see _run_end
    below = np.zeros_like(above)
    for start in range(0, n, block):
        stop = min(start + block, n)
        opens = open_[start:stop]
        closes = close[start:stop]
        for k in range(pairs):
            _advance(start, n, opens, closes, ts, averages[fast[k], start:stop], averages[slow[k], start:stop],
                     above, below, state_f[k], state_i[k], settings, commission, sizing)
    return state_f, state_i


@_jit
def _advance(start: int, n: int, opens: np.ndarray, closes: np.ndarray, ts: np.ndarray, fast: np.ndarray,
             slow: np.ndarray, above: np.ndarray, below: np.ndarray, sf: np.ndarray, si: np.ndarray, settings: Settings,
             commission: CommissionRule, sizing: SizingRule) -> None:
    """One pair over one block of bars (global bars start..start + len(closes)), state in and out of sf/si.

    Per bar, in the engine's order: the target held during the bar is the previous close's signal (flat on the
    first and last bar); a change of target fills at this bar's open (close the old position, then open the new
    one sized from the cash left); the account is marked at the close; then this close's signal is decided. The
    signal is stored already clipped to the mode: in long-only mode a tie then keeps "flat" where the engine keeps
    -1 and clips it, the same target.

    The bars are walked in runs: the block's comparisons of the two averages are made up front (a vectorized
    loop), `_run_end` finds the first close after a fill whose signal changes the target, eight bars per step, and
    the bars up to it hold the same shares and cash. A flat run's equity is its cash on every bar, so only its
    first bar is marked (returns 0, the same side of the peak throughout): in long-only mode about half the bars
    cost nothing but their comparisons. A held run's returns are summed four bars at a time (`_held_run`); its
    bars go through the peak rules one by one only if one of them may set a new peak or a new low.
    """
    cash, entry_price, entry_fee = sf[F_CASH], sf[F_ENTRY_PRICE], sf[F_ENTRY_FEE]
    prev_equity, peak, min_ratio = sf[F_PREV_EQUITY], sf[F_PEAK], sf[F_MIN_PEAK_RATIO]
    sum_r, sum_r2, sum_down2 = sf[F_SUM_R], sf[F_SUM_R2], sf[F_SUM_DOWN2]
    low_water = _low_water(peak, min_ratio)
    shares, side, signal, held = si[I_SHARES], si[I_SIDE], si[I_SIGNAL], si[I_HELD]
    last_peak, longest, exposed = si[I_LAST_PEAK], si[I_LONGEST_UNDERWATER], si[I_EXPOSED]
    short = 0 if settings.long_only else -1  # engine.held_positions: a -1 target is flat in long-only mode
    m = closes.shape[0]
    above_bytes, below_bytes = above.view(np.uint8), below.view(np.uint8)
    for j in range(m):
        above_bytes[j] = fast[j] > slow[j]
        below_bytes[j] = fast[j] < slow[j]
    last = min(m, n - 1 - start) - 1  # a run ends here at the latest: bar n - 1 is always flat, a run of its own
    j = 0
    while j < m:
        bar = start + j
        target = 0 if bar == n - 1 else signal
        if target != held:
            price = opens[j]
            if shares != 0:
                fill = price * (1 + (-side) * settings.slippage_bps / 10_000)
                fee = _commission(commission, abs(shares), fill)
                cash += shares * fill - fee
                _record_trade(sf, si, side * abs(shares) * (fill - entry_price) - (entry_fee + fee),
                              abs(shares) * entry_price, entry_fee + fee)
                shares = 0
            if target != 0:
                fill = price * (1 + target * settings.slippage_bps / 10_000)
                size = _size(cash, fill, sizing, commission)
                if size:
                    entry_fee = _commission(commission, size, fill)
                    cash -= target * size * fill + entry_fee
                    shares, side, entry_price = target * size, target, fill
            held = target
        e = _run_end(above, below, j, last, held != 1, held != short)  # the run: bars j..e hold these shares
        if fast[e] > slow[e]:
            signal = 1
        elif fast[e] < slow[e]:
            signal = short
        equity = cash + shares * closes[j]  # the run's first bar: its return is against the bar before it
        if bar > 0 and equity != prev_equity:  # else the return is exactly 0 and adds nothing
            r = equity / prev_equity - 1
            sum_r += r
            sum_r2 += r * r
            down = min(r, 0.0)
            sum_down2 += down * down
        prev_equity = equity
        marked = j + 1  # bars j..marked - 1 go through the peak rules one by one
        if shares != 0 and e > j:  # the rest of a held run
            run_r, run_r2, run_down2, touched = _held_run(
                closes, j + 1, e + 1, cash, float(shares), peak,
                max(low_water, _low_water(max(peak, equity), min_ratio)))  # the highest low-water after bar j
            sum_r += run_r
            sum_r2 += run_r2
            sum_down2 += run_down2
            if touched:
                marked = e + 1
            prev_equity = cash + shares * closes[e]
        for b in range(j, marked):
            equity = cash + shares * closes[b]
            if equity >= peak:  # drawdown exactly 0: metrics.max_drawdown_duration's "at peak"
                if start + b > last_peak + 1:
                    longest = max(longest, ts[start + b] - ts[last_peak])
                peak, last_peak = equity, start + b
                low_water = _low_water(peak, min_ratio)
            elif equity < low_water:
                min_ratio = min(min_ratio, equity / peak)
                low_water = _low_water(peak, min_ratio)
        if shares != 0:
            exposed += e - j + 1
        elif e > j and equity >= peak:  # a flat run at the peak stays there to its end
            last_peak = start + e
        j = e + 1
    sf[F_CASH], sf[F_ENTRY_PRICE], sf[F_ENTRY_FEE] = cash, entry_price, entry_fee
    sf[F_PREV_EQUITY], sf[F_PEAK], sf[F_MIN_PEAK_RATIO] = prev_equity, peak, min_ratio
    sf[F_SUM_R], sf[F_SUM_R2], sf[F_SUM_DOWN2] = sum_r, sum_r2, sum_down2
    si[I_SHARES], si[I_SIDE], si[I_SIGNAL], si[I_HELD] = shares, side, signal, held
    si[I_LAST_PEAK], si[I_LONGEST_UNDERWATER], si[I_EXPOSED] = last_peak, longest, exposed
    if start + closes.shape[0] == n and n - 1 > last_peak + 1:  # underwater to the end: the last bar closes it
        si[I_LONGEST_UNDERWATER] = max(longest, ts[n - 1] - ts[last_peak])


@_jit(error_model="numpy", fastmath={"reassoc", "nsz"})
def _held_run(closes: np.ndarray, lo: int, hi: int, cash: float, shares: float, peak: float, low_water: float
              ) -> tuple[float, float, float, bool]:
    """Bars lo..hi - 1 of a held run (same shares, same cash): the sums of their returns, squared returns and
    squared downside returns, and whether any may set a new peak or a new low (given the lowest peak and the
    highest low-water mark the bars before them can have left).

    Reassociating the sums (the `reassoc` flag) lets the loop run four bars per instruction, divisions included;
    the sums are not bit-identical to the engine's anyway (numpy sums pairwise). The peak test has a 1e-12
    margin so that no rounding can hide a bar that the exact, bar-by-bar peak rules must see.
    """
    near_peak = peak - abs(peak) * 1e-12
    near_low = low_water + abs(low_water) * 1e-12
    sum_r = 0.0
    sum_r2 = 0.0
    sum_down2 = 0.0
    touched = 0
    run = closes[lo - 1:hi]  # from 1: numba's negative-index check on run[b - 1] would stop vectorization
    for b in range(1, run.shape[0]):
        equity = cash + shares * run[b]
        r = equity / (cash + shares * run[b - 1]) - 1
        sum_r += r
        sum_r2 += r * r
        down = min(r, 0.0)
        sum_down2 += down * down
        touched += (equity >= near_peak) | (equity < near_low)
    return sum_r, sum_r2, sum_down2, touched > 0


@_jit
def _low_water(peak: float, min_ratio: float) -> float:
    """An equity at or above this cannot set a new minimum of equity / peak: it is above peak * min_ratio by
    1e-15 relative, more than the few roundings in between, so the division is skipped on all but new lows."""
    level = peak * min_ratio
    return level + abs(level) * 1e-15


@_jit
def _record_trade(sf: np.ndarray, si: np.ndarray, pnl: float, entry_value: float, commission: float) -> None:
    """engine._trades_frame's pnl and return_pct, folded into metrics.trade_stats' sums."""
    return_pct = pnl / entry_value * 100
    si[I_TRADES] += 1
    if pnl > 0:
        si[I_WINS] += 1
        sf[F_GROSS_PROFIT] += pnl
    elif pnl < 0:
        sf[F_GROSS_LOSS] += pnl
    sf[F_SUM_PNL] += pnl
    sf[F_SUM_RETURN_PCT] += return_pct
    sf[F_BEST_PCT] = max(sf[F_BEST_PCT], return_pct)
    sf[F_WORST_PCT] = min(sf[F_WORST_PCT], return_pct)
    sf[F_COMMISSIONS] += commission


ALL_BYTES = np.uint64(0xFFFFFFFFFFFFFFFF)
FROM_BYTE = np.array([ALL_BYTES << np.uint64(8 * b) for b in range(8)], dtype=np.uint64)
"""FROM_BYTE[b]: the bytes b..7 of a word."""


@_jit
def _run_end(above: np.ndarray, below: np.ndarray, j: int, last: int, watch_above: bool, watch_below: bool) -> int:
    """The first bar in j..last whose close changes the signal, else last (j if j >= last).

    `above` and `below` hold one byte per bar of the block, 1 where fast > slow (resp. fast < slow), eight bars to
    a word; the signal changes where a watched mask has a 1 (a cross above changes nothing while long, and so on),
    so runs are skipped a word at a time. Bytes past `last` may be stale: a hit there is clipped to `last`.
    """
    if j >= last:
        return j
    watched_above = ALL_BYTES if watch_above else np.uint64(0)
    watched_below = ALL_BYTES if watch_below else np.uint64(0)
    word, final = np.uint64(j >> 3), np.uint64(last >> 3)  # unsigned: numba skips its negative-index check
    hits = ((above[word] & watched_above) | (below[word] & watched_below)) & FROM_BYTE[j & 7]
    while hits == 0 and word < final:
        word += np.uint64(1)
        hits = (above[word] & watched_above) | (below[word] & watched_below)
    if hits == 0:
        return last
    byte = 0
    while (hits >> np.uint64(8 * byte)) & np.uint64(1) == 0:
        byte += 1
    return min(int(word) * 8 + byte, last)
