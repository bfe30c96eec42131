"""Bad input gets a clear error and an exit code, and writes nothing; plus property-based checks of the bar-quality
rules against a plain-Python statement of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.quality.validate import validate_bars
from storage.bars_table import merge_bars
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS
from tests.test_storage import make_bars

START = datetime(2024, 7, 8, 13, 30, tzinfo=UTC)


def _cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["../etc/passwd"], "invalid instrument id"),
    (["AA PL"], "invalid instrument id"),
    (["AAPL", "--bar-size", "7 mins"], "got '7 mins'"),
    (["AAPL", "--what-to-show", "OPTION_VOLUME"], "what_to_show must be one of"),
    (["AAPL", "--start", "2024-07-10", "--end", "2024-07-01"], "is not before end"),
    (["AAPL", "--start", "2099-01-01"], "is in the future"),
    (["AAPL", "--quality-engine", "pandas"], "quality_engine must be"),
])
def test_ingest_refuses_bad_input_before_connecting(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = _cli(tmp_path, "data", "ingest", *args, "--port", "1")
    assert code == 2 and message in output, output
    assert "Traceback" not in output and not any(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--fast-period", "0"], "fast_period must be positive, got 0"),
    (["--fast-period", "-5"], "fast_period must be positive, got -5"),
    (["--fast-period", "10", "--slow-period", "10"], "fast_period (10) must be smaller than slow_period (10)"),
    (["--strategy", "rsi_reversion", "--param", "lower=80", "--param", "upper=20"], "lower"),
    (["--strategy", "donchian_breakout", "--param", "window=5"], "known parameters"),
    (["--bar-size", "7 mins"], "bar_size must be one of '1 secs'"),
    (["--start", "2099-01-01", "--end", "2099-02-01"], "is in the future"),
    (["--commission", "free"], "commission must be one of"),
])
def test_backtest_refuses_bad_input_before_reading(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = _cli(tmp_path, "backtest", "run", "--symbol", "AAPL", *args)
    assert code == 2 and message in output, output
    assert "Traceback" not in output and not any(tmp_path.iterdir())


def test_a_directory_that_is_not_a_delta_table(tmp_path: Path) -> None:
    (tmp_path / "bars").mkdir()
    (tmp_path / "bars" / "prices.csv").write_text("ts,close\n")
    code, output = _cli(tmp_path, "backtest", "run", "--symbol", "AAPL")
    assert code == 3 and "is not a Delta table" in output
    assert sorted(p.name for p in (tmp_path / "bars").iterdir()) == ["prices.csv"]


def test_a_corrupted_table_file_is_named_not_dumped(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    merge_bars(location, make_bars("AAPL", START, 300))
    data_file = next(Path(location.bars).rglob("*.parquet"))
    data_file.write_bytes(b"not parquet at all")
    code, output = _cli(tmp_path, "backtest", "run", "--symbol", "AAPL", "--start", "2024-07-08",
                        "--end", "2024-07-09")
    assert code == 4 and "is damaged" in output and "time travel" in output
    assert "Traceback" not in output


# --- property-based: the quality rules say exactly what they promise -----------------------------------------------

PRICES = st.floats(min_value=-5, max_value=500, allow_nan=False, allow_infinity=False)


@st.composite
def bar_rows(draw: st.DrawFn) -> pl.DataFrame:
    """Up to 40 one-minute RTH bars of 2024-07-08 with arbitrary (often inconsistent) prices and volumes, and
    some timestamps duplicated or off the minute grid."""
    count = draw(st.integers(min_value=1, max_value=40))
    minutes = draw(st.lists(st.integers(min_value=0, max_value=389), min_size=count, max_size=count))
    seconds = draw(st.lists(st.sampled_from([0, 0, 0, 30]), min_size=count, max_size=count))
    values = {name: draw(st.lists(PRICES, min_size=count, max_size=count)) for name in ("open", "high", "low",
                                                                                       "close")}
    volume = draw(st.lists(st.floats(min_value=-2, max_value=1e6, allow_nan=False), min_size=count,
                           max_size=count))
    return pl.DataFrame({
        "symbol": "AAPL", "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True,
        "ts": [START + timedelta(minutes=m, seconds=s) for m, s in zip(minutes, seconds, strict=True)],
        **values, "volume": volume, "wap": values["close"], "bar_count": 1,
    }, schema=BAR_COLUMNS)


def _oracle_passes(row: dict[str, float], seen: set[datetime]) -> bool:
    prices_ok = all(row[c] > 0 for c in ("open", "high", "low", "close"))
    ohlc_ok = row["high"] >= max(row["open"], row["close"]) and row["low"] <= min(row["open"], row["close"])
    aligned = row["ts"].second == 0
    first = row["ts"] not in seen
    return prices_ok and ohlc_ok and row["volume"] >= 0 and aligned and first


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bar_rows())
def test_quality_rules_match_their_plain_statement(frame: pl.DataFrame) -> None:
    result = validate_bars(frame, bar_size="1 min", use_rth=True, what_to_show="TRADES", engine="polars")
    seen: set[datetime] = set()
    expected_clean = []
    for row in frame.iter_rows(named=True):
        if _oracle_passes(row, seen):
            expected_clean.append(row["ts"])
        seen.add(row["ts"])
    assert result.clean["ts"].to_list() == expected_clean
    assert result.clean.height + result.quarantined.height == frame.height  # nothing silently dropped
