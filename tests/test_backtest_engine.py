"""The backtest engine: hand-worked fills and costs, no look-ahead, strategies, and backtesting.py 0.6.6 parity."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

from ibkr_flows.backtest.costs import IBKRFixed, IBKRTiered, NoCommission, PercentCommission, slipped_price
from ibkr_flows.backtest.engine import BacktestConfig, run_backtest
from ibkr_flows.backtest.errors import BacktestError, NoBarsError, StrategyParameterError, UnknownStrategyError
from ibkr_flows.backtest.metrics import annualization
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, affordable_shares
from ibkr_flows.backtest.strategies import STRATEGIES, Strategy, register, strategy_params
from ibkr_flows.ib.historical import UnknownBarSizeError

START = datetime(2024, 1, 2, tzinfo=UTC)
DAY = timedelta(days=1)


def make_bars(close: list[float], open_: list[float], step: timedelta = DAY, **extra: list[float]) -> pl.DataFrame:
    high = [max(o, c) + 0.25 for o, c in zip(open_, close, strict=True)]
    low = [min(o, c) - 0.25 for o, c in zip(open_, close, strict=True)]
    return pl.DataFrame({
        "ts": [START + i * step for i in range(len(close))], "open": open_, "high": high, "low": low,
        "close": close, "volume": [1000.0] * len(close), **extra,
    }, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def random_bars(n: int, seed: int, step: timedelta = DAY) -> pl.DataFrame:
    """Geometric random walk with gaps between close and next open, so open and close fills differ."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.003, n))
    return pl.DataFrame({
        "ts": pl.datetime_range(START, START + (n - 1) * step, step, eager=True, time_zone="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
        "close": close, "volume": np.full(n, 1e4),
    })


@dataclass(frozen=True)
class ColumnSignal(Strategy):
    """Test strategy: the target is whatever the bars' `signal` column says."""

    name: ClassVar[str] = "test_column_signal"

    @property
    def warmup_bars(self) -> int:
        return 0

    def target(self) -> pl.Expr:
        return pl.col("signal")


@pytest.fixture
def column_signal() -> Iterator[str]:
    register(ColumnSignal)
    yield ColumnSignal.name
    del STRATEGIES[ColumnSignal.name]


# A 10-bar series worked by hand for sma_crossover(2, 3), cash 1000, IBKR Fixed:
#   close      10    10    10    11    12    12    11    10    10    10
#   SMA2        -    10    10  10.5  11.5    12  11.5  10.5    10    10
#   SMA3        -     -    10 10.33    11 11.67 11.67    11 10.33    10
#   signal      0     0     0     1     1     1    -1    -1    -1    -1   (tie on bar 2: no side yet; bar 9: keep -1)
#   open       10    10    10  10.5  11.5  12.5  11.5  10.5    10   9.8
# The bar-3 signal fills at bar 4's open 11.5: floor(1000 / 11.5) = 86 shares (87 would cost 1000.50), value 989,
# commission max(86 * 0.005, 1.00) = 1.00 -> cash 10. The bar-6 signal exits at bar 7's open 10.5: +903 - 1.00.
HAND_CLOSE = [10.0, 10, 10, 11, 12, 12, 11, 10, 10, 10]
HAND_OPEN = [10.0, 10, 10, 10.5, 11.5, 12.5, 11.5, 10.5, 10, 9.8]


def hand_config(mode: str) -> BacktestConfig:
    return BacktestConfig("sma_crossover", {"fast_period": 2, "slow_period": 3}, cash=1000, commission=IBKRFixed(),
                          mode=mode)


def test_hand_worked_long_only() -> None:
    bars = make_bars(HAND_CLOSE, HAND_OPEN)
    assert strategy_params("sma_crossover", {"fast_period": 2, "slow_period": 3}).signals(bars).to_list() == [
        0, 0, 0, 1, 1, 1, -1, -1, -1, -1]

    result = run_backtest(bars, "1 day", hand_config("long_only"))

    trade = result.trades.row(0, named=True)
    assert result.trades.height == 1
    assert (trade["entry_time"], trade["exit_time"], trade["side"]) == (START + 4 * DAY, START + 7 * DAY, "long")
    assert (trade["size"], trade["entry_price"], trade["exit_price"]) == (86, 11.5, 10.5)
    assert trade["commission"] == 2.0
    assert trade["pnl"] == pytest.approx(86 * (10.5 - 11.5) - 2.0, rel=1e-12)
    assert trade["return_pct"] == pytest.approx(-88 / 989 * 100, rel=1e-12)
    assert trade["duration"] == 3 * DAY
    # cash 10 + 86 shares marked at each close; 912 = 10 + 903 - 1 after the exit.
    assert result.equity["equity"].to_list() == pytest.approx(
        [1000, 1000, 1000, 1000, 1042, 1042, 956, 912, 912, 912], rel=1e-12)
    assert result.equity["position"].to_list() == [0, 0, 0, 0, 86, 86, 86, 0, 0, 0]
    m = result.metrics
    assert m.final_equity == pytest.approx(912, rel=1e-12)
    assert m.total_return_pct == pytest.approx(-8.8, rel=1e-12)
    assert m.max_drawdown_pct == pytest.approx((912 / 1042 - 1) * 100, rel=1e-12)
    assert m.max_drawdown_duration == 4 * DAY  # from the bar-5 peak to the last bar, never regained
    assert (m.trades, m.win_rate_pct, m.exposure_pct, m.commissions) == (1, 0.0, 30.0, 2.0)
    assert m.profit_factor == 0.0
    assert m.expectancy == pytest.approx(-88, rel=1e-12)
    assert m.buy_and_hold_return_pct == 0.0
    assert (m.bars, m.start, m.end, m.periods_per_year) == (10, START, START + 9 * DAY, 252)


def test_hand_worked_long_short_reverses_and_exits_at_last_open() -> None:
    """Same bars: the bar-6 signal closes the long at 10.5 and opens a short sized from the 912 cash left:
    floor(912 / 10.5) = 86 (cash 912 + 903 - 1 = 1814). The bar-8 signal is overridden by the end of the data:
    the short is bought back at the LAST bar's open 9.8 (86 * 9.8 + 1 = 843.80), so equity ends at 970.20."""
    result = run_backtest(make_bars(HAND_CLOSE, HAND_OPEN), "1 day", hand_config("long_short"))

    assert result.trades.select("side", "size", "entry_price", "exit_price", "commission").rows() == [
        ("long", 86, 11.5, 10.5, 2.0), ("short", 86, 10.5, 9.8, 2.0)]
    assert result.trades["exit_time"].to_list() == [START + 7 * DAY, START + 9 * DAY]
    assert result.trades["pnl"].to_list() == pytest.approx([-88, 86 * (10.5 - 9.8) - 2], rel=1e-12)
    assert result.trades["return_pct"][1] == pytest.approx(58.2 / 903 * 100, rel=1e-12)
    assert result.equity["equity"].to_list() == pytest.approx(
        [1000, 1000, 1000, 1000, 1042, 1042, 956, 954, 954, 970.2], rel=1e-12)
    assert result.equity["position"].to_list() == [0, 0, 0, 0, 86, 86, 86, -86, -86, 0]
    assert result.metrics.final_equity == pytest.approx(970.2, rel=1e-12)
    assert result.metrics.commissions == 4.0
    assert result.metrics.win_rate_pct == 50.0
    assert result.metrics.profit_factor == pytest.approx(58.2 / 88, rel=1e-12)


def test_signal_fills_at_next_open(column_signal: str) -> None:
    bars = make_bars([10.0] * 8, [10.0, 11, 12, 13, 14, 15, 16, 17], signal=[0, 0, 0, 1, 0, 0, 0, 0])
    result = run_backtest(bars, "1 day", BacktestConfig(column_signal, commission=NoCommission()))
    assert result.trades.select("entry_time", "entry_price", "exit_time", "exit_price").rows() == [
        (START + 4 * DAY, 14.0, START + 5 * DAY, 15.0)]


def test_last_bar_signal_is_not_traded_and_last_close_changes_nothing(column_signal: str) -> None:
    bars = make_bars([10.0] * 8, [10.0] * 8, signal=[0, 0, 0, 0, 0, 0, 0, 1])
    assert run_backtest(bars, "1 day", BacktestConfig(column_signal)).trades.height == 0

    bars = random_bars(400, seed=3)
    config = BacktestConfig("sma_crossover", mode="long_short")
    base = run_backtest(bars, "1 day", config)
    spiked = bars.with_columns(
        close=pl.when(pl.int_range(pl.len()) == pl.len() - 1).then(pl.col("close") * 3).otherwise(pl.col("close")),
        high=pl.when(pl.int_range(pl.len()) == pl.len() - 1).then(pl.col("high") * 3).otherwise(pl.col("high")))
    moved = run_backtest(spiked, "1 day", config)
    assert moved.trades.equals(base.trades)
    assert moved.metrics.final_equity == base.metrics.final_equity


@pytest.mark.parametrize("name", ["sma_crossover", "ema_crossover", "rsi_reversion", "donchian_breakout"])
def test_no_future_bar_changes_past_trades(name: str) -> None:
    """Truncating the data must not change any trade that closed before the cut (the last two bars of the cut
    run belong to its end-of-data exit)."""
    bars = random_bars(500, seed=11)
    config = BacktestConfig(name, mode="long_short")
    full = run_backtest(bars, "1 day", config).trades
    cut = 300
    part = run_backtest(bars.head(cut), "1 day", config).trades
    settled = part.filter(pl.col("exit_time") < bars["ts"][cut - 1])
    assert settled.height > 0
    assert settled.equals(full.head(settled.height))


def test_indicators_match_reference_implementations() -> None:
    from ibkr_flows.backtest.strategies.ema_crossover import ema
    from ibkr_flows.backtest.strategies.rsi_reversion import wilder_rsi
    from ibkr_flows.backtest.strategies.sma_crossover import sma

    bars = random_bars(300, seed=9)
    close = bars["close"].to_numpy()
    ours = bars.select(sma=sma("close", 7), ema=ema("close", 7), rsi=wilder_rsi("close", 14))
    reference = bars.to_pandas()["close"]
    np.testing.assert_allclose(ours["sma"].to_numpy()[6:], reference.rolling(7).mean().to_numpy()[6:], rtol=1e-12)
    np.testing.assert_allclose(ours["ema"].to_numpy()[6:], reference.ewm(span=7, adjust=False).mean()[6:], rtol=1e-12)
    assert [ours[column].null_count() for column in ("sma", "ema", "rsi")] == [6, 6, 14]
    # Wilder: the first average is the plain mean of 14 changes, then avg = (13 * avg + change) / 14.
    change = np.diff(close)
    gain, loss = change[:14].clip(min=0).mean(), (-change[:14]).clip(min=0).mean()
    rsi = [100 * gain / (gain + loss)]
    for step in change[14:]:
        gain, loss = (13 * gain + max(step, 0)) / 14, (13 * loss + max(-step, 0)) / 14
        rsi.append(100 * gain / (gain + loss))
    np.testing.assert_allclose(ours["rsi"].to_numpy()[14:], rsi, rtol=1e-9)


def test_commission_models() -> None:
    fixed = IBKRFixed()
    assert fixed.commission(100, 50.0) == 1.00  # 0.50 per share total is below the 1.00 minimum
    assert fixed.commission(1000, 50.0) == pytest.approx(5.00)
    assert fixed.commission(100, 0.50) == pytest.approx(0.50)  # 1% of a 50 USD trade caps the 1.00 minimum
    assert fixed.commission(0, 50.0) == 0.0

    tiered = IBKRTiered()
    assert tiered.per_share == 0.0035
    assert tiered.commission(1000, 50.0) == pytest.approx(3.50)
    assert tiered.commission(50, 50.0) == 0.35  # minimum
    assert tiered.commission(100, 0.20) == pytest.approx(0.20)  # 1% cap
    assert [IBKRTiered(monthly_volume=v).per_share for v in (300_000, 300_001, 3_000_001, 20_000_001, 100_000_001)] \
        == [0.0035, 0.002, 0.0015, 0.001, 0.0005]
    assert IBKRTiered(monthly_volume=1_000_000).commission(1000, 50.0) == pytest.approx(2.00)

    assert PercentCommission(0.001).commission(100, 50.0) == pytest.approx(5.0)
    with pytest.raises(BacktestError, match="fraction"):
        PercentCommission(1.5)
    assert NoCommission().commission(100, 50.0) == 0.0


def test_slippage_works_against_the_trader(column_signal: str) -> None:
    assert slipped_price(100.0, 1, 50) == pytest.approx(100.5)
    assert slipped_price(100.0, -1, 50) == pytest.approx(99.5)
    bars = make_bars([100.0] * 8, [100.0, 100, 100, 110, 110, 90, 90, 90], signal=[0, 1, -1, -1, 0, 0, 0, 0])
    config = BacktestConfig(column_signal, commission=NoCommission(), slippage_bps=50, sizing=FixedShares(10),
                            mode="long_short")
    trades = run_backtest(bars, "1 day", config).trades
    # long: buy 100 * 1.005, sell 110 * 0.995; short: sell 110 * 0.995, buy back 90 * 1.005.
    assert trades["side"].to_list() == ["long", "short"]
    assert trades["entry_price"].to_list() == pytest.approx([100.5, 109.45])
    assert trades["exit_price"].to_list() == pytest.approx([109.45, 90.45])
    assert trades["pnl"].to_list() == pytest.approx([89.5, 190.0])


def test_sizing_rules() -> None:
    assert affordable_shares(10_000, 99.0, PercentCommission(0.01)) == math.floor(10_000 / (99 * 1.01))
    assert AllIn().shares(1000, 10.0, IBKRFixed()) == 99  # 100 shares + 1.00 commission is 1 USD too much
    assert AllIn().shares(1000, 10.0, NoCommission()) == 100
    assert FixedShares(10).shares(1000, 10.0, IBKRFixed()) == 10
    assert FixedShares(1000).shares(1000, 10.0, IBKRFixed()) == 99  # capped by cash: no leverage
    assert FixedFraction(0.5).shares(1000, 10.0, IBKRFixed()) == 49  # 50 shares + 1.00 > 500
    assert AllIn().shares(5, 10.0, NoCommission()) == 0
    for bad in (lambda: FixedShares(0), lambda: FixedShares(2.5), lambda: FixedFraction(0), lambda: FixedFraction(2)):
        with pytest.raises(BacktestError):
            bad()


def test_affordable_shares_is_the_largest_that_fits() -> None:
    rng = np.random.default_rng(5)
    models = [IBKRFixed(), IBKRTiered(), PercentCommission(0.002), NoCommission()]
    for _ in range(300):
        budget, price = float(rng.uniform(0, 3000)), float(rng.uniform(0.05, 200))
        for model in models:
            n = affordable_shares(budget, price, model)
            assert n == 0 or n * price + model.commission(n, price) <= budget
            assert (n + 1) * price + model.commission(n + 1, price) > budget


def test_sizing_modes_in_the_engine(column_signal: str) -> None:
    bars = make_bars([10.0] * 8, [10.0] * 8, signal=[1, 0, 0, 0, 0, 0, 0, 0])
    sizes = {
        sizing: run_backtest(bars, "1 day", BacktestConfig(column_signal, cash=1000, sizing=sizing)).trades["size"][0]
        for sizing in (AllIn(), FixedShares(10), FixedFraction(0.5))
    }
    assert list(sizes.values()) == [99, 10, 49]
    skipped = run_backtest(bars, "1 day", BacktestConfig(column_signal, cash=5))
    assert skipped.trades.height == 0
    assert skipped.metrics.final_equity == 5


def test_parameter_errors_name_the_parameters() -> None:
    with pytest.raises(StrategyParameterError, match=r"fast_period \(10\) must be smaller than slow_period \(5\)"):
        strategy_params("sma_crossover", {"fast_period": 10, "slow_period": 5})
    with pytest.raises(StrategyParameterError, match=r"fast_period \(10\) must be smaller than slow_period \(10\)"):
        BacktestConfig("ema_crossover", {"fast_period": 10, "slow_period": 10})
    with pytest.raises(StrategyParameterError, match="fast_period must be positive"):
        strategy_params("sma_crossover", {"fast_period": 0})
    with pytest.raises(StrategyParameterError, match=r"lookback must be an integer, got 2\.5"):
        strategy_params("donchian_breakout", {"lookback": 2.5})
    with pytest.raises(StrategyParameterError, match=r"lower \(80.0\) must be smaller than upper \(70.0\)"):
        strategy_params("rsi_reversion", {"lower": 80})
    with pytest.raises(StrategyParameterError, match=r"upper must be within 0\.\.100, got 120"):
        strategy_params("rsi_reversion", {"upper": 120})
    with pytest.raises(StrategyParameterError, match=r"unknown parameter.*fast; known parameters: fast_period, slow_"):
        strategy_params("sma_crossover", {"fast": 3})
    with pytest.raises(UnknownStrategyError) as unknown:
        BacktestConfig("sma_cross")
    assert str(unknown.value) == ("unknown strategy 'sma_cross'; known strategies: buy_and_hold, donchian_breakout, "
                                  "ema_crossover, rsi_reversion, sma_crossover")
    assert isinstance(unknown.value, BacktestError)


def test_config_and_data_errors() -> None:
    with pytest.raises(BacktestError, match="mode must be one of long_only, long_short"):
        BacktestConfig("sma_crossover", mode="short_only")  # type: ignore[arg-type]
    with pytest.raises(BacktestError, match="cash must be positive"):
        BacktestConfig("sma_crossover", cash=0)
    bars = random_bars(50, seed=1)
    with pytest.raises(NoBarsError, match="no 1 day bars to backtest"):
        run_backtest(bars.head(0), "1 day", BacktestConfig("sma_crossover"))
    error = NoBarsError("SPY", START, START + DAY, "1 min")
    assert str(error) == ("no 1 min bars for SPY from 2024-01-02T00:00:00+00:00 until 2024-01-03T00:00:00+00:00 "
                          "to backtest")
    assert (error.symbol, error.start, error.end) == ("SPY", START, START + DAY)
    with pytest.raises(BacktestError, match="needs 9 warm-up bars"):
        run_backtest(bars.head(11), "1 day", BacktestConfig("sma_crossover"))
    with pytest.raises(BacktestError, match="sorted by ts"):
        run_backtest(bars.reverse(), "1 day", BacktestConfig("sma_crossover"))
    with pytest.raises(BacktestError, match="lack column"):
        run_backtest(bars.drop("open"), "1 day", BacktestConfig("sma_crossover"))
    with pytest.raises(UnknownBarSizeError):
        run_backtest(bars, "1 minute", BacktestConfig("sma_crossover"))


@pytest.mark.parametrize(("column", "value", "message"), [
    ("low", None, "null, NaN or non-positive prices"),
    ("high", float("nan"), "null, NaN or non-positive prices"),
    ("open", 0.0, "null, NaN or non-positive prices"),
    ("close", -1.0, "null, NaN or non-positive prices"),
    ("ts", None, "no missing or repeated timestamps"),
    ("ts", START + 4 * DAY, "no missing or repeated timestamps"),  # bar 5's time again
])
def test_bad_bar_values_are_refused(column: str, value: object, message: str) -> None:
    bars = random_bars(50, seed=1)
    bad = bars.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(value, dtype=bars.schema[column]))
                            .otherwise(pl.col(column)).alias(column))
    assert bad.height == bars.height and not bad.equals(bars)
    with pytest.raises(BacktestError, match=message):
        run_backtest(bad, "1 day", BacktestConfig("sma_crossover"))


