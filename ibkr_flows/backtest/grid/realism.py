"""The grid kernel with the realism options (`exits.ExitRules`): stop-loss, take-profit, trailing stop, flatten at
the session close and the short-borrow fee, for every combination in one numba pass.

A transcription of `exits.simulate_with_exits` (with `engine.held_positions` in front and the streamed metrics of
`kernel` behind), operation for operation, so that fills, share counts, fees and equity marks are the engine's to
the bit. Like `kernel.advance` it walks each combination from event to event, not bar by bar: a flat stretch
lasts until the target changes (found eight bars at a time, `kernel.target_run_end`); a held one until the target
changes, a session end that closes or charges the position (`next_session_end`), or a bar whose high or low
reaches a stop (tested bar by bar, the trailing stop's best price moving with them); in between, shares and cash
are constant and the bars' returns are summed by `kernel.held_run`. Bars are taken in blocks, every combination
advancing through a block before the next, so the block's prices are read from cache by all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ibkr_flows.backtest.exits import BORROW_DAYS_PER_YEAR, ExitRules
from ibkr_flows.backtest.grid import kernel
from ibkr_flows.backtest.grid.charges import CommissionRule, SizingRule, commission_of, entry_size
from ibkr_flows.backtest.grid.compiled import jit

# Float state per combination beyond `kernel`'s: the best price since entry, the open trade's borrow fees.
F_BEST, F_BORROW = kernel.N_FLOAT, kernel.N_FLOAT + 1
N_FLOAT = kernel.N_FLOAT + 2
# Integer state beyond `kernel`'s: 1 after a protective exit, until the target changes.
I_STOPPED = kernel.N_INT
N_INT = kernel.N_INT + 1


class ExitSettings(NamedTuple):
    """`ExitRules` as the kernel reads it: a level that is not set is NaN (numba compiles no Optional fields)."""

    stop_loss_pct: float
    take_profit_pct: float
    trailing_stop_pct: float
    flatten_at_close: bool
    borrow_fee_pct: float

    @classmethod
    def of(cls, rules: ExitRules) -> ExitSettings:
        def level(value: float | None) -> float:
            return np.nan if value is None else float(value)

        return cls(level(rules.stop_loss_pct), level(rules.take_profit_pct), level(rules.trailing_stop_pct),
                   bool(rules.flatten_at_close), float(rules.borrow_fee_pct))


@jit
def exits_grid(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, ts: np.ndarray,
               session_end: np.ndarray, next_session_end: np.ndarray, days: np.ndarray, targets: np.ndarray,
               words: np.ndarray, rows: np.ndarray, settings: kernel.Settings, exits: ExitSettings,
               commission: CommissionRule, sizing: SizingRule, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Run combination k = the signals in targets[rows[k]] with `exits` for every k; returns the final (state_f,
    state_i), laid out as `kernel`'s plus this module's fields.

    `targets` and `words` as for `kernel.targets_grid` (clipped int8 rows padded to whole words, and their uint64
    view); `session_end` (bool) and `days` (int64) are `exits.sessions` of the bars' times, `next_session_end`
    the first session end at or after each bar (n after the last).
    """
    n = close.shape[0]
    combinations = rows.shape[0]
    base_f, base_i = kernel.initial_state(combinations, settings)
    state_f = np.zeros((combinations, N_FLOAT))
    state_i = np.zeros((combinations, N_INT), dtype=np.int64)
    state_f[:, :kernel.N_FLOAT] = base_f
    state_i[:, :kernel.N_INT] = base_i
    for start in range(0, n, block):
        stop = min(start + block, n)
        for k in range(combinations):
            _advance(start, stop, n, open_, high, low, close, ts, session_end, next_session_end, days,
                     targets[rows[k]], words[rows[k]], state_f[k], state_i[k], settings, exits, commission, sizing)
    return state_f, state_i


