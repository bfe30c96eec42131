"""Quality gate: each bad-row kind is quarantined under the right check, clean rows pass untouched, both engines
agree, and completeness judges whole sessions only (no false gaps on half days, holidays or window edges)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from ibkr_flows.ib.historical import bar_step
from ibkr_flows.ib.sessions import bar_start, midnight_utc, session_bounds, sessions_between
from ibkr_flows.quality.checks import BLOCKING_CHECKS
from ibkr_flows.quality.validate import QualityResult, validate_bars
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS

ENGINES = ("polars", "great_expectations")
DAY = date(2024, 3, 7)  # a plain Thursday: RTH 14:30-21:00 UTC
INGESTED = datetime(2024, 3, 8, tzinfo=UTC)


def bars(days: Iterable[date], *, bar_size: str = "1 min", use_rth: bool = True,
         what_to_show: str = "TRADES") -> pl.DataFrame:
    """Clean bars with lineage, as IB stamps them: intraday on the clock grid of the bar size with the session's
    first bar at its open (`bar_start` of every minute of the session), daily at 00:00 UTC."""
    step = bar_step(bar_size)
    if step >= timedelta(days=1):
        stamps = [midnight_utc(day) for day in days]
    else:
        minutes = [ts for day in days for ts in pl.datetime_range(*session_bounds(day, use_rth), timedelta(minutes=1),
                                                                  closed="left", time_zone="UTC", eager=True)]
        stamps = sorted({bar_start(minute, step, use_rth) for minute in minutes})
    n = len(stamps)
    wave = [(i % 50) / 10 for i in range(n)]
    return pl.DataFrame({
        "symbol": ["AAPL"] * n, "con_id": [265598] * n, "exchange": ["SMART"] * n,
        "primary_exchange": ["NASDAQ"] * n, "currency": ["USD"] * n, "bar_size": [bar_size] * n,
        "what_to_show": [what_to_show] * n, "use_rth": [use_rth] * n, "ts": stamps,
        "open": [100 + w for w in wave], "high": [101 + w for w in wave], "low": [99 + w for w in wave],
        "close": [100.5 + w for w in wave], "volume": [1000.0] * n, "wap": [100.2 + w for w in wave],
        "bar_count": [12] * n, "ingested_at": [INGESTED] * n, "flow_run_id": ["test"] * n, "request": ["clean"] * n,
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS})


def validate(frame: pl.DataFrame, engine: str, **kwargs: object) -> QualityResult:
    options: dict[str, object] = {"bar_size": "1 min", "use_rth": True, "what_to_show": "TRADES"} | kwargs
    return validate_bars(frame, engine=engine, **options)  # type: ignore[arg-type]


def ts(hour: int, minute: int, second: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


BAD_ROWS: dict[int, tuple[str, dict[str, object], str]] = {
    # row: (expected check, changed values, expected fragment of check_detail)
    10: ("not_null", {"open": None}, "missing: open"),
    11: ("not_null", {"con_id": None}, "missing: con_id"),
    12: ("not_null", {"close": float("nan")}, "missing: close"),
    13: ("positive_prices", {"open": -1.0}, "not positive: open -1.0"),  # also breaks low <= open
    14: ("high_ge_open_close", {"open": 100.0, "close": 100.5, "high": 99.5, "low": 99.0},
         "high 99.5 < open 100.0, close 100.5"),
    15: ("high_ge_open_close", {"high": 98.0, "low": 102.0}, "high 98.0 <"),  # high below low, as the simulator
    16: ("low_le_open_close", {"open": 100.0, "close": 100.5, "low": 100.2}, "low 100.2 > open 100.0"),
    17: ("volume_non_negative", {"volume": -1.0}, "negative: volume -1.0"),
    18: ("volume_non_negative", {"bar_count": -5}, "negative: bar_count -5"),
    19: ("aligned_ts", {"ts": ts(14, 49, 30)}, "not on the 1 min grid"),
    20: ("in_session", {"ts": ts(14, 0)}, "outside the session 14:30..21:00"),
    21: ("in_session", {"ts": ts(21, 0)}, "outside the session"),
    22: ("in_session", {"ts": ts(15, 0, day=date(2024, 3, 9))}, "2024-03-09 is not a session"),
}


@pytest.fixture(scope="module")
def clean_day() -> pl.DataFrame:
    return bars([DAY])


def with_every_bad_kind(clean: pl.DataFrame) -> pl.DataFrame:
    """`clean` (a day of RTH minutes) with one row of every bad kind (its `request` names the check it must fail)
    and, at the end, a second copy of row 50's key."""
    rows = clean.to_dicts()
    for index, (check, changes, _) in BAD_ROWS.items():
        rows[index] |= changes | {"request": f"bad:{check}"}
    duplicate = rows[50] | {"close": 100.7, "high": 101.5, "request": "bad:unique_key"}
    return pl.DataFrame([*rows, duplicate], schema=clean.schema)