def test_annualization_basis() -> None:
    assert annualization("1 min").periods_per_year == 252 * 390
    assert annualization("1 min").description.startswith("1 min bars, 390 bars per RTH session, 252 sessions per year")
    assert annualization("5 mins").periods_per_year == 252 * 78
    assert annualization("1 hour").periods_per_year == 252 * 7  # 6.5 h: the last hourly bar is partial
    assert annualization("1 day").periods_per_year == 252
    assert annualization("1 min", bars_per_session=960).description.startswith("1 min bars, 960 bars per session")
    with pytest.raises(BacktestError, match="intraday"):
        annualization("1 day", bars_per_session=1)


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_runs_and_accounts(name: str, mode: str) -> None:
    bars = random_bars(400, seed=21, step=timedelta(minutes=5))
    result = run_backtest(bars, "5 mins", BacktestConfig(name, mode=mode, commission=IBKRTiered(), slippage_bps=2))
    m = result.metrics
    assert m.trades == result.trades.height > 0
    assert result.equity.height == m.bars == 400
    assert (result.trades["exit_time"] > result.trades["entry_time"]).all()
    assert (result.trades["entry_time"].shift(-1) >= result.trades["exit_time"]).all()
    # Everything is closed by the end, so the final equity is the cash plus the sum of trade PnL.
    assert m.final_equity == pytest.approx(100_000 + result.trades["pnl"].sum(), rel=1e-12)
    assert m.commissions == pytest.approx(result.trades["commission"].sum())
    if mode == "long_only":
        assert set(result.trades["side"]) == {"long"}
    returns = np.diff(result.equity["equity"].to_numpy()) / result.equity["equity"].to_numpy()[:-1]
    assert m.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(252 * 78))
    assert m.max_drawdown_pct == pytest.approx(result.equity["drawdown_pct"].min())
    assert run_backtest(bars, "5 mins", BacktestConfig(name, mode=mode, commission=IBKRTiered(), slippage_bps=2)) \
        .metrics == m  # deterministic


