"""The grid kernel: many combinations run through the engine's fill loop in one numba pass.

The fill loop (`advance`) reads a combination's signals from one of two sources: a target row (the strategy's
signals, -1/0/1 decided at each close, as `Strategy.grid_targets` writes them; `targets_grid` runs those, whatever
the strategy), or two decision masks per block of bars, written by the built-in strategies' rules (`builtin`), so
that their grids never hold a combinations x bars array.

It is a transcription of `engine.held_positions` + `engine.simulate` + the sums behind `metrics.compute_metrics`,
operation for operation in the same order (slippage, commission, whole-share sizing, cash updates, equity marks,
per-bar returns), so every fill, share count and equity value is bit-identical to the engine's. Metrics are
accumulated while streaming instead of from a stored equity curve (running sums of returns and squared returns, the
running peak and the longest stretch below it, trade sums), so memory is O(pairs), not O(pairs x bars).

Cache blocking: bars are processed in blocks, and within a block every pair advances before the next block, so
the block's prices and indicators are read from cache by all pairs instead of streamed from RAM once per pair. Each
pair's state lives in a row of two arrays between blocks. Within a block a pair is walked from fill to fill
(see `advance`), not bar by bar: fills are rare, and between two of them shares and cash are constant.

The walk and every function it calls with arrays are compiled without numba's reference counting (`_nrt=False`:
they allocate nothing, and their callers hold the arrays): an array handed to an inlined helper was otherwise
counted in and out with two atomic instructions at every run, a sixth of the SMA grid's time. (`_nrt` is an
underscored numba option, 0.68's: a numba upgrade must keep it, or the walk runs with the counting again.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

from ibkr_flows.backtest.contract_terms import ON_TICK_TOLERANCE
from ibkr_flows.backtest.grid.charges import CommissionRule, SizingRule, commission_of, entry_size
from ibkr_flows.backtest.grid.compiled import jit as _jit

# Float state per pair, row layout of the `state_f` array.
(F_CASH, F_ENTRY_PRICE, F_ENTRY_FEE, F_PREV_EQUITY, F_PEAK, F_MIN_PEAK_RATIO, F_SUM_R, F_SUM_R2, F_SUM_DOWN2,
 F_GROSS_PROFIT, F_GROSS_LOSS, F_SUM_PNL, F_SUM_RETURN_PCT, F_BEST_PCT, F_WORST_PCT, F_COMMISSIONS) = range(16)
N_FLOAT = 16
# Integer state per pair, row layout of the `state_i` array.
(I_SHARES, I_SIDE, I_SIGNAL, I_HELD, I_LAST_PEAK, I_LONGEST_UNDERWATER, I_EXPOSED, I_TRADES, I_WINS) = range(9)
N_INT = 9


class Settings(NamedTuple):
    """The rest of the `BacktestConfig` every pair shares: starting cash, mode (long only or not), slippage and the
    conventions (`finalize_close`: finalize "close"; `cross_entry`: entry "cross", read by the `builtin` grids only:
    target rows carry their entry already)."""

    long_only: bool
    cash: float
    slippage_bps: float
    finalize_close: bool
    cross_entry: bool
    tick: float
    """The instrument's price grid fills are rounded to (0: none), and `ticks_per_unit` as in `ContractTerms`."""
    ticks_per_unit: int