@jit
def _advance(start: int, stop: int, n: int, open_: np.ndarray, high: np.ndarray, low: np.ndarray,
             close: np.ndarray, ts: np.ndarray, session_end: np.ndarray, next_session_end: np.ndarray,
             days: np.ndarray, signals: np.ndarray, words: np.ndarray, sf: np.ndarray, si: np.ndarray,
             settings: kernel.Settings, exits: ExitSettings, commission: CommissionRule, sizing: SizingRule) -> None:
    """One combination over bars start..stop - 1, state in and out of sf/si; `simulate_with_exits`' loop body.

    The target held during bar t is signals[t - 1] (flat on the first bar, and on the last with finalize "close");
    the position wanted is that target unless a protective exit has fired since it last changed. The state lives
    in local variables while the bars run (array fields would be stored and reloaded on every bar); trades, rare,
    go straight to the arrays.
    """
    has_stops = not (np.isnan(exits.stop_loss_pct) and np.isnan(exits.take_profit_pct)
                     and np.isnan(exits.trailing_stop_pct))
    charges_borrow = exits.borrow_fee_pct != 0
    cash, entry_price, entry_fee = sf[kernel.F_CASH], sf[kernel.F_ENTRY_PRICE], sf[kernel.F_ENTRY_FEE]
    best, borrow = sf[F_BEST], sf[F_BORROW]
    prev_equity, peak, min_ratio = sf[kernel.F_PREV_EQUITY], sf[kernel.F_PEAK], sf[kernel.F_MIN_PEAK_RATIO]
    sum_r, sum_r2, sum_down2 = sf[kernel.F_SUM_R], sf[kernel.F_SUM_R2], sf[kernel.F_SUM_DOWN2]
    shares, side, previous = si[kernel.I_SHARES], si[kernel.I_SIDE], si[kernel.I_HELD]
    stopped = si[I_STOPPED]
    last_peak, longest, exposed = si[kernel.I_LAST_PEAK], si[kernel.I_LONGEST_UNDERWATER], si[kernel.I_EXPOSED]
    low_water = kernel.low_water_mark(peak, min_ratio)
    slip = settings.slippage_bps / 10_000
    t = start
    while t < stop:
        target = 0 if t == 0 or (t == n - 1 and settings.finalize_close) else signals[t - 1]
        if target != previous:
            stopped, previous = 0, target
        wanted = 0 if stopped else target
        e = t  # the last bar with this bar's cash and shares
        if shares == 0 and wanted == 0:
            # flat until the target changes (bar e + 1 is the first whose signal, signals[e], differs): the equity
            # is constant cash; signals[stop - 2] is the block's last bar's
            e = kernel.target_run_end(words, t, stop - 2, previous)
        else:
            if np.sign(shares) != wanted:
                price = open_[t]
                if shares != 0:
                    cash = _close(sf, si, shares, side, entry_price, entry_fee, borrow, price, slip, cash, commission,
                                  settings)
                    shares = 0
                if wanted != 0:
                    fill = kernel.on_tick(price * (1 + wanted * slip), wanted, settings)
                    size = entry_size(cash, fill, sizing, commission)
                    if size:
                        entry_fee = commission_of(commission, size, fill)
                        cash -= wanted * size * fill + entry_fee
                        shares, side, entry_price = wanted * size, wanted, fill
                        borrow = 0.0
                    best = entry_price
            if shares != 0 and has_stops:
                price = _protective_exit(exits, side, entry_price, best, open_[t], high[t], low[t])
                if not np.isnan(price):
                    cash = _close(sf, si, shares, side, entry_price, entry_fee, borrow, price, slip, cash, commission,
                                  settings)
                    shares = 0
                    stopped = 1
                else:
                    best = max(best, high[t]) if side > 0 else min(best, low[t])
            if session_end[t] and shares != 0 and exits.flatten_at_close:
                cash = _close(sf, si, shares, side, entry_price, entry_fee, borrow, close[t], slip, cash, commission,
                              settings)
                shares = 0
            if session_end[t] and shares < 0 and charges_borrow:
                fee = -shares * close[t] * exits.borrow_fee_pct / 100 / BORROW_DAYS_PER_YEAR * days[t]
                cash -= fee
                borrow += fee
        # bar t's mark: its return, the peak and drawdown rules (`kernel.advance`'s)
        equity = cash + shares * close[t]
        if t > 0:
            sum_r, sum_r2, sum_down2 = kernel.bar_return(equity, prev_equity, sum_r, sum_r2, sum_down2)
        prev_equity = equity
        peak, last_peak, longest, min_ratio, low_water = kernel.peak_rules(
            ts, t, equity, peak, last_peak, longest, min_ratio, low_water)
        if shares == 0:
            if e > t and equity >= peak:  # a flat run at the peak stays there to its end
                last_peak = e
        else:
            session_stop = exits.flatten_at_close or (shares < 0 and charges_borrow)
            e, best = _quiet_end(t, stop, n, signals, words, previous, next_session_end, session_stop,
                                 settings.finalize_close, exits, has_stops, side, entry_price, best, open_, high, low)
            exposed += e - t + 1
            if e > t:  # bars t + 1..e hold the same shares and cash: `kernel.advance`'s held run
                sum_r, sum_r2, sum_down2, peak, last_peak, longest, min_ratio, low_water = kernel.held_run(
                    ts, close, 0, t + 1, e + 1, cash, float(shares), sum_r, sum_r2, sum_down2, peak, last_peak,
                    longest, min_ratio, low_water)
                prev_equity = cash + shares * close[e]
        t = e + 1
    sf[kernel.F_CASH], sf[kernel.F_ENTRY_PRICE], sf[kernel.F_ENTRY_FEE] = cash, entry_price, entry_fee
    sf[F_BEST], sf[F_BORROW] = best, borrow
    sf[kernel.F_PREV_EQUITY], sf[kernel.F_PEAK], sf[kernel.F_MIN_PEAK_RATIO] = prev_equity, peak, min_ratio
    sf[kernel.F_SUM_R], sf[kernel.F_SUM_R2], sf[kernel.F_SUM_DOWN2] = sum_r, sum_r2, sum_down2
    si[kernel.I_SHARES], si[kernel.I_SIDE], si[kernel.I_HELD], si[I_STOPPED] = shares, side, previous, stopped
    si[kernel.I_LAST_PEAK], si[kernel.I_LONGEST_UNDERWATER], si[kernel.I_EXPOSED] = last_peak, longest, exposed
    if stop == n and n - 1 > last_peak + 1:  # underwater to the end: the last bar closes it
        si[kernel.I_LONGEST_UNDERWATER] = max(longest, ts[n - 1] - ts[last_peak])


