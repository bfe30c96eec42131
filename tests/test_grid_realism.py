"""Realism options in the grid: every combination of every built-in strategy with stops, take-profit, trailing
stop, flatten at the session close and short-borrow fees equals the single-run engine's (which
test_backtest_realism.py works by hand), and one hand-worked case through the grid itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

import ibkr_flows.backtest.grid.evaluate as grid_evaluate
from ibkr_flows.backtest.costs import IBKRFixed, NoCommission
from ibkr_flows.backtest.engine import BacktestConfig, Finalize, Mode
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.grid import GridSpec, evaluate_grid
from ibkr_flows.backtest.sizing import FixedShares
from ibkr_flows.backtest.strategies.base import Entry
from tests.test_grid import assert_grid_matches_engine

GRIDS = {
    "sma_crossover": {"fast_period": [2, 5], "slow_period": [8, 20]},
    "ema_crossover": {"fast_period": [3], "slow_period": [9, 30]},
    "rsi_reversion": {"period": [3, 14], "lower": [30.0, 45.0], "upper": [55.0, 70.0]},
    "donchian_breakout": {"lookback": [3, 12, 40]},
    "buy_and_hold": {},
}
RULES = {
    "stop": ExitRules(stop_loss_pct=0.6),
    "take-profit": ExitRules(take_profit_pct=0.8),
    "trailing": ExitRules(trailing_stop_pct=0.5),
    "stops": ExitRules(stop_loss_pct=0.7, take_profit_pct=1.0, trailing_stop_pct=0.4),
    "flatten": ExitRules(flatten_at_close=True),
    "borrow": ExitRules(borrow_fee_pct=25.0),
    "everything": ExitRules(stop_loss_pct=0.5, take_profit_pct=1.2, trailing_stop_pct=0.6, flatten_at_close=True,
                            borrow_fee_pct=8.0),
}
CONVENTIONS = [  # (mode, entry, finalize, slippage_bps)
    ("long_short", "state", "close", 0.0),
    ("long_only", "state", "open", 1.5),
]


def session_bars(n: int, seed: int, vol: float = 0.004) -> pl.DataFrame:
    """5-minute bars of New York regular sessions on weekdays (so a Friday's short pays three days of borrow),
    a random walk with close-to-open gaps and wicks that reach the stops."""
    rng = np.random.default_rng(seed)
    times: list[datetime] = []
    day = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    while len(times) < n:
        if day.weekday() < 5:
            times.extend(day + timedelta(minutes=5 * i) for i in range(78))
        day += timedelta(days=1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, vol / 2, n))
    wick = np.exp(np.abs(rng.normal(0, vol, (2, n))))
    return pl.DataFrame({"ts": times[:n], "open": open_, "high": np.maximum(open_, close) * wick[0],
                         "low": np.minimum(open_, close) / wick[1], "close": close, "volume": np.full(n, 1e4)},
                        schema_overrides={"ts": pl.Datetime("us", "UTC")})


BARS = session_bars(1200, 7)


@pytest.mark.parametrize("rules", list(RULES.values()), ids=list(RULES))
@pytest.mark.parametrize("strategy", sorted(GRIDS))
@pytest.mark.parametrize(("mode", "entry", "finalize", "slippage_bps"), CONVENTIONS,
                         ids=["-".join(c[:3]) for c in CONVENTIONS])
def test_every_combination_equals_the_engine(strategy: str, rules: ExitRules, mode: Mode, entry: Entry,
                                             finalize: Finalize, slippage_bps: float,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel computes every row (the grid's access to the engine is cut), across bar blocks, threads and
    groups of signal rows; each row equals `run_backtest` of its combination with the same options."""
    spec = GridSpec(strategy, GRIDS[strategy])
    base = BacktestConfig(strategy, cash=1e5, commission=IBKRFixed(), slippage_bps=slippage_bps, mode=mode,
                          entry=entry, finalize=finalize, exits=rules)
    with monkeypatch.context() as patch:
        patch.setattr(grid_evaluate, "run_backtest", pytest.fail)
        patch.setattr(grid_evaluate, "BLOCK_BARS", 400)  # 3 blocks
        patch.setattr(grid_evaluate, "TARGETS_BYTES", 1200 * 3)  # at most 3 signal rows at a time
        patch.setattr(grid_evaluate, "KERNEL_THREADS", 2)
        table = evaluate_grid(BARS, "5 mins", spec, base)
    assert table.height == spec.size
    assert ((table["trades"] > 0) | (table["exposure_pct"] > 0)).all()  # not vacuous: every combination trades
    assert_grid_matches_engine(table, BARS, spec, base)


def test_the_options_change_the_results() -> None:
    """Each option fires on these bars: the grid's rows with it differ from the rows without it."""
    spec = GridSpec("sma_crossover", GRIDS["sma_crossover"])
    base = BacktestConfig("sma_crossover", mode="long_short")
    plain = evaluate_grid(BARS, "5 mins", spec, base)
    for name, rules in RULES.items():
        with_rules = evaluate_grid(BARS, "5 mins", spec, BacktestConfig("sma_crossover", mode="long_short",
                                                                        exits=rules))
        assert (with_rules["final_equity"] != plain["final_equity"]).all(), name


@pytest.mark.parametrize("entry", ["state", "cross"])
def test_crossover_signals_with_exits_are_the_strategys(entry: Entry) -> None:
    """With realism options a crossover grid writes its signals from the averages (`indicators.trend_targets`),
    under both entry conventions: the rows equal the engine's, which uses the strategy's polars expression."""
    spec = GridSpec("ema_crossover", {"fast_period": [2, 4, 6], "slow_period": [7, 15]})
    base = BacktestConfig("ema_crossover", mode="long_short", entry=entry, exits=ExitRules(stop_loss_pct=0.5))
    table = evaluate_grid(BARS, "5 mins", spec, base)
    assert_grid_matches_engine(table, BARS, spec, base)


def test_a_hand_worked_stop_through_the_grid() -> None:
    """Buy and hold, 10 shares, no commission, stop 5% below the entry: bought at bar 1's open 100, bar 3's low
    94 touches 95 (its open 96 does not): sold at 95, a 50 loss; the target stays long, so the position stays flat
    to the end. Final equity 9,950, one losing trade of -5%, long for bars 1 and 2 of 6."""
    rows = [(100, 101, 99, 100), (100, 102, 99, 101), (101, 101, 96, 97), (96, 97, 94, 95), (95, 96, 94, 95),
            (95, 96, 94, 95)]
    opens, highs, lows, closes = (list(column) for column in zip(*rows, strict=True))
    frame = pl.DataFrame({"ts": [datetime(2024, 1, 3, tzinfo=UTC) + timedelta(days=i) for i in range(6)],
                          "open": opens, "high": highs, "low": lows, "close": closes, "volume": [1e3] * 6},
                         schema_overrides={"ts": pl.Datetime("us", "UTC"), "open": pl.Float64, "high": pl.Float64,
                                           "low": pl.Float64, "close": pl.Float64})
    base = BacktestConfig("buy_and_hold", cash=10_000, commission=NoCommission(), sizing=FixedShares(10),
                          exits=ExitRules(stop_loss_pct=5))
    row = evaluate_grid(frame, "1 day", GridSpec("buy_and_hold", {}), base).row(0, named=True)
    assert (row["final_equity"], row["trades"], row["worst_trade_pct"]) == (9950.0, 1, -5.0)
    assert row["exposure_pct"] == pytest.approx(100 * 2 / 6)
    assert row["max_drawdown_pct"] == pytest.approx((9950 / 10_010 - 1) * 100)
