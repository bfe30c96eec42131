"""Parameter grids of every built-in strategy against vectorbt, with each run's peak memory.

Cases: (a) 1 symbol x 1M one-minute bars, (b) 10 symbols x 100k (`--quick`: 100k and 3 x 20k). Long only, next-open
fills, USD 1,000,000 all in, IBKR Fixed (vectorbt: 0.005 / open as a fee rate, whole shares; see bench/grid_sma.py
for why that is the same cost for orders of 200 shares or more). Grids: `GRIDS` below.

Every (strategy, case, engine) runs in a subprocess of its own, so that its peak RSS (`ru_maxrss`) is its own; the
peak is printed with the RSS after the bars were made (the baseline both engines share). Times: a first pass over
the case's symbols (numba compilation or its cache load), then `--repeat` warm passes; the best warm pass is
compared (timeit's convention: on a shared VM, other load only adds time), the median is printed too.
- ours: `evaluate_grid`, every metric of `METRIC_COLUMNS` per combination;
- floor: the memory-streaming floor, one numpy sum over each symbol's closes per combination (best of the
  passes, in our subprocess), and ours over it;
- ours with exits: the same grid with `EXITS` (stop-loss, take-profit, trailing stop, flatten at the session
  close: the realism kernel, `grid.realism`), its best warm pass;
- vectorbt 1.2: `Portfolio.from_signals` plus total_return and trades.count, on entries/exits made from our own
  signals (`grid_targets`, the signals the engine trades), so its indicators cost it nothing: building them is
  printed apart ("prep"). Agreement: same trade count and total return within 1e-9 per combination.
Run: `.venv/bin/python bench/grid_strategies.py [--quick] [--repeat N] [--strategy NAME ...] [--skip-vectorbt]`.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import polars as pl

from bench.backtest_engine import minute_bars
from bench.grid_sma import PER_SHARE, Passes, numpy_floor, timed_passes
from ibkr_flows.backtest.costs import IBKRFixed
from ibkr_flows.backtest.engine import BacktestConfig
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.grid import GridSpec, evaluate_grid
from ibkr_flows.backtest.strategies import get_strategy

GRIDS: dict[str, dict[str, list]] = {
    "sma_crossover": {"fast_period": [5, 10, 15, 20, 25], "slow_period": [30, 50, 70, 90]},
    "ema_crossover": {"fast_period": [5, 10, 15, 20, 25], "slow_period": [30, 50, 70, 90]},
    "rsi_reversion": {"period": [7, 14, 21, 28], "lower": [20.0, 25.0, 30.0, 35.0], "upper": [65.0, 70.0, 75.0, 80.0]},
    "donchian_breakout": {"lookback": list(range(10, 201, 10))},
    "buy_and_hold": {},
}
CASH = 1_000_000.0
EXITS = ExitRules(stop_loss_pct=2.0, take_profit_pct=4.0, trailing_stop_pct=1.0, flatten_at_close=True)


def case_bars(case: str, quick: bool) -> list[pl.DataFrame]:
    if case == "a":
        return [minute_bars(100_000 if quick else 1_000_000)]
    return [minute_bars(20_000 if quick else 100_000, seed) for seed in range(3 if quick else 10)]


def long_only_orders(bars: pl.DataFrame, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """(entries, exits), one column per combination, at their fill bars: our signals, held from the next bar,
    flat on the first and last bar, -1 flat (long only)."""
    strategies = [spec.strategy_for(c) for c in spec.combinations()]
    signals = np.zeros((len(strategies), bars.height), dtype=np.int8)
    get_strategy(spec.strategy).grid_targets(bars, strategies, signals)
    held = np.zeros((bars.height, len(strategies)), dtype=bool)
    held[1:-1] = (signals[:, :-2] > 0).T
    before = np.zeros_like(held)
    before[1:] = held[:-1]
    return held & ~before, before & ~held


def worker(engine: str, strategy: str, case: str, quick: bool, repeat: int) -> None:
    """Subprocess side: one engine on one strategy's grid and one case; prints JSON."""
    symbols = case_bars(case, quick)
    spec = GridSpec(strategy, GRIDS[strategy])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepare = 0.0
    if engine in ("ours", "exits"):
        base = BacktestConfig(strategy, cash=CASH, commission=IBKRFixed(), exits=EXITS if engine == "exits" else
                              ExitRules())

        def ours(bars: pl.DataFrame) -> dict[str, list]:
            table = evaluate_grid(bars, "1 min", spec, base)
            return {"trades": table["trades"].to_list(), "total_return": (table["total_return_pct"] / 100).to_list()}

        calls = [lambda b=b: ours(b) for b in symbols]
    else:
        import vectorbt as vbt

        calls = []
        for bars in symbols:
            started = time.perf_counter()
            entries, exits = long_only_orders(bars, spec)
            prepare += time.perf_counter() - started
            calls.append(functools.partial(vectorbt_run, vbt, bars["open"].to_numpy()[:, None],
                                           bars["close"].to_numpy()[:, None], entries, exits))
    passes = timed_passes(calls, repeat)
    floor = min(numpy_floor(symbols, spec.size) for _ in range(max(repeat, 1)))
    print(json.dumps({"first_s": passes.first_s, "warm_s": passes.warm_s, "prepare_s": prepare, "floor_s": floor,
                      "baseline_kb": baseline, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "symbols": passes.results}))


