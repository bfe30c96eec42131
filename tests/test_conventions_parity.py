"""The engine's entry and finalize conventions against backtesting.py 0.6.6 and vectorbt, trade for trade.

Each tool gets the strategy's rule computed independently (pandas averages, a numpy Wilder RSI, pandas channels)
and its own crossing function for entry "cross" (backtesting.py's `lib.crossover`, vectorbt's `crossed_above` /
`crossed_below`). The settings that make the three models coincide:

- fills at the next bar's open: backtesting.py `trade_on_close=False`; vectorbt gets the signals shifted one bar
  and `price=open` (its orders otherwise fill at the signal bar's close);
- one position at a time, reversed in one step: backtesting.py `exclusive_orders=True`; vectorbt `accumulate=False`
  (its default) with short entries as the opposite signal;
- all the cash in whole shares, no leverage: backtesting.py's default `size` at `margin=1`; vectorbt
  `size=np.inf, size_granularity=1`; ours `AllIn()`. Both tools size an entry as floor(cash / (price * (1 +
  rate))), as `sizing.affordable_shares` does for a percentage commission;
- commission a fraction of the trade value at each fill: backtesting.py `commission=rate`, vectorbt `fees=rate`,
  ours `PercentCommission(rate)`; tested at 0 and 10 bps;
- finalize "close": backtesting.py `finalize_trades=True` (it closes at the last bar's open) with no order from
  the last two bars; vectorbt an exit signal on the last bar (so it fills at the last open). Finalize "open":
  backtesting.py `finalize_trades=False` (an open trade is not in `_trades`, the equity marks it at the last
  close), vectorbt's open trade (status 0) left out of the closed trades and marked at the last close.

The one deliberate difference: entry "cross" skips ties (a crossing may pass through bars where the two series are
equal), as vectorbt's `crossed_above` does, while backtesting.py's `crossover()` compares only the last two bars
and misses a crossing through a tie. On a series with ties, `test_cross_through_ties_is_the_documented_difference`
asserts exactly that difference and that the fills agree once backtesting.py is handed the tie-skipping crossings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ibkr_flows.backtest.costs import PercentCommission
from ibkr_flows.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from ibkr_flows.backtest.sizing import AllIn

START = datetime(2015, 1, 2, tzinfo=UTC)
BARS = 3000


def random_walk(n: int, seed: int) -> pl.DataFrame:
    """Daily geometric random walk with a gap between each close and the next open, so open and close fills
    differ."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.003, n))
    return _frame(open_, close, np.maximum(open_, close) * 1.002, np.minimum(open_, close) * 0.998)


def tied_walk(n: int, seed: int) -> pl.DataFrame:
    """Integer closes moving -1, 0 or +1 a bar: SMAs of 2 and 4 closes are exact in floating point (sums of
    integers, halved or quartered) and tie often."""
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.integers(-1, 2, n)).astype(np.float64)
    open_ = np.r_[100.0, close[:-1]] + rng.choice([-0.5, 0.0, 0.5], n)
    return _frame(open_, close, np.maximum(open_, close) + 0.5, np.minimum(open_, close) - 0.5)


def _frame(open_: np.ndarray, close: np.ndarray, high: np.ndarray, low: np.ndarray) -> pl.DataFrame:
    n = len(close)
    return pl.DataFrame({
        "ts": pl.datetime_range(START, START + (n - 1) * timedelta(days=1), timedelta(days=1), eager=True,
                                time_zone="UTC"),
        "open": open_, "high": high, "low": low, "close": close, "volume": np.full(n, 1e4)})


