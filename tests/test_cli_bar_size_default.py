"""`ibkr backtest run` without --bar-size reads the bar size that is stored, on real Delta tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from storage.bars_table import merge_bars
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS

RANGE = ["--start", "2024-01-01", "--end", "2024-12-31"]


def stored(location: TableLocation, bar_size: str, step: timedelta, count: int, symbol: str = "AAPL") -> None:
    """Write `count` bars of `bar_size` for `symbol` into the bars table, the way an ingest stores them."""
    close = 190 * np.exp(np.cumsum(np.random.default_rng(count).normal(0, 0.01, count)))
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    merge_bars(location, pl.DataFrame({
        "symbol": symbol, "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": bar_size, "what_to_show": "TRADES", "use_rth": True,
        "ts": [start + i * step for i in range(count)], "open": close, "high": close * 1.001,
        "low": close * 0.999, "close": close, "volume": 1000.0, "wap": close, "bar_count": 10,
        "ingested_at": datetime.now(UTC), "flow_run_id": "test", "request": "test",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS}))


def backtest(location: TableLocation, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["backtest", "run", *RANGE, "--no-store", *args],
                                env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_the_only_stored_size_is_used_and_named(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stored(location, "1 day", timedelta(days=1), 120)

    code, output = backtest(location, "--json")
    assert code == 0, output
    payload = json.loads(output)
    assert (payload["bar_size"], payload["bar_size_source"]) == ("1 day", "stored")
    assert payload["results"]["AAPL"]["bars"] == 120

    code, output = backtest(location)
    assert code == 0, output
    assert "bar size 1 day: the only one stored for AAPL TRADES RTH" in output


def test_several_stored_sizes_fail_listing_them(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stored(location, "1 day", timedelta(days=1), 120)
    stored(location, "1 hour", timedelta(hours=1), 200)
    stored(location, "5 mins", timedelta(minutes=5), 300, symbol="MSFT")  # another symbol's size is not a choice

    code, output = backtest(location)
    assert code == 2, output
    assert "AAPL TRADES RTH is stored in 2 bar sizes (1 day, 1 hour)" in output
    assert "--bar-size '1 day'" in output and "--bar-size '1 hour'" in output

    code, output = backtest(location, "--bar-size", "1 hour", "--json")
    assert code == 0, output
    payload = json.loads(output)
    assert (payload["bar_size"], payload["bar_size_source"]) == ("1 hour", "given")
    assert payload["results"]["AAPL"]["bars"] == 200


def test_nothing_stored_keeps_the_no_data_exit_and_the_ingest_hint(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stored(location, "1 day", timedelta(days=1), 120, symbol="MSFT")

    code, output = backtest(location, "--symbol", "AAPL")
    assert code == 3, output
    assert "no 1 min bars for AAPL" in output
    assert "ibkr data ingest AAPL --bar-size '1 min'" in output


def test_the_grid_also_reads_the_stored_size(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stored(location, "1 day", timedelta(days=1), 200)
    result = CliRunner().invoke(app, ["backtest", "grid", *RANGE, "--no-store", "--range", "fast_period=3,5",
                                      "--range", "slow_period=10,20"],
                                env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "bar size 1 day: the only one stored for AAPL TRADES RTH" in result.output
    assert "top 4 of 4" in result.output
