"""Backtest engine wall time: sma_crossover 5/10 on 60 one-minute bars (the user's old tool: 0.04 s) and on 1M.

Bars are a synthetic geometric random walk, so the 1M case has a realistic number of crossings (position changes
are what the fill loop iterates over). Times are the median of several runs of `run_backtest` end to end:
validation, polars signals, fills, trade table and metrics; the first (warm-up) run is not counted.
Run: `.venv/bin/python bench/backtest_engine.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed, NoCommission
from ibkr_flows.backtest.engine import BacktestConfig, BacktestResult, run_backtest

COMMISSIONS: dict[str, CommissionModel] = {"IBKR Fixed": IBKRFixed(), "none": NoCommission()}
"""With costs, a random walk bleeds the account until entries no longer fit in the cash and stop; without them
every crossing trades, the fill loop's worst case."""


def minute_bars(n: int, seed: int = 42) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.0001, n))
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    return pl.DataFrame({
        "ts": pl.datetime_range(start, start + (n - 1) * timedelta(minutes=1), "1m", eager=True, time_zone="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.0002, "low": np.minimum(open_, close) * 0.9998,
        "close": close, "volume": rng.integers(100, 10_000, n).astype(np.float64),
    })


def median_seconds(bars: pl.DataFrame, commission: CommissionModel, runs: int) -> tuple[float, BacktestResult]:
    config = BacktestConfig("sma_crossover", {"fast_period": 5, "slow_period": 10}, commission=commission,
                            mode="long_short")
    result = run_backtest(bars, "1 min", config)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run_backtest(bars, "1 min", config)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"sma_crossover 5/10, long_short, USD 100,000 all in, median of {args.runs} runs")
    print(f"| {'bars':>9} | {'commission':<10} | {'engine':>9} | {'trades':>7} | {'final equity':>13} |")
    print(f"|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 9}|{'-' * 15}|")
    for n in (60, 1_000_000):
        bars = minute_bars(n)
        for label, commission in COMMISSIONS.items():
            seconds, result = median_seconds(bars, commission, args.runs)
            print(f"| {n:>9,} | {label:<10} | {seconds:>8.4f}s | {result.metrics.trades:>7,} | "
                  f"{result.metrics.final_equity:>13,.2f} |")
    print("old tool, 60 one-minute bars: 0.04 s")


if __name__ == "__main__":
    main()
