"""Realism options worked by hand: stops and their fill rules, flatten at the session close, short-borrow fees;
the grid's refusal of them, and their place in the CLI and the stored request.

Every case: 10 shares (`FixedShares`), no commission, cash 10,000 (enough for 10 shares after any loss), a test
strategy whose target is the `signal` column (held one bar later: a signal on bar i's close acts at bar i + 1's
open)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.backtest.costs import NoCommission
from ibkr_flows.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.sizing import FixedShares
from ibkr_flows.cli.app import app
from storage.location import TableLocation
from storage.results_table import read_backtest_results
from tests.test_backtest_engine import (
    ColumnSignal,
    column_signal,  # noqa: F401 - the fixture registering ColumnSignal
)
from tests.test_cli_bar_size_default import stored

SIGNAL = ColumnSignal.name
START = datetime(2024, 1, 3, tzinfo=UTC)  # a Wednesday; daily bars are stored at 00:00 UTC
Bar = tuple[float, float, float, float]


def bars(rows: list[Bar], signal: list[int], times: list[datetime] | None = None) -> pl.DataFrame:
    times = times or [START + timedelta(days=i) for i in range(len(rows))]
    opens, highs, lows, closes = zip(*rows, strict=True)
    return pl.DataFrame({"ts": times, "open": opens, "high": highs, "low": lows, "close": closes,
                         "volume": [1000.0] * len(rows), "signal": signal},
                        schema_overrides={"ts": pl.Datetime("us", "UTC"), "signal": pl.Int8})


def run(frame: pl.DataFrame, strategy: str, exits: ExitRules, mode: str = "long_only", bar_size: str = "1 day"
        ) -> BacktestResult:
    return run_backtest(frame, bar_size, BacktestConfig(strategy, cash=10_000, commission=NoCommission(),
                                                        sizing=FixedShares(10), mode=mode, exits=exits))


def assert_trades(result: BacktestResult, expected: list[tuple[int, int, float, float, float]]) -> None:
    """(entry bar, exit bar, entry price, exit price, pnl) per trade, bars as day offsets from START; prices to
    floating-point precision (a 10% take-profit on 100 is 110.00000000000001)."""
    got = [((entry - START).days, (exit_ - START).days, entry_price, exit_price, pnl)
           for entry, exit_, entry_price, exit_price, pnl in result.trades.select(
               "entry_time", "exit_time", "entry_price", "exit_price", "pnl").iter_rows()]
    assert len(got) == len(expected)
    for trade, want in zip(got, expected, strict=True):
        assert trade == pytest.approx(want, rel=1e-12)


@pytest.mark.usefixtures("column_signal")
def test_stop_loss_fills_at_the_stop_or_at_a_gapped_open_and_waits_for_a_new_signal() -> None:
    """Stop 5% below the entry. Trade 1: entry 100 at bar 1, bar 3's low 94 touches 95 (its open 96 does not):
    out at 95. The target stays long, but the position stays flat until the target changes (bar 6 flat, bar 7
    long again). Trade 2: entry 100 at bar 7; bar 8 opens at 90, through the stop: out at the open, 90."""
    frame = bars([(100, 101, 99, 100), (100, 102, 99, 101), (101, 101, 96, 97), (96, 97, 94, 95),
                  (95, 96, 94, 95), (95, 96, 94, 95), (95, 96, 94, 95), (100, 101, 99, 100), (90, 91, 88, 89),
                  (89, 90, 88, 89)], signal=[1, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    result = run(frame, SIGNAL, ExitRules(stop_loss_pct=5))
    assert_trades(result, [(1, 3, 100, 95, -50), (7, 8, 100, 90, -100)])
    assert result.equity["equity"].to_list() == [10_000, 10_010, 9970, 9950, 9950, 9950, 9950, 9950, 9850, 9850]
    assert result.equity["position"].to_list() == [0, 10, 10, 0, 0, 0, 0, 10, 0, 0]


@pytest.mark.usefixtures("column_signal")
def test_short_stop_loss_gapped_through() -> None:
    """A short entered at 100 has its 5% stop at 105; bar 2 opens at 107: bought back at 107."""
    frame = bars([(100, 101, 99, 100), (100, 103, 99, 101), (107, 108, 106, 107), (107, 108, 106, 107)],
                 signal=[-1, -1, -1, -1])
    result = run(frame, SIGNAL, ExitRules(stop_loss_pct=5), mode="long_short")
    assert_trades(result, [(1, 2, 100, 107, -70)])


@pytest.mark.usefixtures("column_signal")
def test_take_profit_and_the_stop_first_rule() -> None:
    """Stop 95, take-profit 110 around each entry at 100. Bar 1 touches both (low 94, high 112): the stop is
    assumed first, out at 95. Bar 4's high 111 reaches 110: out at 110. Bar 8 opens at 115, beyond 110: out at
    the open, 115."""
    frame = bars([(100, 101, 99, 100), (100, 112, 94, 105), (100, 101, 99, 100), (100, 101, 99, 100),
                  (100, 111, 99, 108), (100, 101, 99, 100), (100, 101, 99, 100), (100, 104, 99, 103),
                  (115, 116, 113, 114), (114, 115, 113, 114)], signal=[1, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    result = run(frame, SIGNAL, ExitRules(stop_loss_pct=5, take_profit_pct=10))
    assert_trades(result, [(1, 1, 100, 95, -50), (4, 4, 100, 110, 100), (7, 8, 100, 115, 150)])
    assert result.metrics.final_equity == pytest.approx(10_200, rel=1e-12)


@pytest.mark.usefixtures("column_signal")
def test_trailing_stop_follows_the_best_high_of_earlier_bars() -> None:
    """Trailing 10%: entry 100 (stop 90); after bar 1's high 105 the stop is 94.5, after bar 2's high 120 it is
    108; bar 3 (open 118, low 107) falls through it: out at 108. Bar 2's own high 120 does not move the stop it
    is tested against (its low 103 would not have hit 108 anyway, but the rule does not peek)."""
    frame = bars([(100, 101, 99, 100), (100, 105, 99, 104), (104, 120, 103, 118), (118, 119, 107, 110),
                  (110, 111, 109, 110)], signal=[1, 1, 1, 1, 1])
    result = run(frame, SIGNAL, ExitRules(trailing_stop_pct=10))
    assert_trades(result, [(1, 3, 100, 108, 80)])


@pytest.mark.usefixtures("column_signal")
def test_flatten_at_close_exits_at_each_sessions_last_bar() -> None:
    """5-minute bars, 4 in each of two New York sessions (09:30-09:45 on 2 and 3 January). Long from bar 1's open
    11; flattened at bar 3's close 13.5 (the session's last bar), taken again at the next session's first open
    14 (the target is still long), closed at the last bar's open 17 by the end of the data."""
    times = [datetime(2024, 1, day, 14, 30, tzinfo=UTC) + timedelta(minutes=5 * i) for day in (2, 3) for i in range(4)]
    opens = [10.0, 11, 12, 13, 14, 15, 16, 17]
    frame = bars([(o, o + 0.75, o - 0.25, o + 0.5) for o in opens], signal=[1] * 8, times=times)
    result = run(frame, SIGNAL, ExitRules(flatten_at_close=True), bar_size="5 mins")
    assert result.trades.select("entry_time", "exit_time", "entry_price", "exit_price", "pnl").rows() == [
        (times[1], times[3], 11.0, 13.5, 25.0), (times[4], times[7], 14.0, 17.0, 30.0)]
    assert result.equity["position"].to_list() == [0, 10, 10, 0, 10, 10, 10, 0]


