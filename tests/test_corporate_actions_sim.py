"""The simulator's splits and dividends (issue 16): bars as IB served them on the simulator's as-of day, through
the real ib_async client; and the pure detection of an adjustment from stored vs re-fetched bars."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from ib_async import IB, Stock

from ibkr_flows.ingest.adjustments import (
    AdjustmentEvent,
    ScalesAgree,
    UnexplainedDifference,
    compare_overlap,
    split_like_jumps,
)
from ibkr_flows.sim.bars import SyntheticBars
from ibkr_flows.sim.control import send_command
from ibkr_flows.sim.corporate_actions import DIVIDENDS
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.corporate_actions_table import ActionKind
from tests.helpers_cli import cli_env, wait_listening

SOURCE = SyntheticBars()
AUGUST_2020 = (datetime(2020, 8, 24, tzinfo=UTC), datetime(2020, 9, 5, tzinfo=UTC))
BEFORE_AAPL_SPLIT = date(2020, 8, 28)  # the Friday before AAPL's 4:1 (effective Monday 2020-08-31)


def daily(symbol: str, what_to_show: str, window: tuple[datetime, datetime], as_of: date | None) -> pl.DataFrame:
    return SOURCE.bars(symbol, "1 day", what_to_show, True, *window, as_of)


def test_trades_before_a_split_are_on_the_old_scale_until_the_as_of_day_passes_it() -> None:
    old = daily("AAPL", "TRADES", AUGUST_2020, BEFORE_AAPL_SPLIT)
    new = daily("AAPL", "TRADES", AUGUST_2020, None)
    joined = old.join(new, on="ts", suffix="_new")
    before = joined.filter(pl.col("ts") < datetime(2020, 8, 31, tzinfo=UTC))
    after = joined.filter(pl.col("ts") >= datetime(2020, 8, 31, tzinfo=UTC))
    assert before.height == 5 and after.height == 5
    for column in ("open", "high", "low", "close", "wap"):  # the daily WAP is rounded to 4 decimals
        assert (before[column] / before[f"{column}_new"] - 4.0).abs().max() < 1e-6  # type: ignore[operator]
        assert (after[column] == after[f"{column}_new"]).all()
    assert (before["close"] == 4 * before["close_new"]).all()
    assert (before["volume_new"] / before["volume"] - 4.0).abs().max() < 1e-9  # type: ignore[operator]
    assert daily("AAPL", "TRADES", AUGUST_2020, date(2020, 8, 31)).equals(new)  # effective on the as-of day


def test_nvda_bars_before_both_splits_carry_both_ratios() -> None:
    june_2021 = (datetime(2021, 6, 1, tzinfo=UTC), datetime(2021, 6, 8, tzinfo=UTC))
    as_of_2021 = daily("NVDA", "TRADES", june_2021, date(2021, 6, 30))
    between = daily("NVDA", "TRADES", june_2021, date(2023, 1, 3))
    today = daily("NVDA", "TRADES", june_2021, None)
    assert ((as_of_2021["close"] / today["close"]) - 40.0).abs().max() < 1e-9  # type: ignore[operator]
    assert ((between["close"] / today["close"]) - 10.0).abs().max() < 1e-9  # type: ignore[operator]


def test_adjusted_last_carries_the_dividends_up_to_the_as_of_day() -> None:
    """MSFT's May 2024 dividend: ADJUSTED_LAST before its ex-date is TRADES times (1 - dividend / the close
    before the ex-date); from the ex-date on, ADJUSTED_LAST equals TRADES. Before the ex-date passed, no factor."""
    dividend = next(d for d in DIVIDENDS if d.symbol == "MSFT" and d.effective.year == 2024 and d.effective.month == 5)
    window = (datetime(2024, 5, 13, tzinfo=UTC), datetime(2024, 5, 25, tzinfo=UTC))
    trades = daily("MSFT", "TRADES", window, None)
    ex = datetime.combine(dividend.effective, datetime.min.time(), UTC)
    previous_close = trades.filter(pl.col("ts") < ex)["close"][-1]
    expected_factor = 1 - dividend.value / previous_close
    adjusted = daily("MSFT", "ADJUSTED_LAST", window, date(2024, 6, 28))
    ratio = adjusted["close"] / trades["close"]
    on_old = (trades["ts"] < ex).to_list()
    assert any(on_old) and not all(on_old)
    for r, old in zip(ratio.to_list(), on_old, strict=True):
        assert r == pytest.approx(expected_factor if old else 1.0, abs=2e-6)
    assert daily("MSFT", "ADJUSTED_LAST", window, dividend.effective - timedelta(days=3))["close"].equals(
        trades["close"])


def test_the_as_of_clock_through_ib_async(sim: EmbeddedSimulator) -> None:
    """Set before the split: the simulator serves nothing after the as-of day and the old scale; ADJUSTED_LAST
    (empty end only) ends on the as-of day too. Moved past it: the new scale."""
    ib = IB()
    ib.connect(sim.host, sim.port, clientId=61, timeout=5, readonly=True)
    try:
        aapl = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
        sim.set_as_of(BEFORE_AAPL_SPLIT)
        assert sim.snapshot()["as_of"] == "2020-08-28"
        old = ib.reqHistoricalData(aapl, "20200915-00:00:00", "1 M", "1 day", "TRADES", True)
        adjusted = ib.reqHistoricalData(aapl, "", "1 M", "1 day", "ADJUSTED_LAST", True)
        assert old[-1].date == adjusted[-1].date == BEFORE_AAPL_SPLIT
        sim.set_as_of(date(2020, 9, 15))
        new = ib.reqHistoricalData(aapl, "20200915-00:00:00", "1 M", "1 day", "TRADES", True)
        closes = {b.date: b.close for b in new}
        assert new[-1].date == date(2020, 9, 14)
        assert all(b.close == pytest.approx(4 * closes[b.date]) for b in old)
    finally:
        ib.disconnect()


# -- detection -------------------------------------------------------------------------------------------------

def bars(days: list[date], closes: list[float]) -> pl.DataFrame:
    """Daily bars (open = high = low = close, enough for ratios) stamped 00:00 UTC as stored."""
    return pl.DataFrame({"ts": [datetime.combine(d, datetime.min.time(), UTC) for d in days],
                         "open": closes, "high": closes, "low": closes, "close": closes})


DAYS = [date(2020, 8, d) for d in (24, 25, 26, 27, 28, 31)] + [date(2020, 9, 1)]


def test_a_constant_split_ratio_then_agreement_is_a_split_effective_at_the_first_agreeing_bar() -> None:
    fresh = [125.0, 126.5, 124.25, 127.0, 128.5, 129.04, 131.7]
    stored = [4 * c for c in fresh[:5]] + fresh[5:]  # a table that mixed scales: old until 08-28
    verdict = compare_overlap(bars(DAYS, stored), bars(DAYS, fresh), bar_size="1 day", dividend_adjusted=False)
    assert isinstance(verdict, AdjustmentEvent)
    assert (verdict.kind, verdict.factor, verdict.effective_date) == (ActionKind.SPLIT, 4.0, date(2020, 8, 31))
    assert verdict.last_old_bar == datetime(2020, 8, 28, tzinfo=UTC) and verdict.bars_compared == 7


def test_a_reverse_split_snaps_through_rounding() -> None:
    fresh = [20.0, 21.0, 22.0]
    stored = [round(c / 10, 2) + 0.001 for c in fresh]
    verdict = compare_overlap(bars(DAYS[:3], stored), bars(DAYS[:4], [*fresh, 23.0]), bar_size="1 day",
                              dividend_adjusted=False)
    assert isinstance(verdict, AdjustmentEvent) and verdict.factor == pytest.approx(0.1)
    assert verdict.effective_date == DAYS[3]  # the first fresh bar after the stored ones


def test_a_small_constant_shift_is_a_dividend_only_in_adjusted_last() -> None:
    fresh = [99.5, 100.2, 101.0, 100.0]
    factor = 1 / (1 - 0.75 / 100.0)
    stored = [c * factor for c in fresh[:2]] + fresh[2:]
    verdict = compare_overlap(bars(DAYS[:4], stored), bars(DAYS[:4], fresh), bar_size="1 day",
                              dividend_adjusted=True)
    assert isinstance(verdict, AdjustmentEvent) and verdict.kind is ActionKind.DIVIDEND
    assert verdict.factor == pytest.approx(factor) and verdict.effective_date == DAYS[2]
    in_trades = compare_overlap(bars(DAYS[:4], stored), bars(DAYS[:4], fresh), bar_size="1 day",
                                dividend_adjusted=False)
    assert isinstance(in_trades, UnexplainedDifference)


@pytest.mark.parametrize(("stored", "reason"), [
    ([400.0, 200.0, 100.0, 100.0], "not one constant"),  # two levels
    ([100.4, 100.3, 99.9, 100.0], "not one constant"),  # noise
    ([300.0, 100.0, 300.0, 100.0], "between bars that differ"),  # old scale after new
    ([170.0, 170.0, 100.0, 100.0], "neither a common split ratio"),  # 1.7: no split, too big for a dividend
])
def test_anything_but_one_constant_is_unexplained(stored: list[float], reason: str) -> None:
    verdict = compare_overlap(bars(DAYS[:4], stored), bars(DAYS[:4], [100.0] * 4), bar_size="1 day",
                              dividend_adjusted=True)
    assert isinstance(verdict, UnexplainedDifference) and reason in verdict.reason


def test_identical_bars_agree() -> None:
    closes = [100.0, 101.0, 102.0]
    verdict = compare_overlap(bars(DAYS[:3], closes), bars(DAYS[:3], [c + 0.01 for c in closes]),
                              bar_size="1 day", dividend_adjusted=True)
    assert verdict == ScalesAgree(3)


def test_an_overnight_jump_of_a_split_ratio_is_a_finding_and_intraday_moves_are_not() -> None:
    findings = split_like_jumps(bars(DAYS[:4], [500.0, 505.0, 126.0, 127.0]), bar_size="1 day")
    assert [(f.ts.date(), str(f.ratio)) for f in findings] == [(DAYS[2], "4")]
    assert "a 4 jump" in findings[0].describe()
    minutes = pl.DataFrame({"ts": [datetime(2020, 8, 28, 14, 30, tzinfo=UTC) + timedelta(minutes=i)
                                   for i in range(2)], "open": [500.0, 250.0], "close": [250.0, 251.0]})
    assert split_like_jumps(minutes, bar_size="1 min") == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sim_cli(tmp_path: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", "sim", *args], env=cli_env(tmp_path),
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_the_as_of_day_is_set_through_the_control_port(tmp_path: Path) -> None:
    """`ibkr sim start` in its own process: `ibkr sim as-of DAY` moves its day, `status` reports it, `--clear`
    returns to the clock's; a malformed day is refused before anything is sent."""
    port, control = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ibkr_flows.cli.app", "sim", "start", "--port", str(port),
                             "--control-port", str(control)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(tmp_path))
    try:
        wait_listening(control, proc)
        assert json.loads(_sim_cli(tmp_path, "as-of", "2020-08-28", "--control-port", str(control))) == {
            "as_of": "2020-08-28"}
        with pytest.raises(subprocess.CalledProcessError) as refused:
            _sim_cli(tmp_path, "as-of", "28/08/2020", "--control-port", str(control))
        assert "DAY must be YYYY-MM-DD" in refused.value.stderr
        assert send_command("127.0.0.1", control, {"cmd": "status"})["as_of"] == "2020-08-28"
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=62, timeout=10, readonly=True)
        try:
            aapl = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
            assert ib.reqHistoricalData(aapl, "", "5 D", "1 day", "TRADES", True)[-1].date == BEFORE_AAPL_SPLIT
        finally:
            ib.disconnect()
        _sim_cli(tmp_path, "as-of", "--clear", "--control-port", str(control))
        assert send_command("127.0.0.1", control, {"cmd": "status"})["as_of"] is None
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