def vectorbt_run(vbt: Any, open_: np.ndarray, close: np.ndarray, entries: np.ndarray, exits: np.ndarray
                 ) -> dict[str, list]:
    portfolio = vbt.Portfolio.from_signals(
        close=close, entries=entries, exits=exits, price=open_, size=np.inf, size_type="amount", size_granularity=1,
        fees=PER_SHARE / open_, init_cash=CASH, direction="longonly", accumulate=False)
    return {"trades": portfolio.trades.count().to_numpy().tolist(),
            "total_return": np.atleast_1d(portfolio.total_return()).tolist()}


def run_worker(engine: str, strategy: str, case: str, quick: bool, repeat: int) -> dict:
    command = [sys.executable, __file__, "--worker", engine, "--strategy", strategy, "--case", case,
               "--repeat", str(repeat), *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(ours: dict, theirs: dict) -> tuple[int, int]:
    agree = total = 0
    for mine, other in zip(ours["symbols"], theirs["symbols"], strict=True):
        for trades, ret, their_trades, their_ret in zip(mine["trades"], mine["total_return"], other["trades"],
                                                        other["total_return"], strict=True):
            total += 1
            agree += trades == their_trades and abs(ret - their_ret) <= 1e-9 * max(1.0, abs(ret))
    return agree, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 3 x 20k bars instead of 1M and 10 x 100k")
    parser.add_argument("--skip-vectorbt", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="warm passes per engine and case (default 3)")
    parser.add_argument("--strategy", action="append", choices=sorted(GRIDS), help="default: every strategy")
    parser.add_argument("--worker", choices=["ours", "exits", "vectorbt"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=["a", "b"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.strategy[0], args.case, args.quick, args.repeat)
        return
    names = {"a": "(a) 1 x 100k" if args.quick else "(a) 1 x 1M", "b": "(b) 3 x 20k" if args.quick else "(b) 10 x 100k"}
    print(f"grids of every strategy, long only, IBKR Fixed, USD 1,000,000 all in; best of {args.repeat} warm passes; "
          "peak RSS per subprocess (baseline: after making the bars)")
    print("| strategy | combos | case | ours best (median) | vectorbt best (median) | vs vectorbt | floor | "
          "ours / floor | ours with exits | vectorbt prep | ours peak RSS (baseline) | vectorbt peak RSS (baseline) | "
          "agree |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy in args.strategy or list(GRIDS):
        size = GridSpec(strategy, GRIDS[strategy]).size
        for case in ("a", "b"):
            mine = run_worker("ours", strategy, case, args.quick, args.repeat)
            ours = Passes(mine["first_s"], mine["warm_s"], [])
            exits = Passes(*(run_worker("exits", strategy, case, args.quick, args.repeat)[k]
                             for k in ("first_s", "warm_s")), [])
            cells = [f"{ours.best_s:.3f} s ({ours.median_s:.3f})", "", "", f"{mine['floor_s']:.4f} s",
                     f"{ours.best_s / mine['floor_s']:,.1f}x", f"{exits.best_s:.3f} s", "",
                     f"{mine['maxrss_kb'] / 2**20:.2f} GB ({mine['baseline_kb'] / 2**20:.2f})", "", ""]
            if not args.skip_vectorbt:
                other = run_worker("vectorbt", strategy, case, args.quick, args.repeat)
                theirs = Passes(other["first_s"], other["warm_s"], [])
                agree, total = agreement(mine, other)
                cells[1:3] = [f"{theirs.best_s:.2f} s ({theirs.median_s:.2f})", f"{theirs.best_s / ours.best_s:,.0f}x"]
                cells[6] = f"{other['prepare_s']:.2f} s"
                cells[8:] = [f"{other['maxrss_kb'] / 2**20:.2f} GB ({other['baseline_kb'] / 2**20:.2f})",
                             f"{agree}/{total}"]
            print(f"| {strategy} | {size} | {names[case]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