@pytest.fixture(scope="module")
def bad_day(clean_day: pl.DataFrame) -> pl.DataFrame:
    return with_every_bad_kind(clean_day)


@pytest.fixture(scope="module", autouse=True)
def gx_warm() -> None:
    """Import GX and build its context once for the module (2-14 s), outside any single test's timing."""
    validate(bars([DAY]).head(5), "great_expectations")


@pytest.mark.parametrize("engine", ENGINES)
def test_clean_bars_pass_untouched(clean_day: pl.DataFrame, engine: str) -> None:
    result = validate(clean_day, engine, window=(ts(0, 0), ts(0, 0, day=date(2024, 3, 8))))
    assert result.engine == engine
    assert result.clean.equals(clean_day)
    assert result.quarantined.is_empty()
    assert result.quarantined.columns == [*clean_day.columns, "failed_check", "check_detail"]
    assert result.gaps.is_empty() and result.warnings == []
    assert [o.name for o in result.outcomes] == [*BLOCKING_CHECKS, "completeness"]
    assert all(o.passed and o.failed_rows == 0 for o in result.outcomes)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_bad_row_lands_in_quarantine_under_its_check(bad_day: pl.DataFrame, engine: str) -> None:
    result = validate(bad_day, engine)
    quarantined = result.quarantined
    assert quarantined.height == len(BAD_ROWS) + 1
    assert (quarantined["request"].str.strip_prefix("bad:") == quarantined["failed_check"]).all()
    assert set(quarantined["failed_check"]) == set(BLOCKING_CHECKS)
    details = dict(zip(quarantined["request"], quarantined["check_detail"], strict=True))
    for check, _, fragment in BAD_ROWS.values():
        assert any(fragment in d for r, d in zip(quarantined["request"], quarantined["check_detail"], strict=True)
                   if r == f"bad:{check}"), (check, fragment)
    assert "duplicate of an earlier bar at ts 2024-03-07 15:20:00 UTC" in details["bad:unique_key"]
    # clean rows untouched, lineage included, input order kept; the first copy of the duplicated key stays clean
    assert result.clean.equals(bad_day.filter(pl.col("request") == "clean"))
    assert quarantined.drop("failed_check", "check_detail").equals(bad_day.filter(pl.col("request") != "clean"))


@pytest.mark.parametrize("engine", ENGINES)
def test_outcomes_count_every_rule_break_and_quarantine_the_first(bad_day: pl.DataFrame, engine: str) -> None:
    outcomes = {o.name: o for o in validate(bad_day, engine).outcomes}
    assert all(o.severity == "blocking" for name, o in outcomes.items() if name != "completeness")
    assert outcomes["low_le_open_close"].failed_rows == 3  # rows 13 and 15 fail it too, but earlier checks first
    assert outcomes["low_le_open_close"].detail == "3 row(s) fail, 1 quarantined for it"
    assert outcomes["not_null"].failed_rows == 3 and not outcomes["not_null"].passed


def test_both_engines_give_identical_results(bad_day: pl.DataFrame) -> None:
    frames = [bad_day, bad_day.with_columns(what_to_show=pl.lit("MIDPOINT"), volume=pl.lit(-1.0)),
              bars([date(2024, 7, 3)], use_rth=False)]
    for frame in frames:
        kinds = {"use_rth": frame["use_rth"][0], "what_to_show": frame["what_to_show"][0]}
        by_polars, by_gx = validate(frame, "polars", **kinds), validate(frame, "great_expectations", **kinds)
        assert by_gx.clean.equals(by_polars.clean)
        assert by_gx.quarantined.equals(by_polars.quarantined)
        assert by_gx.outcomes == by_polars.outcomes
        assert by_gx.gaps.equals(by_polars.gaps)


