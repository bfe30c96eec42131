"""Parameter-grid throughput: SMA crossover, fast 5..50 step 5 x slow 20..200 step 10 (the 174 pairs with
fast < slow), long only, next-open fills, IBKR Fixed commission, USD 1,000,000 all in (whole shares).

Cases: (a) 1 symbol x 1M one-minute bars, (b) 10 symbols x 100k (each symbol its own `evaluate_grid` call).
Figures are combinations x bars per second, warm: a pass calls each symbol once; the first pass pays numba
compilation or its cache load, then `--repeat` warm passes are timed, and the best and the median pass are reported
for both engines alike (the best is timeit's convention: on a shared VM, other load only ever adds time), for:
- this engine: `evaluate_grid`, all of `METRIC_COLUMNS` per combination;
- vectorbt 1.2 `Portfolio.from_signals` on the same grid and conventions, in a subprocess so its memory peak is
  measured apart from ours; timed: from_signals plus total_return and trades.count (fewer metrics than ours:
  its sharpe_ratio and max_drawdown need more bars x combinations arrays, which ran out of 24 GB on case (a)).
  Its entries/exits are built from the same SMAs (one cumsum, as `sma_crossover` computes them) with our rules
  (ties keep the side, decided at the close and shifted one bar, exit at the last bar's open); building them is
  reported separately. Differences: IBKR Fixed's USD 1 minimum and 1% cap have no vectorbt equivalent, so fees
  are 0.005 / open per bar (the per-share rate as a fraction of the fill price), equal to IBKR Fixed for orders
  of at least 200 shares at prices over USD 0.50; vectorbt sizes as floor(cash / (price * (1 + fee))) whole
  shares (`size_granularity=1`), our all-in count under the same condition; its fee is size * price * fee rate,
  so cash differs in the last bits, which can flip an all-in order that just fits by one share (seen: one
  combination of 174 on case (a), from its 2,901st of 14,198 trades on). Combinations that bleed the account
  until orders fall under 200 shares differ from then on; the comparison says which disagreements are those;
- numpy: one sum over the close array per combination, the memory-bandwidth floor of touching every bar.
Run: `.venv/bin/python bench/grid_sma.py [--quick] [--skip-vectorbt] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import polars as pl

from bench.backtest_engine import minute_bars
from ibkr_flows.backtest.costs import IBKRFixed
from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.grid import GridSpec, combination_config, evaluate_grid

T = TypeVar("T")
SPEC = GridSpec("sma_crossover", {"fast_period": range(5, 51, 5), "slow_period": range(20, 201, 10)})
BASE = BacktestConfig("sma_crossover", cash=1_000_000.0, commission=IBKRFixed())
PER_SHARE = IBKRFixed().per_share
CHECKED = [(5, 20), (10, 50), (25, 100), (45, 60), (50, 200)]
"""Combinations whose trades and returns are printed side by side for both engines."""


def cases(quick: bool) -> dict[str, list[pl.DataFrame]]:
    if quick:
        return {"(a) 1 x 100k": [minute_bars(100_000)], "(b) 3 x 20k": [minute_bars(20_000, seed) for seed in range(3)]}
    return {"(a) 1 x 1M": [minute_bars(1_000_000)], "(b) 10 x 100k": [minute_bars(100_000, seed) for seed in range(10)]}


@dataclass(frozen=True)
class Passes(Generic[T]):
    """Times of passes over a case's symbols: the first (cold) and the warm ones, and the last pass's results."""

    first_s: float
    warm_s: list[float]
    results: list[T]

    @property
    def best_s(self) -> float:
        return min(self.warm_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.warm_s)


def timed_passes(calls: list[Callable[[], T]], repeat: int) -> Passes[T]:
    """One cold pass, then `repeat` warm passes; a pass runs every call once and is the sum of their times, each
    timed alone (garbage is collected before each call, untimed: vectorbt's portfolios hold GBs in reference
    cycles).

    What exists before a pass (modules, bars, prepared inputs, what the cold pass compiled or imported) is frozen
    out of those collections (`gc.freeze`): a full collection walked it in ~30 ms before every call, and the call
    after it started with caches emptied and idle threads parked, ~1 ms more per 100k-bar grid call (a tenth of
    case (b)'s time) for work that a run over many symbols never does. Each collection still finds everything the
    calls leave, both engines alike."""
    times: list[float] = []
    results: list[T] = []
    for _ in range(1 + repeat):
        gc.collect()
        gc.freeze()
        elapsed = 0.0
        results = []
        for call in calls:
            gc.collect()
            started = time.perf_counter()
            results.append(call())
            elapsed += time.perf_counter() - started
        times.append(elapsed)
    return Passes(times[0], times[1:], results)


def numpy_floor(symbols: list[pl.DataFrame], combinations: int = SPEC.size) -> float:
    """The memory-streaming floor: one numpy sum over each symbol's closes per combination."""
    closes = [bars["close"].to_numpy() for bars in symbols]
    started = time.perf_counter()
    for close in closes:
        for _ in range(combinations):
            close.sum()
    return time.perf_counter() - started


def sma(close: np.ndarray, period: int) -> np.ndarray:
    """`sma_crossover.sma`: a difference of running sums, NaN before `period` values."""
    running = np.cumsum(close)
    out = np.full(close.shape[0], np.nan)
    out[period - 1:] = (running[period - 1:] - np.r_[0.0, running[:-period]]) / period
    return out


def long_only_orders(close: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(entries, exits), one column per pair: our held positions (long above, flat below, a tie keeps the side,
    acted on at the next bar's open, flat on the last bar) as vectorbt order signals at their fill bar."""
    n = close.shape[0]
    averages = {p: sma(close, p) for p in sorted({p for pair in pairs for p in pair})}
    entries = np.zeros((n, len(pairs)), dtype=bool, order="F")
    exits = np.zeros_like(entries)
    for k, (fast, slow) in enumerate(pairs):
        decided = np.full(n, -1, dtype=np.int8)
        decided[averages[fast] > averages[slow]] = 1
        decided[averages[fast] < averages[slow]] = 0
        last = np.where(decided >= 0, np.arange(n), 0)
        np.maximum.accumulate(last, out=last)
        signal = np.maximum(decided[last], 0)
        held = np.zeros(n, dtype=bool)
        held[1:-1] = signal[:-2] == 1
        before = np.r_[False, held[:-1]]
        entries[:, k] = held & ~before
        exits[:, k] = before & ~held
    return entries, exits


def vectorbt_worker(data_dir: Path, repeat: int) -> None:
    """Subprocess side: read the bars, time vectorbt's passes per case, print JSON with times and results."""
    import vectorbt as vbt

    pairs = [(c["fast_period"], c["slow_period"]) for c in SPEC.combinations()]
    report: dict[str, object] = {}
    for case in json.loads((data_dir / "cases.json").read_text()):
        prepare = 0.0
        calls = []
        for path in case["files"]:
            data = np.load(path)
            started = time.perf_counter()
            entries, exits = long_only_orders(data["close"], pairs)
            prepare += time.perf_counter() - started

            def run(open_: np.ndarray = data["open"][:, None], close: np.ndarray = data["close"][:, None],
                    entries: np.ndarray = entries, exits: np.ndarray = exits) -> dict[str, list]:
                portfolio = vbt.Portfolio.from_signals(
                    close=close, entries=entries, exits=exits, price=open_, size=np.inf, size_type="amount",
                    size_granularity=1, fees=PER_SHARE / open_, init_cash=BASE.cash, direction="longonly",
                    accumulate=False)
                return {"trades": portfolio.trades.count().to_numpy().tolist(),
                        "total_return": portfolio.total_return().to_numpy().tolist()}

            calls.append(run)
        passes = timed_passes(calls, repeat)
        report[case["name"]] = {"prepare_s": prepare, "first_s": passes.first_s, "warm_s": passes.warm_s,
                                "symbols": passes.results}
    report["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(report))


def vectorbt(all_cases: dict[str, list[pl.DataFrame]], repeat: int) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="grid-bench-") as tmp:
        manifest = []
        for c, (name, symbols) in enumerate(all_cases.items()):
            files = []
            for s, bars in enumerate(symbols):
                path = Path(tmp) / f"case{c}-symbol{s}.npz"
                np.savez(path, open=bars["open"].to_numpy(), close=bars["close"].to_numpy())
                files.append(str(path))
            manifest.append({"name": name, "files": files})
        (Path(tmp) / "cases.json").write_text(json.dumps(manifest))
        done = subprocess.run([sys.executable, __file__, "--vectorbt-worker", tmp, "--repeat", str(repeat)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def disagreements(table: pl.DataFrame, theirs: dict[str, list], show: bool) -> list[tuple[dict[str, int], str]]:
    """Combinations where the engines differ (trade count, or total return by more than 1e-9), with both sides in
    words; `show` prints the CHECKED combinations side by side."""
    differ = []
    rows = table.select("fast_period", "slow_period", "trades", "total_return_pct").iter_rows()
    for k, (fast, slow, trades, return_pct) in enumerate(rows):
        ours, their_trades, their_return = return_pct / 100, theirs["trades"][k], theirs["total_return"][k]
        both = (f"{fast}/{slow}: trades {trades:,} vs {their_trades:,}, return {ours:+.12f} vs {their_return:+.12f}"
                f" (ours vs vectorbt)")
        if trades != their_trades or abs(ours - their_return) > 1e-9 * max(1.0, abs(ours)):
            differ.append(({"fast_period": fast, "slow_period": slow}, both))
        if show and (fast, slow) in CHECKED:
            print(f"    {both}")
    return differ


def minimum_binds(bars: pl.DataFrame, combination: dict[str, int]) -> bool:
    """Whether some order was small enough for IBKR's USD 1 minimum to apply, which vectorbt cannot model."""
    trades = run_backtest(bars, "1 min", combination_config(BASE, combination)).trades
    return trades["size"].min() * PER_SHARE < IBKRFixed().minimum


def rate(symbols: list[pl.DataFrame], seconds: float) -> str:
    return f"{SPEC.size * sum(bars.height for bars in symbols) / seconds / 1e6:>9,.1f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 3 x 20k bars instead of 1M and 10 x 100k")
    parser.add_argument("--skip-vectorbt", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="warm passes per engine and case (default 3)")
    parser.add_argument("--vectorbt-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vectorbt_worker:
        vectorbt_worker(args.vectorbt_worker, args.repeat)
        return
    all_cases = cases(args.quick)
    print(f"sma_crossover grid, {SPEC.size} combinations ({SPEC.dropped} with fast >= slow dropped), long only, "
          f"IBKR Fixed, USD 1,000,000 all in; rates are combinations x bars per second of the best of {args.repeat} "
          "warm passes")
    ours = {name: timed_passes([lambda b=b: evaluate_grid(b, "1 min", SPEC, BASE) for b in symbols], args.repeat)
            for name, symbols in all_cases.items()}
    floors = {name: numpy_floor(symbols) for name, symbols in all_cases.items()}
    our_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    theirs = None if args.skip_vectorbt else vectorbt(all_cases, args.repeat)
    print(f"| {'case':<14} | {'engine':<8} | {'first pass':>10} | {'best warm':>9} | {'median':>9} | {'rate':>10} | "
          f"{'vs vectorbt':>11} | {'median vs':>9} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 12}|{'-' * 11}|{'-' * 11}|{'-' * 12}|{'-' * 13}|{'-' * 11}|")
    for name, symbols in all_cases.items():
        mine = ours[name]
        ratio = median_ratio = ""
        if theirs is not None:
            vbt = Passes(theirs[name]["first_s"], theirs[name]["warm_s"], [])
            ratio = f"{vbt.best_s / mine.best_s:>10,.0f}x"
            median_ratio = f"{vbt.median_s / mine.median_s:>8,.0f}x"
            print(f"| {name:<14} | vectorbt | {vbt.first_s:>9.2f}s | {vbt.best_s:>8.2f}s | {vbt.median_s:>8.2f}s | "
                  f"{rate(symbols, vbt.best_s)} | {'1x':>11} | {'1x':>9} |")
        print(f"| {name:<14} | grid     | {mine.first_s:>9.2f}s | {mine.best_s:>8.3f}s | {mine.median_s:>8.3f}s | "
              f"{rate(symbols, mine.best_s)} | {ratio:>11} | {median_ratio:>9} |")
        print(f"| {name:<14} | numpy    | {'':>10} | {floors[name]:>8.3f}s | {'':>9} | {rate(symbols, floors[name])} | "
              f"{'':>11} | {'':>9} |")
    print("warm passes, seconds: " + "; ".join(
        f"{name} grid {', '.join(f'{t:.3f}' for t in ours[name].warm_s)}"
        + ("" if theirs is None else f", vectorbt {', '.join(f'{t:.2f}' for t in theirs[name]['warm_s'])}")
        for name in all_cases))
    print(f"peak RSS: grid process {our_rss:.2f} GB", end="")
    if theirs is None:
        print()
        return
    print(f", vectorbt subprocess {theirs['maxrss_kb'] / 2**20:.2f} GB")
    for name, symbols in all_cases.items():
        vbt = theirs[name]
        print(f"{name}: vectorbt signal preparation {vbt['prepare_s']:.2f}s (not in its time); "
              f"ours vs vectorbt, first symbol:")
        differ = [(bars, *difference) for s, (bars, table, their) in enumerate(zip(symbols, ours[name].results,
                                                                                 vbt["symbols"], strict=True))
                  for difference in disagreements(table, their, show=s == 0)]
        other = [both for bars, combination, both in differ if not minimum_binds(bars, combination)]
        print(f"    {SPEC.size * len(symbols) - len(differ)}/{SPEC.size * len(symbols)} combinations agree (same "
              f"trades, total return within 1e-9); {len(differ) - len(other)} others had orders under 200 shares "
              f"(IBKR's USD 1 minimum); other differences: {len(other)}")
        for both in other:
            print(f"      {both}")


if __name__ == "__main__":
    main()