def wilder_rsi(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's RSI written out: the first average is the plain mean of `period` changes, then
    avg = ((period - 1) * avg + change) / period; NaN for the first `period` bars."""
    change = np.diff(close)
    gain, loss = change[:period].clip(min=0).mean(), (-change[:period]).clip(min=0).mean()
    rsi = np.full(len(close), np.nan)
    rsi[period] = 100 * gain / (gain + loss)
    for i, step in enumerate(change[period:], start=period + 1):
        gain, loss = ((period - 1) * gain + max(step, 0)) / period, ((period - 1) * loss + max(-step, 0)) / period
        rsi[i] = 100 * gain / (gain + loss)
    return rsi


Rule = tuple[pd.Series, pd.Series]
"""(a, b) compared per bar: the target goes +1 when a is above b, -1 (flat in long-only mode) when below."""


@dataclass(frozen=True)
class Case:
    strategy: str
    params: dict[str, object]
    up: Callable[[pd.DataFrame], Rule]
    down: Callable[[pd.DataFrame], Rule]
    entries: tuple[str, ...]
    modes: tuple[str, ...]

    def __str__(self) -> str:
        return self.strategy


def _averages(kind: str, fast: int, slow: int) -> Callable[[pd.DataFrame], Rule]:
    def rule(data: pd.DataFrame) -> Rule:
        close = data["Close"]
        if kind == "sma":
            return close.rolling(fast).mean(), close.rolling(slow).mean()
        return (close.ewm(span=fast, adjust=False, min_periods=fast).mean(),
                close.ewm(span=slow, adjust=False, min_periods=slow).mean())
    return rule


def _swap(rule: Callable[[pd.DataFrame], Rule]) -> Callable[[pd.DataFrame], Rule]:
    def swapped(data: pd.DataFrame) -> Rule:
        a, b = rule(data)
        return b, a
    return swapped


def _rsi_below(data: pd.DataFrame) -> Rule:
    rsi = pd.Series(wilder_rsi(data["Close"].to_numpy(), 5), index=data.index)
    return pd.Series(30.0, index=data.index), rsi


def _rsi_above(data: pd.DataFrame) -> Rule:
    rsi = pd.Series(wilder_rsi(data["Close"].to_numpy(), 5), index=data.index)
    return rsi, pd.Series(70.0, index=data.index)


def _channel_high(data: pd.DataFrame) -> Rule:
    return data["Close"], data["High"].rolling(20).max().shift(1)


def _channel_low(data: pd.DataFrame) -> Rule:
    return data["Low"].rolling(20).min().shift(1), data["Close"]


SMA, EMA = _averages("sma", 5, 10), _averages("ema", 12, 26)
CASES = [
    Case("sma_crossover", {"fast_period": 5, "slow_period": 10}, SMA, _swap(SMA), ("state", "cross"),
         ("long_only", "long_short")),
    Case("ema_crossover", {"fast_period": 12, "slow_period": 26}, EMA, _swap(EMA), ("state", "cross"),
         ("long_only", "long_short")),
    # exits to flat (target 0), never short: long_short would run the same trades
    Case("rsi_reversion", {"period": 5, "lower": 30.0, "upper": 70.0}, _rsi_below, _rsi_above, ("state", "cross"),
         ("long_only",)),
    # the breakout rule has no crossing variant: a close beyond the channel is already an event
    Case("donchian_breakout", {"lookback": 20}, _channel_high, _channel_low, ("state",),
         ("long_only", "long_short")),
]


@dataclass(frozen=True)
class Trades:
    """Closed trades as bar indices and signed share counts, the final equity and the shares still held."""

    entry_bar: list[int]
    exit_bar: list[int]
    size: list[int]
    final_equity: float
    open_shares: int


def ours(bars: pl.DataFrame, case: Case, mode: str, entry: str, finalize: str, rate: float) -> Trades:
    result: BacktestResult = run_backtest(bars, "1 day", BacktestConfig(
        case.strategy, case.params, cash=100_000, commission=PercentCommission(rate), sizing=AllIn(), mode=mode,
        entry=entry, finalize=finalize))
    index = {ts: i for i, ts in enumerate(bars["ts"].to_list())}
    sign = np.where(result.trades["side"].to_numpy() == "long", 1, -1)
    return Trades([index[t] for t in result.trades["entry_time"].to_list()],
                  [index[t] for t in result.trades["exit_time"].to_list()],
                  (sign * result.trades["size"].to_numpy()).tolist(), result.metrics.final_equity,
                  int(result.equity["position"][-1]))


def _pandas(bars: pl.DataFrame) -> pd.DataFrame:
    return bars.to_pandas().set_index("ts").rename(columns=str.capitalize)


def bt_events(rule: Rule, entry: str) -> np.ndarray:
    """Where backtesting.py's strategy acts: a > b ("state") or `lib.crossover(a, b)` on the history so far."""
    from backtesting.lib import crossover

    a, b = (s.to_numpy() for s in rule)
    if entry == "state":
        return a > b
    return np.array([crossover(a[: i + 1], b[: i + 1]) for i in range(len(a))])


def backtesting_py(bars: pl.DataFrame, up: np.ndarray, down: np.ndarray, mode: str, finalize: str, rate: float
                   ) -> Trades:
    """backtesting.py acting on `up` (go long) and `down` (go short, or flat in long-only mode) events."""
    from backtesting import Backtest
    from backtesting import Strategy as BtStrategy

    n = bars.height
    last_decision = n - 3 if finalize == "close" else n - 2  # "close": the end-of-data exit overrides bar n - 2

    class Mirror(BtStrategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            if i > last_decision:
                return
            if up[i] and not self.position.is_long:
                self.buy()
            elif down[i] and mode == "long_short" and not self.position.is_short:
                self.sell()
            elif down[i] and mode == "long_only" and self.position.is_long:
                self.position.close()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DatetimeIndex.dayofweek is deprecated", module="backtesting")
        warnings.filterwarnings("ignore", message="Some trades remain open")  # expected with finalize "open"
        stats = Backtest(_pandas(bars), Mirror, cash=100_000, commission=rate, trade_on_close=False,
                         exclusive_orders=True, finalize_trades=finalize == "close").run()
    trades = stats["_trades"]
    open_shares = sum(t.size for t in stats["_strategy"].trades)
    return Trades(trades["EntryBar"].tolist(), trades["ExitBar"].tolist(), trades["Size"].tolist(),
                  float(stats["Equity Final [$]"]), int(open_shares))


def vectorbt(bars: pl.DataFrame, case: Case, mode: str, entry: str, finalize: str, rate: float) -> Trades:
    """vectorbt's `Portfolio.from_signals` on the rule, with its own crossing functions for entry "cross"."""
    import vectorbt as vbt

    data = _pandas(bars)
    up_a, up_b = case.up(data)
    down_a, down_b = case.down(data)
    if entry == "state":
        up, down = up_a > up_b, down_a > down_b
    else:
        up, down = up_a.vbt.crossed_above(up_b), down_a.vbt.crossed_above(down_b)
    up, down = (s.shift(1, fill_value=False).to_numpy(copy=True) for s in (up, down))
    exit_long, exit_short = np.zeros_like(up), np.zeros_like(up)
    if finalize == "close":
        up[-1] = down[-1] = False
        exit_long[-1] = exit_short[-1] = True
    common = {"price": data["Open"], "size": np.inf, "size_granularity": 1, "fees": rate, "init_cash": 100_000}
    if mode == "long_short":
        pf = vbt.Portfolio.from_signals(data["Close"], entries=up, exits=exit_long, short_entries=down,
                                        short_exits=exit_short, **common)
    else:
        pf = vbt.Portfolio.from_signals(data["Close"], entries=up, exits=down | exit_long, direction="longonly",
                                        **common)
    records = pf.trades.records
    closed = records[records["status"] == 1]
    sign = np.where(closed["direction"] == 0, 1, -1)
    still_open = records[records["status"] == 0]
    open_shares = int((np.where(still_open["direction"] == 0, 1, -1) * still_open["size"]).sum())
    return Trades(closed["entry_idx"].tolist(), closed["exit_idx"].tolist(),
                  (sign * closed["size"].to_numpy()).astype(int).tolist(), float(pf.final_value()), open_shares)


def assert_same(mine: Trades, theirs: Trades, tool: str) -> None:
    assert mine.entry_bar == theirs.entry_bar, tool
    assert mine.exit_bar == theirs.exit_bar, tool
    assert mine.size == theirs.size, tool
    assert mine.open_shares == theirs.open_shares, tool
    # the same fills; only the order of floating-point additions in the cash differs
    assert mine.final_equity == pytest.approx(theirs.final_equity, rel=1e-9), tool


COMBINATIONS = [(case, mode, entry, finalize) for case in CASES for mode in case.modes for entry in case.entries
                for finalize in ("close", "open")]


@pytest.fixture(scope="module")
def walk() -> pl.DataFrame:
    return random_walk(BARS, seed=16)


@pytest.mark.parametrize("rate", [0.0, 0.001])
@pytest.mark.parametrize(("case", "mode", "entry", "finalize"), COMBINATIONS, ids=lambda v: str(v))
def test_matches_backtesting_py_and_vectorbt(walk: pl.DataFrame, case: Case, mode: str, entry: str, finalize: str,
                                             rate: float) -> None:
    mine = ours(walk, case, mode, entry, finalize, rate)
    assert len(mine.entry_bar) > 10  # enough trades for the comparison to mean something
    data = _pandas(walk)
    up, down = bt_events(case.up(data), entry), bt_events(case.down(data), entry)
    assert_same(mine, backtesting_py(walk, up, down, mode, finalize, rate), "backtesting.py")
    assert_same(mine, vectorbt(walk, case, mode, entry, finalize, rate), "vectorbt")


SMA_TIES = Case("sma_crossover", {"fast_period": 2, "slow_period": 4}, _averages("sma", 2, 4),
                _swap(_averages("sma", 2, 4)), ("state", "cross"), ("long_only", "long_short"))


@pytest.mark.parametrize("finalize", ["close", "open"])
@pytest.mark.parametrize("mode", ["long_only", "long_short"])
@pytest.mark.parametrize("entry", ["state", "cross"])
def test_ties_match_vectorbt(entry: str, mode: str, finalize: str) -> None:
    """On a series where the averages tie often, both conventions still match vectorbt, and "state" also
    backtesting.py (a tie keeps the side in all three)."""
    bars = tied_walk(BARS, seed=4)
    fast, slow = SMA_TIES.up(_pandas(bars))
    assert ((fast == slow).sum()) > 100
    mine = ours(bars, SMA_TIES, mode, entry, finalize, 0.001)
    assert_same(mine, vectorbt(bars, SMA_TIES, mode, entry, finalize, 0.001), "vectorbt")
    if entry == "state":
        up, down = bt_events((fast, slow), entry), bt_events((slow, fast), entry)
        assert_same(mine, backtesting_py(bars, up, down, mode, finalize, 0.001), "backtesting.py")


def _tie_skipping_crossings(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a > b on this bar and a < b on the last bar before it where they differed (what entry "cross" means)."""
    side = np.sign(a - b)  # NaN where undefined, 0 on a tie
    last = pd.Series(np.where(side == 0, np.nan, side)).ffill().shift(1).to_numpy()
    return (side == 1) & (last == -1)


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
def test_cross_through_ties_is_the_documented_difference(mode: str) -> None:
    """backtesting.py's `crossover()` misses exactly the crossings whose previous bar is a tie; given the
    tie-skipping crossings instead, its fills equal ours."""
    bars = tied_walk(BARS, seed=4)
    fast, slow = SMA_TIES.up(_pandas(bars))
    a, b = fast.to_numpy(), slow.to_numpy()
    strict_up, strict_down = bt_events((fast, slow), "cross"), bt_events((slow, fast), "cross")
    skipping_up, skipping_down = _tie_skipping_crossings(a, b), _tie_skipping_crossings(b, a)
    after_tie = np.r_[False, a[:-1] == b[:-1]]
    assert (skipping_up & after_tie).sum() > 10
    np.testing.assert_array_equal(strict_up, skipping_up & ~after_tie)
    np.testing.assert_array_equal(strict_down, skipping_down & ~after_tie)

    mine = ours(bars, SMA_TIES, mode, "cross", "close", 0.001)
    assert mine != backtesting_py(bars, strict_up, strict_down, mode, "close", 0.001)
    assert_same(mine, backtesting_py(bars, skipping_up, skipping_down, mode, "close", 0.001), "backtesting.py")