@pytest.mark.parametrize("engine", ENGINES)
def test_minus_one_sizes_pass_only_for_data_without_trades(clean_day: pl.DataFrame, engine: str) -> None:
    no_trades = clean_day.with_columns(volume=pl.lit(-1.0), wap=pl.lit(-1.0), bar_count=pl.lit(-1, pl.Int64()))
    midpoint = validate(no_trades.with_columns(what_to_show=pl.lit("MIDPOINT")), engine, what_to_show="MIDPOINT")
    assert midpoint.quarantined.is_empty() and midpoint.clean.height == clean_day.height
    trades = validate(no_trades, engine)
    assert trades.clean.is_empty()
    assert set(trades.quarantined["failed_check"]) == {"volume_non_negative"}
    assert trades.quarantined["check_detail"][0] == "negative: volume -1.0, wap -1.0, bar_count -1"
    below = validate(no_trades.with_columns(what_to_show=pl.lit("BID_ASK"), volume=pl.lit(-2.0)), engine,
                     what_to_show="BID_ASK")
    assert below.quarantined.height == clean_day.height
    assert below.quarantined["check_detail"][0] == "negative: volume -2.0"


@pytest.mark.parametrize("use_rth", [True, False])
def test_half_day_and_holiday_give_no_false_gaps(use_rth: bool) -> None:
    window = (datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC))
    sessions = sessions_between(*window)
    assert date(2024, 7, 4) not in sessions and date(2024, 7, 3) in sessions
    frame = bars(sessions, use_rth=use_rth)
    per_half_day = 210 if use_rth else 780  # 09:30-13:00 / 04:00-17:00
    assert frame.filter(pl.col("ts").dt.date() == date(2024, 7, 3)).height == per_half_day
    result = validate(frame, "great_expectations", use_rth=use_rth, window=window)
    assert result.quarantined.is_empty()
    assert result.gaps.is_empty() and result.warnings == []
    assert result.outcomes[-1].detail == "5 whole session(s) complete"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_missing_minute_is_a_gap_of_one_in_its_session(engine: str) -> None:
    frame = bars([date(2024, 3, 6), DAY, date(2024, 3, 8)])
    holed = frame.filter(pl.col("ts") != ts(16, 0))
    result = validate(holed, engine, window=(ts(0, 0, day=date(2024, 3, 6)), ts(0, 0, day=date(2024, 3, 9))))
    assert result.gaps.to_dicts() == [{"session": DAY, "expected": 390, "received": 389, "missing": 1}]
    [warning] = result.warnings
    assert warning.name == "completeness" and warning.severity == "warning" and not warning.passed
    assert warning.failed_rows == 1
    assert warning.detail == "1 bar(s) missing in 1 of 3 session(s): 2024-03-07 (1 of 390)"
    assert result.clean.height == holed.height  # a gap warns, it never blocks


def test_only_whole_sessions_inside_the_window_are_judged(clean_day: pl.DataFrame) -> None:
    partial = clean_day.filter(pl.col("ts") >= ts(18, 0))  # the window starts mid-session: not judged
    window = (ts(18, 0), datetime(2024, 3, 12, tzinfo=UTC))  # 03-08 and 03-11 are inside, without bars
    result = validate(partial, "polars", window=window)
    assert result.gaps.to_dicts() == [
        {"session": date(2024, 3, 8), "expected": 390, "received": 0, "missing": 390},
        {"session": date(2024, 3, 11), "expected": 390, "received": 0, "missing": 390},
    ]
    without_window = validate(partial, "polars")  # judges the sessions that have bars
    assert without_window.gaps.to_dicts() == [{"session": DAY, "expected": 390, "received": partial.height,
                                                "missing": 390 - partial.height}]


def test_gaps_count_clean_bars_only(bad_day: pl.DataFrame) -> None:
    result = validate(bad_day, "polars")
    shifted_or_broken = len(BAD_ROWS)  # each bad row took its minute's place; the duplicate adds nothing
    assert result.gaps.to_dicts() == [{"session": DAY, "expected": 390, "received": 390 - shifted_or_broken,
                                       "missing": shifted_or_broken}]