@pytest.mark.usefixtures("column_signal")
def test_borrow_fee_is_charged_per_calendar_day_on_the_short_value() -> None:
    """A 10-share short of a 100 USD stock at 36% a year on a 360-day year: 1000 * 0.36 / 360 = 1 USD a day,
    charged at each session's close for the days until the next session. Bars on Wed 3 to Tue 9 January (00:00
    UTC, the evening before in New York: the gaps are the same): short from Thursday's bar, charged 1 (Thursday),
    3 (Friday, over the weekend), 1 (Monday); bought back at Tuesday's open."""
    days = [0, 1, 2, 5, 6]
    frame = bars([(100, 101, 99, 100)] * 5, signal=[-1] * 5, times=[START + timedelta(days=d) for d in days])
    result = run(frame, SIGNAL, ExitRules(borrow_fee_pct=36), mode="long_short")
    assert result.trades.select("entry_price", "exit_price", "commission").rows() == [(100, 100, 0)]
    assert result.trades["pnl"].to_list() == pytest.approx([-5], rel=1e-12)
    assert result.equity["equity"].to_list() == pytest.approx([10_000, 9999, 9996, 9995, 9995], rel=1e-12)
    assert result.metrics.commissions == 0
    long_only = run(frame.with_columns(signal=pl.lit(1, pl.Int8)), SIGNAL, ExitRules(borrow_fee_pct=36))
    assert long_only.metrics.final_equity == 10_000  # longs borrow nothing


def test_options_are_validated() -> None:
    for bad in ({"stop_loss_pct": 0}, {"stop_loss_pct": 100}, {"trailing_stop_pct": -1}, {"take_profit_pct": 0},
                {"borrow_fee_pct": -0.5}):
        with pytest.raises(BacktestError, match=next(iter(bad))):
            ExitRules(**bad)


def test_cli_options_reach_the_engine_and_the_stored_request(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stored(location, "1 day", timedelta(days=1), 150)
    args = ["backtest", "run", "--start", "2024-01-01", "--end", "2024-12-31", "--fast-period", "3",
            "--slow-period", "8", "--mode", "long_short", "--json"]
    env = {"IBKR_DATA_DIR": str(location.root)}
    plain = CliRunner().invoke(app, args, env=env)
    assert plain.exit_code == 0, plain.output
    realistic = CliRunner().invoke(app, [*args, "--stop-loss", "1", "--take-profit", "2", "--trailing-stop", "1.5",
                                         "--flatten-at-close", "--borrow-fee", "3"], env=env)
    assert realistic.exit_code == 0, realistic.output
    first, second = (json.loads(r.stdout)["results"]["AAPL"] for r in (plain, realistic))
    assert second["trades"] > first["trades"]  # daily flattening closes every position the day it opens

    rows = read_backtest_results(location).sort("created_at")
    requests = [json.loads(r) for r in rows["request"]]
    assert (requests[0]["stop_loss_pct"], requests[0]["flatten_at_close"], requests[0]["borrow_fee_pct"]) == (
        None, False, 0.0)
    assert {k: requests[1][k] for k in ("stop_loss_pct", "take_profit_pct", "trailing_stop_pct", "flatten_at_close",
                                        "borrow_fee_pct")} == {
        "stop_loss_pct": 1.0, "take_profit_pct": 2.0, "trailing_stop_pct": 1.5, "flatten_at_close": True,
        "borrow_fee_pct": 3.0}
