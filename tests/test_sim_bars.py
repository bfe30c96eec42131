"""The simulator's bar sources: calendar-true, self-consistent across sizes and windows, replayable."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ibkr_flows.ib.historical import BAR_SIZES, InvalidDuration, parse_duration
from ibkr_flows.sim.bars import (
    InvalidBarSize,
    SyntheticBars,
    request_window,
)
from ibkr_flows.sim.replay_bars import ReplayBars

SOURCE = SyntheticBars(seed=11)
FRIDAY_CLOSE = datetime(2024, 3, 8, 21, 0, tzinfo=UTC)


def bars(bar_size: str, duration: str, *, end: datetime = FRIDAY_CLOSE, use_rth: bool = True,
         what_to_show: str = "TRADES", symbol: str = "AAPL") -> pl.DataFrame:
    start, stop = request_window(end, duration, bar_size=bar_size, use_rth=use_rth)
    return SOURCE.bars(symbol, bar_size, what_to_show, use_rth, start, stop)


def ohlc_consistent(frame: pl.DataFrame) -> bool:
    return frame.select(
        ((pl.col("high") >= pl.max_horizontal("open", "close")) & (pl.col("low") <= pl.min_horizontal("open", "close"))
         ).all()).item()


def ohlc(frame: pl.DataFrame) -> pl.DataFrame:
    """Hourly bars on IB's clock grid (from minute bars of one winter session: UTC hours are New York hours); the
    first bucket, 09:30-10:00, is stamped at the open."""
    hourly = frame.group_by_dynamic("ts", every="1h").agg(
        pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
        pl.col("volume").sum(), pl.col("count").sum())
    return hourly.with_columns(pl.max_horizontal("ts", frame["ts"].min()).alias("ts"))


def test_every_ib_bar_size_is_served_and_consistent() -> None:
    for bar_size, step in BAR_SIZES.items():
        duration = "1800 S" if step < timedelta(minutes=1) else ("2 Y" if step >= timedelta(days=1) else "1 D")
        frame = bars(bar_size, duration)
        assert frame.height > 0, bar_size
        assert frame["ts"].is_sorted() and frame["ts"].n_unique() == frame.height
        assert ohlc_consistent(frame), bar_size
        assert (frame["low"] > 0).all() and (frame["volume"] >= 0).all()  # a quiet second trades nothing


def test_larger_bars_are_exact_aggregates_of_smaller_ones() -> None:
    minutes = bars("1 min", "1 D")
    hours = bars("1 hour", "1 D")
    assert minutes.height == 390 and hours.height == 7  # 09:30-16:00: a half hour, then six clock hours
    assert [t.strftime("%H:%M") for t in hours["ts"]] == ["14:30", "15:00", "16:00", "17:00", "18:00", "19:00",
                                                          "20:00"]
    expected = ohlc(minutes)
    assert hours.select(expected.columns).equals(expected)
    seconds = SOURCE.bars("AAPL", "1 secs", "TRADES", True, datetime(2024, 3, 8, 15, tzinfo=UTC),
                          datetime(2024, 3, 8, 15, 10, tzinfo=UTC))
    from_seconds = seconds.group_by_dynamic("ts", every="1m").agg(
        pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
        pl.col("volume").sum(), pl.col("count").sum())
    window = minutes.filter(pl.col("ts").is_between(datetime(2024, 3, 8, 15, tzinfo=UTC),
                                                    datetime(2024, 3, 8, 15, 10, tzinfo=UTC), closed="left"))
    assert from_seconds.equals(window.select(from_seconds.columns))


def test_a_bar_is_the_same_whatever_window_asked_for_it() -> None:
    whole = bars("5 mins", "3 D")
    late = SOURCE.bars("AAPL", "5 mins", "TRADES", True, datetime(2024, 3, 7, 18, tzinfo=UTC), FRIDAY_CLOSE)
    overlap = whole.filter(pl.col("ts") >= datetime(2024, 3, 7, 18, tzinfo=UTC))
    assert late.equals(overlap)
    assert SyntheticBars(seed=11).bars("AAPL", "5 mins", "TRADES", True, late["ts"][0], FRIDAY_CLOSE).equals(late)
    assert not SyntheticBars(seed=12).bars("AAPL", "5 mins", "TRADES", True, late["ts"][0],
                                           FRIDAY_CLOSE).equals(late)


def test_calendar_holidays_half_days_and_extended_hours() -> None:
    week = SOURCE.bars("SPY", "1 day", "TRADES", True, datetime(2024, 7, 1, tzinfo=UTC),
                       datetime(2024, 7, 8, tzinfo=UTC))
    assert [t.date() for t in week["ts"]] == [date(2024, 7, d) for d in (1, 2, 3, 5)]
    half_day = SOURCE.bars("SPY", "1 min", "TRADES", True, datetime(2024, 7, 3, tzinfo=UTC),
                           datetime(2024, 7, 4, tzinfo=UTC))
    assert half_day.height == 210 and half_day["ts"].max() == datetime(2024, 7, 3, 16, 59, tzinfo=UTC)
    saturday = datetime(2024, 3, 9, 12, tzinfo=UTC)
    extended = bars("1 hour", "1 D", end=saturday, use_rth=False)
    assert extended["ts"][0] == datetime(2024, 3, 8, 9, 0, tzinfo=UTC)  # 04:00 New York in winter
    assert extended.height == 16
    regular = bars("1 min", "1 D", end=saturday)
    eth_minutes = bars("1 min", "1 D", end=saturday, use_rth=False)
    assert eth_minutes.height == 960
    assert eth_minutes.join(regular, on="ts", how="semi").equals(regular)  # RTH bars are the ETH bars in RTH


def test_quote_bars_carry_no_volume() -> None:
    trades = bars("5 mins", "1 D")
    for what in ("MIDPOINT", "BID", "ASK", "BID_ASK"):
        quotes = bars("5 mins", "1 D", what_to_show=what)
        assert quotes["ts"].equals(trades["ts"])
        assert (quotes["volume"] == -1).all() and (quotes["count"] == -1).all()
        assert ohlc_consistent(quotes), what
    adjusted = bars("5 mins", "1 D", what_to_show="ADJUSTED_LAST")  # TRADES times the dividends since (today)
    assert adjusted.select("ts", "volume", "count").equals(trades.select("ts", "volume", "count"))
    ratio = adjusted["close"] / trades["close"]
    assert ratio.max() < 1.0 and ratio.max() - ratio.min() < 1e-5  # type: ignore[operator]
    with pytest.raises(ValueError, match="whatToShow"):
        bars("5 mins", "1 D", what_to_show="OPTION_IMPLIED_VOLATILITY")


def test_durations() -> None:
    assert parse_duration("3600 S") == (3600, "S")
    for bad in ("", "5", "5 days", "-1 D", "0 D", "1.5 D"):
        with pytest.raises(InvalidDuration):
            parse_duration(bad)
    monday_before_open = datetime(2024, 3, 11, 13, tzinfo=UTC)  # 09:00 New York (DST began on Sunday)
    start, _ = request_window(monday_before_open, "2 D", bar_size="1 min")
    assert start == datetime(2024, 3, 7, 14, 30, tzinfo=UTC)  # Thursday and Friday
    start, _ = request_window(FRIDAY_CLOSE, "1 W", bar_size="1 hour")
    assert start == FRIDAY_CLOSE - timedelta(weeks=1)
    start, _ = request_window(FRIDAY_CLOSE, "1 M", bar_size="1 day")
    assert start == datetime(2024, 2, 8, 21, tzinfo=UTC)


def test_replay_aggregates_and_refuses_finer_sizes(tmp_path: Path) -> None:
    minutes = bars("1 min", "1 D")
    path = tmp_path / "aapl.parquet"
    minutes.with_columns(pl.lit("AAPL").alias("symbol")).write_parquet(path)
    replay = ReplayBars(path)
    start, end = request_window(FRIDAY_CLOSE, "1 D", bar_size="1 hour")
    assert replay.bars("AAPL", "1 min", "TRADES", True, start, end).equals(minutes)
    assert replay.bars("AAPL", "1 hour", "TRADES", True, start, end).select("open", "high", "low", "close",
                                                                           "volume").equals(
        bars("1 hour", "1 D").select("open", "high", "low", "close", "volume"))
    assert replay.bars("MSFT", "1 min", "TRADES", True, start, end).is_empty()
    assert replay.head_timestamp("AAPL", "TRADES", True) == minutes["ts"][0]
    with pytest.raises(InvalidBarSize, match="30 secs"):
        replay.bars("AAPL", "30 secs", "TRADES", True, start, end)


def test_replay_rejects_files_without_prices(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    pl.DataFrame({"ts": ["2024-03-08T14:30:00Z"], "close": [1.0]}).write_csv(path)
    with pytest.raises(ValueError, match="missing"):
        ReplayBars(path)