@jit
def _quiet_end(t: int, stop: int, n: int, signals: np.ndarray, words: np.ndarray, previous: int,
               next_session_end: np.ndarray, session_stop: bool, finalize_close: bool, exits: ExitSettings,
               has_stops: bool, side: int, entry_price: float, best: float, open_: np.ndarray, high: np.ndarray,
               low: np.ndarray) -> tuple[int, float]:
    """The last bar e (t <= e < stop) such that nothing happens on bars t + 1..e to a position held after bar t:
    no change of target, no session end that closes it or charges it (`session_stop`), no protective exit; and
    the best price after bar e. The first two are found a word of signals and a session at a time; the stops are
    then tested bar by bar in `_advance`'s order, so bar e + 1 is left to it exactly as found."""
    last = min(stop, n - 1 if finalize_close else n) - 1  # with finalize "close" bar n - 1 is flat: an event
    if t >= last:
        return t, best
    s = kernel.target_run_end(words, t, last - 1, previous)  # signals[s] is bar s + 1's target
    e = s if signals[s] != previous else s + 1
    if session_stop:
        e = min(e, next_session_end[t + 1] - 1)
    if has_stops:
        for b in range(t + 1, e + 1):
            if not np.isnan(_protective_exit(exits, side, entry_price, best, open_[b], high[b], low[b])):
                return b - 1, best
            best = max(best, high[b]) if side > 0 else min(best, low[b])
    return e, best


@jit
def _close(sf: np.ndarray, si: np.ndarray, shares: int, side: int, entry_price: float, entry_fee: float,
           borrow: float, price: float, slip: float, cash: float, commission: CommissionRule,
           settings: kernel.Settings) -> float:
    """`Account.close` at `price` (slipped against the trader, then on the tick grid): the trade recorded, the
    cash after it returned."""
    fill = kernel.on_tick(price * (1 + (-side) * slip), -side, settings)
    fee = commission_of(commission, abs(shares), fill)
    _record(sf, si, side, shares, entry_price, fill, entry_fee + fee, borrow)
    return cash + (shares * fill - fee)


@jit
def _protective_exit(exits: ExitSettings, side: int, entry: float, best: float, open_: float, high: float,
                     low: float) -> float:
    """`ExitRules.protective_exit`, NaN for None."""
    stop = np.nan
    if not np.isnan(exits.stop_loss_pct):
        stop = entry * (1 - side * exits.stop_loss_pct / 100)
    if not np.isnan(exits.trailing_stop_pct):
        trailing = best * (1 - side * exits.trailing_stop_pct / 100)
        tighter = max(stop, trailing) if side > 0 else min(stop, trailing)
        stop = trailing if np.isnan(stop) else tighter
    target = entry * (1 + side * exits.take_profit_pct / 100)  # NaN when not set: every comparison below fails
    adverse, favourable = (low, high) if side > 0 else (high, low)
    if side * (open_ - stop) <= 0:
        return open_
    if side * (open_ - target) >= 0:
        return open_
    if side * (adverse - stop) <= 0:
        return stop
    if side * (favourable - target) >= 0:
        return target
    return np.nan


@jit
def _record(sf: np.ndarray, si: np.ndarray, side: int, shares: int, entry_price: float, fill: float,
            commission: float, borrow: float) -> None:
    """A closed trade, as `engine._trades_frame` computes its pnl (commissions, then borrow fees, subtracted)."""
    size = abs(shares)
    kernel.record_trade(sf, si, side * size * (fill - entry_price) - commission - borrow, size * entry_price,
                         commission)