def test_register_refuses_a_taken_name() -> None:
    @dataclass(frozen=True)
    class Impostor(ColumnSignal):
        name: ClassVar[str] = "sma_crossover"

    with pytest.raises(BacktestError, match="already registered"):
        register(Impostor)


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
@pytest.mark.parametrize("rate", [0.0, 0.001])
def test_matches_backtesting_py(mode: str, rate: float) -> None:
    """sma_crossover(5, 10) against backtesting.py 0.6.6 under the same conventions: next-open fills, exclusive
    orders, open trades finalized (backtesting.py closes them at the last bar's open), and no order from the last
    two bars (ours: the last bar's signal is never traded, the one before is overridden by the end-of-data exit).
    The backtesting.py strategy gets independently computed pandas SMAs and starts trading on the bar where both
    are defined, as ours does (its own indicator warm-up would start one bar later)."""
    from backtesting import Backtest
    from backtesting import Strategy as BtStrategy

    bars = random_bars(2000, seed=7)
    n = bars.height
    data = bars.to_pandas().set_index("ts").rename(columns=str.capitalize)
    fast = data["Close"].rolling(5).mean().to_numpy()
    slow = data["Close"].rolling(10).mean().to_numpy()

    class SmaMirror(BtStrategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            if i >= n - 2:
                return
            if fast[i] > slow[i] and not self.position.is_long:
                self.buy()
            elif fast[i] < slow[i] and mode == "long_short" and not self.position.is_short:
                self.sell()
            elif fast[i] < slow[i] and mode == "long_only" and self.position.is_long:
                self.position.close()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DatetimeIndex.dayofweek is deprecated", module="backtesting")
        stats = Backtest(data, SmaMirror, cash=100_000, commission=rate, trade_on_close=False, exclusive_orders=True,
                         finalize_trades=True).run()
    theirs = stats["_trades"]
    ours = run_backtest(bars, "1 day", BacktestConfig("sma_crossover", {"fast_period": 5, "slow_period": 10},
                                                      cash=100_000, commission=PercentCommission(rate), mode=mode))

    assert ours.trades.height == len(theirs) > 50
    assert ours.trades["size"].to_list() == theirs["Size"].abs().tolist()
    assert ours.trades["side"].to_list() == ["long" if size > 0 else "short" for size in theirs["Size"]]
    np.testing.assert_array_equal(ours.trades["entry_price"].to_numpy(), theirs["EntryPrice"].to_numpy())
    np.testing.assert_array_equal(ours.trades["exit_price"].to_numpy(), theirs["ExitPrice"].to_numpy())
    assert ours.trades["entry_time"].to_list() == theirs["EntryTime"].dt.to_pydatetime().tolist()
    assert ours.trades["exit_time"].to_list() == theirs["ExitTime"].dt.to_pydatetime().tolist()
    np.testing.assert_allclose(ours.trades["pnl"].to_numpy(), theirs["PnL"].to_numpy(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(ours.equity["equity"].to_numpy(), stats["_equity_curve"]["Equity"].to_numpy(),
                               rtol=1e-9)
    assert ours.metrics.final_equity == pytest.approx(stats["Equity Final [$]"], rel=1e-6)
    assert ours.metrics.total_return_pct == pytest.approx(stats["Return [%]"], rel=1e-6)
    assert ours.metrics.max_drawdown_pct == pytest.approx(stats["Max. Drawdown [%]"], rel=1e-6)
    assert ours.metrics.max_drawdown_duration == stats["Max. Drawdown Duration"].to_pytimedelta()
    assert ours.metrics.win_rate_pct == pytest.approx(stats["Win Rate [%]"])