@_jit
def targets_grid(open_: np.ndarray, close: np.ndarray, ts: np.ndarray, targets: np.ndarray, words: np.ndarray,
                 rows: np.ndarray, settings: Settings, commission: CommissionRule, sizing: SizingRule, block: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Run combination k = the signals in targets[rows[k]] for every k; returns the final (state_f, state_i).

    `targets` is int8, one row per combination and one column per bar (rows padded to a multiple of 8 columns,
    the padding never read as a signal), already clipped to the mode (no -1 in long-only mode); `words` is the
    same memory viewed as uint64, eight bars to a word, so that runs without a change are skipped eight bars at a
    time. `block` must be a multiple of 8.
    """
    n = close.shape[0]
    combinations = rows.shape[0]
    state_f, state_i = initial_state(combinations, settings)
    for start in range(0, n, block):
        stop = min(start + block, n)
        opens = open_[start:stop]
        closes = close[start:]  # to the end of the series: `advance`
        for k in range(combinations):
            block_words = words[rows[k], start >> 3:(stop + 7) >> 3]
            advance(start, n, opens, closes, ts, block_words, block_words, targets[rows[k], start:stop], 0, 0,
                    state_f[k], state_i[k], settings, commission, sizing)
    return state_f, state_i


@_jit
def clip_targets(targets: np.ndarray, long_only: bool) -> bool:
    """Check that every signal is -1, 0 or 1 (False if not) and, in long-only mode, turn -1 into 0 (the engine's
    `held_positions` does the same), in one pass over the rows: numpy's comparisons and maximum took three passes
    and temporaries as large as the rows."""
    flat = targets.reshape(-1)
    valid = True
    for i in range(flat.shape[0]):
        valid &= (flat[i] >= -1) & (flat[i] <= 1)
        if long_only:
            flat[i] = max(flat[i], 0)
    return valid


@_jit
def initial_state(combinations: int, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Every combination's state before the first bar: all cash, at its peak, no trades."""
    state_f = np.zeros((combinations, N_FLOAT))
    state_i = np.zeros((combinations, N_INT), dtype=np.int64)
    state_f[:, F_CASH] = settings.cash
    state_f[:, F_PEAK] = settings.cash
    state_f[:, F_MIN_PEAK_RATIO] = 1.0
    state_f[:, F_BEST_PCT] = -np.inf
    state_f[:, F_WORST_PCT] = np.inf
    return state_f, state_i


@_jit(_nrt=False)
def advance(start: int, n: int, opens: np.ndarray, closes: np.ndarray, ts: np.ndarray, above: np.ndarray,
            below: np.ndarray, targets: np.ndarray, up: int, down: int, sf: np.ndarray, si: np.ndarray,
            settings: Settings, commission: CommissionRule, sizing: SizingRule) -> None:
    """One combination over one block of bars (global bars start..start + len(opens)), state in and out of sf/si.
    `closes` runs from the block's first bar to the end of the series: `held_run` reads past a run's end.

    The signals come from one of two sources: a target row (`targets` non-empty: the block's signals, `above` the
    same bytes as uint64 words, `below`, `up` and `down` unused), or a rule's decision masks (`targets` empty: one
    byte per bar of the block, eight to a word; the signal becomes `up` at a close where `above` is 1, else `down`
    where `below` is 1, and stays as it was where neither is: the `hold(when(...).then(up).when(...).then(down))`
    of every built-in strategy, see `builtin`). `up` and `down` are already clipped to the mode.

    Per bar, in the engine's order: the target held during the bar is the previous close's signal (flat on the first
    bar, and on the last with finalize "close"); a change of target fills at this bar's open (close the old
    position, then open the new one sized from the cash left); the account is marked at the close; then this close's
    signal is decided. The signal is stored already clipped to the mode: in long-only mode a tie then keeps "flat"
    where the engine keeps -1 and clips it, the same target.

    The bars are walked in runs: `_run_end` (or `target_run_end`) finds the first close after a fill whose
    signal changes the target, eight bars per step, and the bars up to it hold the same shares and cash. A flat
    run's equity is its cash on every bar, so only its first bar is marked (returns 0, the same side of the peak
    throughout): in long-only mode about half the bars cost nothing but their comparisons. A held run's bars go
    through `held_run`.
    """
    cash, entry_price, entry_fee = sf[F_CASH], sf[F_ENTRY_PRICE], sf[F_ENTRY_FEE]
    prev_equity, peak, min_ratio = sf[F_PREV_EQUITY], sf[F_PEAK], sf[F_MIN_PEAK_RATIO]
    sum_r, sum_r2, sum_down2 = sf[F_SUM_R], sf[F_SUM_R2], sf[F_SUM_DOWN2]
    low_water = low_water_mark(peak, min_ratio)
    shares, side, signal, held = si[I_SHARES], si[I_SIDE], si[I_SIGNAL], si[I_HELD]
    last_peak, longest, exposed = si[I_LAST_PEAK], si[I_LONGEST_UNDERWATER], si[I_EXPOSED]
    m = opens.shape[0]
    by_target = targets.shape[0] > 0
    above_bytes, below_bytes = above.view(np.uint8), below.view(np.uint8)
    # a run ends here at the latest; with finalize "close" bar n - 1 is always flat, a run of its own
    last = min(m, n - 1 - start) - 1 if settings.finalize_close else m - 1
    j = 0
    while j < m:
        bar = start + j
        target = 0 if bar == n - 1 and settings.finalize_close else signal
        if target != held:
            price = opens[j]
            if shares != 0:
                fill = on_tick(price * (1 + (-side) * settings.slippage_bps / 10_000), -side, settings)
                fee = commission_of(commission, abs(shares), fill)
                cash += shares * fill - fee
                record_trade(sf, si, side * abs(shares) * (fill - entry_price) - (entry_fee + fee),
                              abs(shares) * entry_price, entry_fee + fee)
                shares = 0
            if target != 0:
                fill = on_tick(price * (1 + target * settings.slippage_bps / 10_000), target, settings)
                size = entry_size(cash, fill, sizing, commission)
                if size:
                    entry_fee = commission_of(commission, size, fill)
                    cash -= target * size * fill + entry_fee
                    shares, side, entry_price = target * size, target, fill
            held = target
        if by_target:  # the run: bars j..e hold these shares
            e = target_run_end(above, j, last, held)
            signal = targets[e]
        else:
            e = _run_end(above, below, j, last, held != up, held != down)
            if above_bytes[e]:
                signal = up
            elif below_bytes[e]:
                signal = down
        equity = cash + shares * closes[j]  # the run's first bar: its return is against the bar before it
        if bar > 0:
            sum_r, sum_r2, sum_down2 = bar_return(equity, prev_equity, sum_r, sum_r2, sum_down2)
        prev_equity = equity
        peak, last_peak, longest, min_ratio, low_water = peak_rules(ts, bar, equity, peak, last_peak, longest,
                                                                    min_ratio, low_water)
        if shares != 0:
            if e > j:  # the rest of a held run
                sum_r, sum_r2, sum_down2, peak, last_peak, longest, min_ratio, low_water = held_run(
                    ts, closes, start, j + 1, e + 1, cash, float(shares), sum_r, sum_r2, sum_down2, peak, last_peak,
                    longest, min_ratio, low_water)
                prev_equity = cash + shares * closes[e]
            exposed += e - j + 1
        elif e > j and equity >= peak:  # a flat run at the peak stays there to its end
            last_peak = start + e
        j = e + 1
    sf[F_CASH], sf[F_ENTRY_PRICE], sf[F_ENTRY_FEE] = cash, entry_price, entry_fee
    sf[F_PREV_EQUITY], sf[F_PEAK], sf[F_MIN_PEAK_RATIO] = prev_equity, peak, min_ratio
    sf[F_SUM_R], sf[F_SUM_R2], sf[F_SUM_DOWN2] = sum_r, sum_r2, sum_down2
    si[I_SHARES], si[I_SIDE], si[I_SIGNAL], si[I_HELD] = shares, side, signal, held
    si[I_LAST_PEAK], si[I_LONGEST_UNDERWATER], si[I_EXPOSED] = last_peak, longest, exposed
    if start + m == n and n - 1 > last_peak + 1:  # underwater to the end: the last bar closes it
        si[I_LONGEST_UNDERWATER] = max(longest, ts[n - 1] - ts[last_peak])


@_jit
def on_tick(price: float, side: int, settings: Settings) -> float:
    """`ContractTerms.on_tick`, operation for operation: a fill between two ticks at the worse one."""
    if settings.tick <= 0.0:
        return price
    steps = price / settings.tick
    if abs(steps - np.round(steps)) <= ON_TICK_TOLERANCE * max(1.0, abs(steps)):
        return price
    whole = np.ceil(steps) if side > 0 else np.floor(steps)
    return whole / settings.ticks_per_unit if settings.ticks_per_unit else whole * settings.tick


HELD_CHUNK = 64
"""Bars of a held run summed at once by `_held_sums`: long enough for its vectorized loop, short enough that a
new peak sends only its own chunk, not the whole run, through the peak rules bar by bar."""
HELD_LANES = 16
"""`_held_sums` reads a whole number of this many bars where `closes` has them: a multiple of its vectorized
loop's step (8 measured the same)."""


@_jit(_nrt=False, inline="always")
def held_run(ts: np.ndarray, closes: np.ndarray, first: int, lo: int, hi: int, cash: float, shares: float,
             sum_r: float, sum_r2: float, sum_down2: float, peak: float, last_peak: int, longest: int,
             min_ratio: float, low_water: float) -> tuple[float, float, float, float, int, int, float, float]:
    """Bars lo..hi - 1 of `closes` (global bars first + lo..), held with the same shares and cash after bar lo - 1:
    their returns into the running sums, their equity through the peak rules; returns the sums and the rules'
    state (`peak_rules`' order). Bars of `closes` past hi are read, not counted (`_held_sums`). Inlined where it
    is called (numba's `inline`): a call passed its fifteen arguments and eight results through memory at every
    held run.

    Taken `HELD_CHUNK` bars at a time, the chunk's sums vectorized: its bars go through the exact rules one by one
    only if one of them may reach the peak (as of the chunk's start). If none may but one may set a new low of
    equity / peak, the peak stays for the whole chunk and its lowest equity alone decides: equity (cash + shares x
    close) is monotonic in the close, and so is its division by one peak, so the worst close's equity gives the
    rules' minimum exactly (`peak_rules` skips only bars that cannot set one). Testing the whole run at once and
    replaying it bar by bar sent ~40 % of an RSI grid's held bars through the rules one by one; a bleeding account
    sets new lows all the time.
    """
    for chunk in range(lo, hi, HELD_CHUNK):
        end = min(chunk + HELD_CHUNK, hi)
        r, r2, down2, near_peak, near_low = _held_sums(closes, chunk, end, cash, shares, peak, low_water)
        sum_r += r
        sum_r2 += r2
        sum_down2 += down2
        if near_peak:
            for b in range(chunk, end):
                peak, last_peak, longest, min_ratio, low_water = peak_rules(
                    ts, first + b, cash + shares * closes[b], peak, last_peak, longest, min_ratio, low_water)
        elif near_low:
            worst = closes[chunk]
            for b in range(chunk + 1, end):
                worst = min(worst, closes[b]) if shares > 0 else max(worst, closes[b])
            if cash + shares * worst < low_water:
                min_ratio = min(min_ratio, (cash + shares * worst) / peak)
                low_water = low_water_mark(peak, min_ratio)
    return sum_r, sum_r2, sum_down2, peak, last_peak, longest, min_ratio, low_water


@_jit(error_model="numpy", fastmath={"reassoc", "nsz"}, _nrt=False)
def _held_sums(closes: np.ndarray, lo: int, hi: int, cash: float, shares: float, peak: float, low_water: float
               ) -> tuple[float, float, float, bool, bool]:
    """Bars lo..hi - 1 of a held run (same shares, same cash): the sums of their returns, squared returns and
    squared downside returns, whether any may set a new peak (`peak_rules`: equity at or above `peak`) and whether
    any may set a new low (equity under `low_water`).

    Reassociating the sums (the `reassoc` flag) lets the loop run several bars per instruction, divisions
    included; the sums are not bit-identical to the engine's anyway (numpy sums pairwise). The peak test has a
    1e-12 margin so that no rounding can hide a bar that the exact, bar-by-bar peak rules must see.

    The loop runs over a whole number of `HELD_LANES` bars, those from hi on read from `closes` (up to its end)
    but counted as a return of 0, at neither peak nor low: a held run's length is arbitrary, and the vectorized
    loop's remainder went through two more loops, each one's exit mispredicted at nearly every run.
    """
    near_peak = peak - abs(peak) * 1e-12
    near_low = low_water + abs(low_water) * 1e-12
    sum_r = 0.0
    sum_r2 = 0.0
    sum_down2 = 0.0
    peaks = lows = 0
    count = hi - lo + 1
    run = closes[lo - 1:]  # from 1: numba's negative-index check on run[b - 1] would stop vectorization
    for b in range(1, min((count + HELD_LANES - 2) // HELD_LANES * HELD_LANES + 1, run.shape[0])):
        counted = b < count
        equity = cash + shares * run[b]
        r = equity / (cash + shares * run[b - 1]) - 1 if counted else 0.0
        sum_r += r
        sum_r2 += r * r
        down = min(r, 0.0)
        sum_down2 += down * down
        peaks += counted & (equity >= near_peak)
        lows += counted & (equity < near_low)
    return sum_r, sum_r2, sum_down2, peaks > 0, lows > 0


@_jit
def bar_return(equity: float, prev_equity: float, sum_r: float, sum_r2: float, sum_down2: float
               ) -> tuple[float, float, float]:
    """A bar's return against the bar before it into the running sums of returns, squared returns and squared
    downside returns (metrics.sharpe and sortino's inputs); an unchanged equity's return is exactly 0 and adds
    nothing."""
    if equity != prev_equity:
        r = equity / prev_equity - 1
        sum_r += r
        sum_r2 += r * r
        down = min(r, 0.0)
        sum_down2 += down * down
    return sum_r, sum_r2, sum_down2


@_jit(_nrt=False)
def peak_rules(ts: np.ndarray, bar: int, equity: float, peak: float, last_peak: int, longest: int,
               min_ratio: float, low_water: float) -> tuple[float, int, int, float, float]:
    """One bar's equity through the drawdown rules: a new peak (drawdown exactly 0, metrics.max_drawdown_duration's
    "at peak", ending the underwater stretch since the last one) or a new low of equity over peak (skipped above
    `low_water`); returns the new (peak, last_peak, longest, min_ratio, low_water)."""
    if equity >= peak:
        if bar > last_peak + 1:
            longest = max(longest, ts[bar] - ts[last_peak])
        return equity, bar, longest, min_ratio, low_water_mark(equity, min_ratio)
    if equity < low_water:
        min_ratio = min(min_ratio, equity / peak)
        low_water = low_water_mark(peak, min_ratio)
    return peak, last_peak, longest, min_ratio, low_water


@_jit
def low_water_mark(peak: float, min_ratio: float) -> float:
    """An equity at or above this cannot set a new minimum of equity / peak: it is above peak * min_ratio by
    1e-15 relative, more than the few roundings in between, so the division is skipped on all but new lows."""
    level = peak * min_ratio
    return level + abs(level) * 1e-15


@_jit(_nrt=False)
def record_trade(sf: np.ndarray, si: np.ndarray, pnl: float, entry_value: float, commission: float) -> None:
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


@intrinsic
def trailing_zeros(typingctx: object, word: object) -> tuple[object, object]:
    """The zero bits below the lowest 1 of a nonzero uint64 (LLVM's `cttz`, one instruction): the run ends' byte
    index is this / 8, where a loop over the bytes mispredicted its exit at nearly every run end."""

    def codegen(context: object, builder: ir.IRBuilder, signature: object, args: list[ir.Value]) -> ir.Value:
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return word(word), codegen


@_jit(_nrt=False)
def _run_end(above: np.ndarray, below: np.ndarray, j: int, last: int, watch_above: bool, watch_below: bool) -> int:
    """The first bar in j..last whose close changes the signal, else last (j if j >= last).

    `above` and `below` are a rule's two decision masks, one byte per bar of the block, eight bars to a word; the
    signal changes where a watched mask has a 1 (a cross above changes nothing while long, and so on), so runs are
    skipped a word at a time. Bytes past `last` may be stale: a hit there is clipped to `last`.
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
    return min(int(word) * 8 + (int(trailing_zeros(hits)) >> 3), last)


BYTE_ONES = np.uint64(0x0101010101010101)


@_jit(_nrt=False)
def target_run_end(words: np.ndarray, j: int, last: int, held: int) -> int:
    """The first bar in j..last whose signal differs from `held`, else last (j if j >= last).

    `words` holds the block's signals, one byte per bar, eight bars to a word; XOR with `held` repeated in every
    byte leaves a nonzero byte exactly where the signal differs. Bytes past `last` may be padding or the last
    bar's: a hit there is clipped to `last`.
    """
    if j >= last:
        return j
    pattern = np.uint64(held & 0xFF) * BYTE_ONES
    word, final = np.uint64(j >> 3), np.uint64(last >> 3)  # unsigned: numba skips its negative-index check
    hits = (words[word] ^ pattern) & FROM_BYTE[j & 7]
    while hits == 0 and word < final:
        word += np.uint64(1)
        hits = words[word] ^ pattern
    if hits == 0:
        return last
    return min(int(word) * 8 + (int(trailing_zeros(hits)) >> 3), last)