@pytest.mark.parametrize("engine", ENGINES)
def test_hourly_bars_start_at_the_open_then_on_the_clock_hour(engine: str) -> None:
    """IB's 1-hour RTH bars: 09:30 (a half-hour bar), 10:00, 11:00, ... 15:00 New York."""
    frame = bars([DAY], bar_size="1 hour")
    assert frame["ts"].dt.strftime("%H:%M").to_list() == ["14:30", "15:00", "16:00", "17:00", "18:00", "19:00",
                                                          "20:00"]
    result = validate(frame, engine, bar_size="1 hour", window=(ts(0, 0), ts(23, 0)))
    assert result.clean.equals(frame) and result.gaps.is_empty()
    from_the_open = validate(frame.with_columns(ts=pl.datetime_range(ts(14, 30), ts(20, 30), timedelta(hours=1),
                                                                     time_zone="UTC", eager=True)),
                             engine, bar_size="1 hour")  # the old, wrong stamps: 09:30, 10:30, ...
    assert from_the_open.quarantined["ts"].to_list() == [ts(h, 30) for h in range(15, 21)]
    assert set(from_the_open.quarantined["failed_check"]) == {"aligned_ts"}
    after_close = validate(frame.with_columns(ts=pl.col("ts") + timedelta(hours=1)), engine, bar_size="1 hour")
    assert after_close.quarantined.sort("ts")["ts"].to_list() == [ts(15, 30), ts(21, 0)]
    assert after_close.quarantined.sort("ts")["failed_check"].to_list() == ["aligned_ts", "in_session"]


@pytest.mark.parametrize("engine", ENGINES)
def test_daily_bars_are_session_dates_at_midnight(engine: str) -> None:
    days = sessions_between(datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC))
    frame = bars(days, bar_size="1 day")
    window = (datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC))
    result = validate(frame, engine, bar_size="1 day", window=window)
    assert result.clean.equals(frame) and result.gaps.is_empty()

    holiday = frame.head(1).with_columns(ts=pl.lit(midnight_utc(date(2024, 7, 4))))
    intraday_stamp = frame.head(1).with_columns(ts=pl.lit(datetime(2024, 7, 2, 13, 30, tzinfo=UTC)))
    bad = validate(pl.concat([frame.slice(1), holiday, intraday_stamp]), engine, bar_size="1 day", window=window)
    assert bad.quarantined["failed_check"].to_list() == ["aligned_ts", "aligned_ts"]
    assert bad.gaps.to_dicts() == [{"session": date(2024, 7, 1), "expected": 1, "received": 0, "missing": 1}]


def test_weekly_bars_are_not_judged_for_completeness() -> None:
    result = validate(bars([date(2024, 7, 1)], bar_size="1 week"), "polars", bar_size="1 week")
    assert result.quarantined.is_empty()
    assert [o.name for o in result.outcomes] == list(BLOCKING_CHECKS)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_empty_frame_is_clean_and_empty(clean_day: pl.DataFrame, engine: str) -> None:
    result = validate(clean_day.clear(), engine)
    assert result.clean.is_empty() and result.clean.schema == clean_day.schema
    assert result.quarantined.is_empty() and result.gaps.is_empty()
    assert all(o.passed for o in result.outcomes)


def test_summary_markdown_lists_checks_and_gaps(bad_day: pl.DataFrame) -> None:
    summary = validate(bad_day, "polars").summary_markdown()
    assert summary.startswith(f"Quality (polars): {bad_day.height - len(BAD_ROWS) - 1} clean, "
                              f"{len(BAD_ROWS) + 1} quarantined")
    assert "| unique_key | blocking | FAIL | 1 | 1 row(s) fail, 1 quarantined for it |" in summary
    assert "| completeness | warning | FAIL |" in summary
    assert f"| 2024-03-07 | 390 | {390 - len(BAD_ROWS)} | {len(BAD_ROWS)} |" in summary


def test_bad_arguments_are_refused(clean_day: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown quality engine"):
        validate(clean_day, "pandas")
    with pytest.raises(ValueError, match="lacks column"):
        validate(clean_day.drop("ts"), "polars")
    with pytest.raises(ValueError, match="unknown bar size"):
        validate(clean_day, "polars", bar_size="7 mins")
