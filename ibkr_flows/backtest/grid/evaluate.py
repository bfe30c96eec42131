"""Evaluate grid combinations on one symbol's bars: one row per combination, the parameters and its metrics.

A row is, by definition, the `Metrics` that `run_backtest(bars, bar_size, replace(base, params=combination))`
reports. With the built-in cost and sizing models every strategy takes the numba kernel, which reproduces the
engine's fills exactly: the built-in rules (crossovers that keep `AverageCrossover`'s trend rule, rsi_reversion,
donchian_breakout) through `builtin`'s grids, which compute each distinct indicator once per block of bars and
never build a signal row (a crossover whose average only polars knows has its averages computed whole first, in
groups that fit `AVERAGES_BYTES`); every other strategy through `kernel.targets_grid`, fed the signal rows its
`Strategy.grid_targets` writes. With realism options (`ExitRules`) every strategy goes through `realism.exits_grid`,
fed signal rows (a crossover's written from its averages, `indicators.trend_targets`). A cost or sizing model the
kernel does not know runs the engine once per combination.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl

from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed, IBKRTiered, NoCommission, PercentCommission
from ibkr_flows.backtest.engine import CONTRACT_COLUMN, BacktestConfig, _check_bars, run_backtest
from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.backtest.exits import ExitRules, sessions
from ibkr_flows.backtest.grid import builtin, charges, indicators, kernel, realism
from ibkr_flows.backtest.grid.compiled import kernel_column
from ibkr_flows.backtest.grid.spec import Combination, GridSpec, GridSpecError
from ibkr_flows.backtest.metrics import Annualization, Metrics, annualization
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, Sizing
from ibkr_flows.backtest.strategies import Strategy
from ibkr_flows.backtest.strategies.base import AverageCrossover, Entry
from ibkr_flows.backtest.strategies.donchian_breakout import DonchianBreakout
from ibkr_flows.backtest.strategies.ema_crossover import EmaCrossover
from ibkr_flows.backtest.strategies.rsi_reversion import RsiReversion, wilder_seeds
from ibkr_flows.backtest.strategies.sma_crossover import SmaCrossover
from storage.results_table import NUMERIC_METRIC_COLUMNS

METRIC_COLUMNS = NUMERIC_METRIC_COLUMNS
"""Every numeric `Metrics` field, named and typed as in the results tables; max_drawdown_duration in seconds (the
range and annualization are the same for every row of one evaluation: the report's best Metrics carries them)."""

AVERAGES_BYTES = 512 * 2**20
"""Moving averages held at once by a crossover whose averages are computed whole; pairs needing more distinct
periods are run in groups."""
KERNEL_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""Threads the kernel's combinations are split over: the cores this process may use."""
TARGETS_BYTES = 256 * 2**20
"""Signal rows (one byte per bar and combination) held at once; larger grids are run in groups."""
BLOCK_BARS = 1024
"""Kernel block: its indicators, opens and closes stay in L2 while every combination passes over them (25
averages: 220 KB). Fixed, not fitted to the number of combinations, because a held run's sums are cut at block
edges: a row must not depend on which other combinations share its call (a chunk needs fewer averages than the
whole grid). Block sizes from 600 to 20,000 bars measured the same on the benchmark's grid."""
BLOCK_AVERAGES = {SmaCrossover: builtin.AVERAGE_SMA, EmaCrossover: builtin.AVERAGE_EMA}
"""Crossovers whose averages the kernel computes itself, block by block. Exact types, as every built-in rule here:
a subclass may average, or decide, otherwise."""

Run = Callable[[slice], tuple[np.ndarray, np.ndarray]]
"""A kernel call on part of a group of combinations (`_threaded`'s every T-th): their final (state_f, state_i)."""
KernelArgs = tuple[np.ndarray, np.ndarray, np.ndarray, kernel.Settings, charges.CommissionRule, charges.SizingRule]
"""Opens, closes, int64 times, settings, commission and sizing: what every kernel call takes."""
T = typing.TypeVar("T")


def metric_row(metrics: Metrics) -> dict[str, Any]:
    """A `Metrics` as a table row (the engine's side of the grid's equality)."""
    values = {name: getattr(metrics, name) for name in METRIC_COLUMNS}
    values["max_drawdown_duration"] = metrics.max_drawdown_duration.total_seconds()
    return values


def grid_base(spec: GridSpec, base: BacktestConfig | None) -> BacktestConfig:
    """Cash, costs, sizing, mode, conventions and realism options shared by every combination; its parameters come
    from the grid only, so a fixed parameter is a one-value axis and the spec's validation sees it."""
    if base is None:
        return BacktestConfig(spec.strategy)
    if base.strategy != spec.strategy or base.params:
        raise GridSpecError(f"the base config must be for {spec.strategy} with no params (got {base.strategy} with "
                            f"{dict(base.params)}); put fixed parameters in the grid as one-value lists")
    return base


def combination_config(base: BacktestConfig, combination: Combination) -> BacktestConfig:
    """The single-run config a grid row reproduces."""
    return dataclasses.replace(base, params=combination)


def evaluate_grid(bars: pl.DataFrame, bar_size: str, spec: GridSpec, base: BacktestConfig | None = None,
                  combinations: Sequence[Combination] | None = None) -> pl.DataFrame:
    """Rows for `combinations` (default: the whole grid; pass one of `spec.chunks()` to split the work) on one
    symbol's bars, in the given order: the parameters, then `METRIC_COLUMNS`."""
    base = grid_base(spec, base)
    combinations = spec.combinations() if combinations is None else list(combinations)
    annual = annualization(bar_size, base.bars_per_session, base.terms.calendar, base.use_rth)
    _check_bars(bars, bar_size)
    strategies = [spec.strategy_for(combination) for combination in combinations]
    longest = max(strategies, key=lambda s: s.warmup_bars, default=None)
    if longest is not None and bars.height < longest.warmup_bars + 3:
        raise BacktestError(f"{longest} cannot trade on {bars.height} bars: it needs {longest.warmup_bars + 3} "
                            "(warm-up, a bar to decide on, one to fill on and one to exit on)")
    # the kernel counts money as quantity x price and knows no rolls: an instrument with a multiplier (a future) or
    # bars that change contract (a rolled continuous series) run in the engine
    compiled = base.terms.multiplier == 1.0 and CONTRACT_COLUMN not in bars.columns
    rules = _kernel_rules(base.commission, base.sizing) if compiled else None
    if rules is not None and strategies:
        metrics = _kernel_columns(bars, strategies, base, *rules, annual)
    else:
        rows = [metric_row(run_backtest(bars, bar_size, combination_config(base, c)).metrics) for c in combinations]
        metrics = {name: [row[name] for row in rows] for name in METRIC_COLUMNS}
    params = {name: pl.Int64() if all(isinstance(v, int) for v in values) else pl.Float64()
              for name, values in spec.axes.items()}
    # Series by Series: a frame built from a dict with a schema casts every column again (~0.05 ms a grid call)
    return pl.DataFrame([*(pl.Series(name, [c[name] for c in combinations], dtype) for name, dtype in params.items()),
                         *(pl.Series(name, metrics[name], dtype) for name, dtype in METRIC_COLUMNS.items())])


def _is_plain_crossover(strategy: Strategy) -> bool:
    cls = type(strategy)
    return (isinstance(strategy, AverageCrossover) and cls.target is AverageCrossover.target
            and cls.signals is Strategy.signals)


def _kernel_rules(commission: CommissionModel, sizing: Sizing
                  ) -> tuple[charges.CommissionRule, charges.SizingRule] | None:
    """The kernel's encoding of the cost and sizing models, None for models it does not know. Exact types only:
    a subclass may charge differently. Every field is converted to its declared type: numba compiles the kernel
    once per combination of field types, and an int where a float belongs would compile it again."""
    if isinstance(commission, IBKRFixed | IBKRTiered) and type(commission) in (IBKRFixed, IBKRTiered):
        fee = charges.CommissionRule(charges.COMMISSION_PER_SHARE, float(commission.per_share),
                                    float(commission.minimum), float(commission.max_rate), 0.0)
    elif type(commission) is PercentCommission:
        fee = charges.CommissionRule(charges.COMMISSION_PERCENT, 0.0, 0.0, 0.0, float(commission.rate))
    elif type(commission) is NoCommission:
        fee = charges.CommissionRule(charges.COMMISSION_NONE, 0.0, 0.0, 0.0, 0.0)
    else:
        return None
    if type(sizing) is AllIn:
        size = charges.SizingRule(charges.SIZING_ALL_IN, 0, 1.0)
    elif type(sizing) is FixedShares:
        size = charges.SizingRule(charges.SIZING_FIXED_SHARES, int(sizing.n), 1.0)
    elif type(sizing) is FixedFraction:
        size = charges.SizingRule(charges.SIZING_FIXED_FRACTION, 0, float(sizing.f))
    else:
        return None
    return fee, size


def _kernel_columns(bars: pl.DataFrame, strategies: list[Strategy], base: BacktestConfig,
                    commission: charges.CommissionRule, sizing: charges.SizingRule, annual: Annualization
                    ) -> dict[str, list[Any]]:
    """Every combination through the kernel, group by group (`_runs`), each group's combinations split over the
    threads."""
    open_, close, ticks, unit = _prices(bars)
    settings = _settings(base)
    kernel_args = (open_, close, ticks, settings, commission, sizing)
    states = [_threaded(run, count) for count, run in _runs(bars, strategies, base, kernel_args)]
    state_f, state_i = (np.concatenate([state[part] for state in states]) for part in (0, 1))
    return _columns(state_f, state_i, close, float(base.cash), annual, unit)


def _runs(bars: pl.DataFrame, strategies: list[Strategy], base: BacktestConfig, kernel_args: KernelArgs
          ) -> Iterator[tuple[int, Run]]:
    """The kernel calls that evaluate `strategies`: consecutive groups of them, each as (its size, its `Run`).
    Lazy, so that a group's arrays (signal rows, averages) exist only while it runs."""
    cls = type(strategies[0])  # one spec, one strategy class
    if base.exits.active:
        return _target_runs(bars, strategies, base, kernel_args)
    if all(_is_plain_crossover(s) for s in strategies):
        return _crossover_runs(bars, typing.cast(list[AverageCrossover], strategies), kernel_args)
    if cls is RsiReversion:
        return iter([_rsi_run(bars, typing.cast(list[RsiReversion], strategies), kernel_args)])
    if cls is DonchianBreakout:
        return iter([_breakout_run(bars, typing.cast(list[DonchianBreakout], strategies), kernel_args)])
    return _target_runs(bars, strategies, base, kernel_args)


def _crossover_runs(bars: pl.DataFrame, strategies: list[AverageCrossover], kernel_args: KernelArgs
                    ) -> Iterator[tuple[int, Run]]:
    """`builtin.crossover_grid`: one call for an SMA or EMA crossover (`BLOCK_AVERAGES`), whose averages it
    computes block by block; groups needing at most `AVERAGES_BYTES` of averages otherwise."""
    close = kernel_args[1]
    kind = BLOCK_AVERAGES.get(type(strategies[0]), builtin.AVERAGE_ROWS)
    groups = [list(range(len(strategies)))]
    if kind == builtin.AVERAGE_ROWS:
        groups = _period_groups(strategies, max(2, AVERAGES_BYTES // (8 * close.shape[0])))
    # EMA reads the closes: an empty source, not the closes (polars' read-only memory, another numba type to compile)
    source = indicators.running_sums(close)[None] if kind == builtin.AVERAGE_SMA else np.empty((1, 0))
    for group in groups:
        chosen = [strategies[k] for k in group]
        periods = sorted({p for s in chosen for p in (s.fast_period, s.slow_period)})
        if kind == builtin.AVERAGE_ROWS:
            source = _averages(bars, type(chosen[0]), close, periods)
        row_of = {period: row for row, period in enumerate(periods)}
        fast = np.array([row_of[s.fast_period] for s in chosen], dtype=np.int64)
        slow = np.array([row_of[s.slow_period] for s in chosen], dtype=np.int64)
        yield len(group), functools.partial(_run_crossovers, kernel_args, source, kind,
                                            np.array(periods, dtype=np.int64), fast, slow)


def _rsi_run(bars: pl.DataFrame, strategies: list[RsiReversion], kernel_args: KernelArgs) -> tuple[int, Run]:
    """`builtin.rsi_grid`: each distinct period's RSI once per block, seeded from the expression itself."""
    periods = sorted({s.period for s in strategies})
    row_of = {period: row for row, period in enumerate(periods)}
    row = np.array([row_of[s.period] for s in strategies], dtype=np.int64)
    lower, upper = (np.array([getattr(s, level) for s in strategies]) for level in ("lower", "upper"))
    periods_array = np.array(periods, dtype=np.int64)
    gains, losses = wilder_seeds(bars, periods_array)
    return len(strategies), functools.partial(_run_rsi, kernel_args, periods_array, gains, losses, row, lower, upper)


def _breakout_run(bars: pl.DataFrame, strategies: list[DonchianBreakout], kernel_args: KernelArgs
                  ) -> tuple[int, Run]:
    """`builtin.breakout_grid`: every lookback's channel from one table of highs and lows per block."""
    high, low = (kernel_column(bars, c) for c in ("high", "low"))
    lookbacks = np.array([s.lookback for s in strategies], dtype=np.int64)
    return len(strategies), functools.partial(_run_breakouts, kernel_args, high, low, lookbacks)


def _target_runs(bars: pl.DataFrame, strategies: list[Strategy], base: BacktestConfig, kernel_args: KernelArgs
                 ) -> Iterator[tuple[int, Run]]:
    """Any strategy: its `grid_targets` writes one signal row per combination, `kernel.targets_grid` fills them
    (`realism.exits_grid` with realism options). Combinations go in consecutive groups whose rows fit in
    `TARGETS_BYTES`."""
    n = bars.height
    if base.exits.active:
        high, low = (kernel_column(bars, c) for c in ("high", "low"))
        session_end, next_session_end, days = _sessions(bars, base.exits, base.terms.calendar)
        exits = realism.ExitSettings.of(base.exits)
    padded = -(-n // 8) * 8  # whole uint64 words per row
    per_group = max(1, TARGETS_BYTES // padded)
    for first in range(0, len(strategies), per_group):
        group = strategies[first:first + per_group]
        targets = np.zeros((len(group), padded), dtype=np.int8)
        if all(_is_plain_crossover(s) for s in group):
            _write_trend_targets(bars, typing.cast(list[AverageCrossover], group), targets[:, :n], base.entry)
        else:
            _write_targets(bars, group, targets[:, :n], base.entry)
        if not kernel.clip_targets(targets, kernel_args[3].long_only):
            raise BacktestError(f"{type(group[0]).__name__}.grid_targets must write signals in {{-1, 0, 1}}")
        if base.exits.active:
            yield len(group), functools.partial(_run_exits, kernel_args, high, low, session_end, next_session_end,
                                                days, targets, exits)
        else:
            yield len(group), functools.partial(_run_targets, kernel_args, targets)


def _write_targets(bars: pl.DataFrame, strategies: list[Strategy], out: np.ndarray, entry: Entry) -> None:
    """The strategy's `grid_targets` on contiguous parts of the combinations, one per kernel thread (the hooks
    compile or call polars, both without the GIL). Contiguous, because combinations sharing an indicator sit next
    to each other in axis order and a part computes each of its indicators once."""
    parts = min(KERNEL_THREADS, len(strategies))
    edges = [len(strategies) * t // parts for t in range(parts + 1)]
    hook = type(strategies[0]).grid_targets
    _on_threads([functools.partial(hook, bars, strategies[a:b], out[a:b], entry)
                 for a, b in itertools.pairwise(edges)])


def _write_trend_targets(bars: pl.DataFrame, strategies: list[AverageCrossover], out: np.ndarray, entry: Entry
                         ) -> None:
    """A plain crossover's signals (`strategies.base.trend_target`) from each distinct average, computed once."""
    close = kernel_column(bars, "close")
    periods = sorted({p for s in strategies for p in (s.fast_period, s.slow_period)})
    averages = _averages(bars, type(strategies[0]), close, periods)
    row_of = {period: row for row, period in enumerate(periods)}
    for k, s in enumerate(strategies):
        indicators.trend_targets(averages[row_of[s.fast_period]], averages[row_of[s.slow_period]], entry == "cross",
                                 out[k])


def _prices(bars: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The kernel's inputs from the bars: opens, closes, timestamps as int64 ticks, and the ticks' unit."""
    return (kernel_column(bars, "open"), kernel_column(bars, "close"), kernel_column(bars, "ts"),
            typing.cast(pl.Datetime, bars.schema["ts"]).time_unit)


def _settings(base: BacktestConfig) -> kernel.Settings:
    return kernel.Settings(long_only=base.mode == "long_only", cash=float(base.cash),
                           slippage_bps=float(base.slippage_bps), finalize_close=base.finalize == "close",
                           cross_entry=base.entry == "cross", tick=float(base.terms.min_tick or 0.0),
                           ticks_per_unit=base.terms.ticks_per_unit)


def _threaded(run: Run, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`run` over `count` combinations split across `KERNEL_THREADS`, its states put back in combination order.
    Every thread takes every T-th combination: those that trade often (a short fast average) tend to sit next to
    each other, and a contiguous split gave one thread ~20 % more work."""
    slices = [slice(t, None, KERNEL_THREADS) for t in range(min(KERNEL_THREADS, count))]
    parts = _on_threads([functools.partial(run, part) for part in slices])
    if len(parts) == 1:
        return parts[0]
    state_f = np.empty((count, parts[0][0].shape[1]))
    state_i = np.empty((count, parts[0][1].shape[1]), dtype=np.int64)
    for part, (f, i) in zip(slices, parts, strict=True):
        state_f[part], state_i[part] = f, i
    return state_f, state_i


def _on_threads(calls: list[Callable[[], T]]) -> list[T]:
    """Every call's result, the first made on this thread and the others on the kernel's pool meanwhile (the
    kernel and the hooks release the GIL). A call the pool has not started by the time this thread is free is
    taken back and made here: on a loaded machine a pool thread can wait milliseconds for a core, longer than a
    small grid's whole kernel."""
    pending = [_pool(KERNEL_THREADS - 1, os.getpid()).submit(call) for call in calls[1:]]
    results = [calls[0]()]
    for call, future in zip(calls[1:], pending, strict=True):
        results.append(call() if future.cancel() else future.result())
    return results


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """The threads that run a grid's parts beside the caller's, started once per process (`pid`: a forked child
    starts its own, its parent's threads do not exist in it). Starting them on every call cost 1-4 ms per call on
    a loaded 2-core machine, more than the kernel's work on a small grid of 100k bars; callers on several threads
    at once share them, as they share the cores."""
    return ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="grid-kernel")


def _averages(bars: pl.DataFrame, strategy: type[AverageCrossover], close: np.ndarray, periods: list[int]
              ) -> np.ndarray:
    """One row per period: the strategy's numpy average where it has one, else its polars expression."""
    rows = strategy.average_rows(close, periods)
    if rows is not None:
        return rows
    return np.ascontiguousarray(
        bars.select(strategy.average("close", p).alias(str(p)) for p in periods).to_numpy().T, dtype=np.float64)


def _run_crossovers(kernel_args: KernelArgs, source: np.ndarray, kind: int, periods: np.ndarray, fast: np.ndarray,
                    slow: np.ndarray, part: slice) -> tuple[np.ndarray, np.ndarray]:
    open_, close, ticks, settings, commission, sizing = kernel_args
    return builtin.crossover_grid(open_, close, ticks, source, kind, periods, np.ascontiguousarray(fast[part]),
                                  np.ascontiguousarray(slow[part]), settings, commission, sizing, BLOCK_BARS)


def _run_rsi(kernel_args: KernelArgs, periods: np.ndarray, gains: np.ndarray, losses: np.ndarray, row: np.ndarray,
             lower: np.ndarray, upper: np.ndarray, part: slice) -> tuple[np.ndarray, np.ndarray]:
    open_, close, ticks, settings, commission, sizing = kernel_args
    return builtin.rsi_grid(open_, close, ticks, periods, gains, losses, np.ascontiguousarray(row[part]),
                            np.ascontiguousarray(lower[part]), np.ascontiguousarray(upper[part]), settings,
                            commission, sizing, BLOCK_BARS)


def _run_breakouts(kernel_args: KernelArgs, high: np.ndarray, low: np.ndarray, lookbacks: np.ndarray, part: slice
                   ) -> tuple[np.ndarray, np.ndarray]:
    open_, close, ticks, settings, commission, sizing = kernel_args
    return builtin.breakout_grid(open_, close, ticks, high, low, np.ascontiguousarray(lookbacks[part]), settings,
                                 commission, sizing, BLOCK_BARS)


def _run_targets(kernel_args: KernelArgs, targets: np.ndarray, part: slice) -> tuple[np.ndarray, np.ndarray]:
    open_, close, ticks, settings, commission, sizing = kernel_args
    rows = np.arange(targets.shape[0], dtype=np.int64)[part]
    return kernel.targets_grid(open_, close, ticks, targets, targets.view(np.uint64), rows, settings, commission,
                               sizing, BLOCK_BARS)


def _run_exits(kernel_args: KernelArgs, high: np.ndarray, low: np.ndarray, session_end: np.ndarray,
               next_session_end: np.ndarray, days: np.ndarray, targets: np.ndarray, exits: realism.ExitSettings,
               part: slice) -> tuple[np.ndarray, np.ndarray]:
    open_, close, ticks, settings, commission, sizing = kernel_args
    rows = np.arange(targets.shape[0], dtype=np.int64)[part]
    return realism.exits_grid(open_, high, low, close, ticks, session_end, next_session_end, days, targets,
                              targets.view(np.uint64), rows, settings, exits, commission, sizing, BLOCK_BARS)


def _sessions(bars: pl.DataFrame, rules: ExitRules, calendar: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`exits.sessions` for `realism.exits_grid` (whether each bar ends its session, the first session end at or
    after it, the days to the next session), computed only for the options that read sessions: reading the time
    zone's dates is most of an exits grid's time on a million bars."""
    n = bars.height
    if not (rules.flatten_at_close or rules.borrow_fee_pct):
        return np.zeros(n, dtype=np.bool_), np.full(n, n, dtype=np.int64), np.ones(n, dtype=np.int64)
    session_end, days = sessions(bars["ts"], calendar)
    ends = np.flatnonzero(session_end)
    return session_end, np.r_[ends, n][np.searchsorted(ends, np.arange(n))], days.astype(np.int64)


def _period_groups(strategies: list[AverageCrossover], max_periods: int) -> list[list[int]]:
    """Indices of `strategies`, in order, cut into groups needing at most `max_periods` distinct averages."""
    groups: list[list[int]] = [[]]
    periods: set[int] = set()
    for k, s in enumerate(strategies):
        needed = periods | {s.fast_period, s.slow_period}
        if len(needed) > max_periods and groups[-1]:
            groups.append([])
            needed = {s.fast_period, s.slow_period}
        groups[-1].append(k)
        periods = needed
    return groups


def _columns(state_f: np.ndarray, state_i: np.ndarray, close: np.ndarray, cash: float, annual: Annualization,
             unit: str) -> dict[str, list[Any]]:
    """`metrics.compute_metrics` from the kernel's sums, formula for formula, for every pair at once (numpy runs
    the same IEEE operations as the scalar formulas, so the bit-identical fields stay so); None where the metric
    is. Plain arrays and masks, not numpy.ma: its arrays cost ~0.3 ms a grid call in object overhead."""
    n = close.shape[0]
    periods = n - 1
    ppy = annual.periods_per_year
    f = {name: state_f[:, getattr(kernel, f"F_{name}")] for name in (
        "PREV_EQUITY", "SUM_R", "SUM_R2", "SUM_DOWN2", "MIN_PEAK_RATIO", "BEST_PCT", "WORST_PCT", "SUM_RETURN_PCT",
        "GROSS_PROFIT", "GROSS_LOSS", "SUM_PNL", "COMMISSIONS")}
    trades = state_i[:, kernel.I_TRADES]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        final = f["PREV_EQUITY"]  # the last bar's mark
        mean = f["SUM_R"] / periods
        std = np.sqrt(np.maximum((f["SUM_R2"] - f["SUM_R"] ** 2 / periods) / (periods - 1), 0.0))
        downside = np.sqrt(f["SUM_DOWN2"] / periods)
        growth = final / cash
        annual_return = np.array([_annualized_return_pct(g, ppy, periods) for g in growth.tolist()])  # libm pow
        max_drawdown = (f["MIN_PEAK_RATIO"] - 1) * 100
        longest_us = state_i[:, kernel.I_LONGEST_UNDERWATER].astype(f"m8[{unit}]") / np.timedelta64(1, "us")
        untraded = trades == 0
        sharpe, no_sharpe = _ratios(mean, std)
        sortino, no_sortino = _ratios(mean, downside)
        calmar, no_calmar = _ratios(annual_return, -max_drawdown)
        profit_factor, no_profit_factor = _ratios(f["GROSS_PROFIT"], -f["GROSS_LOSS"])
        columns = {
            "bars": np.full(len(trades), n),
            "total_return_pct": (growth - 1) * 100,
            "annualized_return_pct": annual_return,
            "annualized_volatility_pct": std * math.sqrt(ppy) * 100,
            "sharpe": sharpe * math.sqrt(ppy),
            "sortino": sortino * math.sqrt(ppy),
            "calmar": calmar,
            "max_drawdown_pct": max_drawdown,
            "max_drawdown_duration": longest_us.astype(np.int64) / 10**6,  # whole microseconds, as the engine's
            "exposure_pct": state_i[:, kernel.I_EXPOSED] / n * 100,
            "trades": trades,
            "win_rate_pct": state_i[:, kernel.I_WINS] / trades * 100,
            "best_trade_pct": f["BEST_PCT"],
            "worst_trade_pct": f["WORST_PCT"],
            "avg_trade_pct": f["SUM_RETURN_PCT"] / trades,
            "profit_factor": profit_factor,
            "expectancy": f["SUM_PNL"] / trades,
            "buy_and_hold_return_pct": np.full(len(trades), float(close[-1] / close[0] - 1) * 100),
            "final_equity": final,
            "commissions": f["COMMISSIONS"],
            "periods_per_year": np.full(len(trades), ppy),
        }
    missing = {"sharpe": no_sharpe, "sortino": no_sortino, "calmar": no_calmar, "win_rate_pct": untraded,
               "best_trade_pct": untraded, "worst_trade_pct": untraded, "avg_trade_pct": untraded,
               "profit_factor": untraded | no_profit_factor, "expectancy": untraded}
    return {name: _with_nulls(values, missing.get(name)) for name, values in columns.items()}


def _with_nulls(values: np.ndarray, missing: np.ndarray | None) -> list[Any]:
    listed = values.tolist()
    if missing is None or not missing.any():
        return listed
    return [None if gone else value for value, gone in zip(listed, missing.tolist(), strict=True)]


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`metrics.ratio` elementwise, and where it is None (0 / 0).

    x / 0 takes the numerator's sign, as there: a plain division would give -inf for x / -0.0, the zero that
    negating an untouched loss or drawdown sum produces.
    """
    quotient = np.where(denominator == 0, np.copysign(np.inf, numerator), numerator / denominator)
    return quotient, (numerator == 0) & (denominator == 0)


def _annualized_return_pct(growth: float, periods_per_year: float, periods: int) -> float:
    """metrics.annualized_return_pct for a known growth factor (that function wants the whole equity curve)."""
    if growth <= 0:
        return -100.0
    try:
        return (growth ** (periods_per_year / periods) - 1) * 100
    except OverflowError:
        return math.inf
