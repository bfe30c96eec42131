"""Prices a backtest reads (issue 16): `adjust_bars` worked by hand, and `ibkr backtest run --adjust` on a real bars
table re-scaled after a split, with the mode in the results row (added to an older results table by schema
evolution)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.backtest.adjust import adjust_bars
from ibkr_flows.cli.app import app
from storage.bars_rescale import rescale_history
from storage.bars_table import merge_bars
from storage.corporate_actions_table import CORPORATE_ACTIONS_SCHEMA, ActionKind
from storage.location import TableLocation
from storage.results_table import IDENTITY_COLUMNS, RESULTS_SCHEMA, read_backtest_results
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS
from storage.tables import write

SPLIT = date(2020, 8, 31)
DAYS = [date(2020, 8, 27), date(2020, 8, 28), date(2020, 8, 31), date(2020, 9, 1)]


def daily(closes: list[float], volumes: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"ts": [datetime.combine(d, datetime.min.time(), UTC) for d in DAYS],
                         "open": closes, "high": closes, "low": closes, "close": closes, "volume": volumes})


def actions(*rows: tuple[str, date, float, int | None]) -> pl.DataFrame:
    return pl.DataFrame([{"symbol": "AAPL", "con_id": 265598, "effective_date": effective, "kind": kind,
                          "factor": factor, "detected_at": datetime(2020, 9, 2, tzinfo=UTC),
                          "bars_version_before": None if after is None else after - 1, "bars_version_after": after}
                         for kind, effective, factor, after in rows], schema=CORPORATE_ACTIONS_SCHEMA)


STORED = daily([125.0, 126.0, 127.0, 128.0], [400.0, 400.0, 100.0, 100.0])
SPLIT_AT_3 = ("split", SPLIT, 4.0, 3)
DIVIDEND = ("dividend", date(2020, 8, 28), 1.25, None)  # a 20 % dividend: 1 / (1 - 0.2)


def test_splits_is_the_stored_table_and_none_undoes_the_rescaled_split() -> None:
    assert adjust_bars(STORED, actions(SPLIT_AT_3), "splits", bar_size="1 day", read_version=3).equals(STORED)
    raw = adjust_bars(STORED, actions(SPLIT_AT_3), "none", bar_size="1 day", read_version=3)
    assert raw["close"].to_list() == [500.0, 504.0, 127.0, 128.0]
    assert raw["volume"].to_list() == [100.0, 100.0, 100.0, 100.0]


def test_a_version_read_before_the_rescale_gets_the_split_applied_at_read_time() -> None:
    old_scale = daily([500.0, 504.0, 127.0, 128.0], [100.0, 100.0, 100.0, 100.0])
    split = adjust_bars(old_scale, actions(SPLIT_AT_3), "splits", bar_size="1 day", read_version=2)
    assert split["close"].to_list() == [125.0, 126.0, 127.0, 128.0]
    assert split["volume"].to_list() == [400.0, 400.0, 100.0, 100.0]
    assert adjust_bars(old_scale, actions(SPLIT_AT_3), "none", bar_size="1 day", read_version=2).equals(old_scale)


def test_total_also_divides_the_bars_before_each_ex_date_by_the_dividend_factor() -> None:
    total = adjust_bars(STORED, actions(SPLIT_AT_3, DIVIDEND), "total", bar_size="1 day", read_version=3)
    assert total["close"].to_list() == [100.0, 126.0, 127.0, 128.0]
    assert total["volume"].equals(STORED["volume"])
    raw = adjust_bars(STORED, actions(SPLIT_AT_3, DIVIDEND), "none", bar_size="1 day", read_version=3)
    assert raw["close"].to_list() == [500.0, 504.0, 127.0, 128.0]  # dividends only move the total-return series


def test_intraday_bars_belong_to_their_new_york_session() -> None:
    """A winter evening bar of the Monday before a Tuesday split starts after midnight UTC: still Monday's."""
    monday_evening = datetime(2021, 1, 5, 0, 30, tzinfo=UTC)  # 19:30 New York, Monday 4 January
    minutes = pl.DataFrame({"ts": [monday_evening, datetime(2021, 1, 5, 14, 30, tzinfo=UTC)],
                            "open": [10.0, 10.0], "high": [10.0, 10.0], "low": [10.0, 10.0], "close": [10.0, 10.0]})
    raw = adjust_bars(minutes, actions(("split", date(2021, 1, 5), 4.0, 1)), "none", bar_size="1 min",
                      read_version=1)
    assert raw["close"].to_list() == [40.0, 10.0]


def stored_bars(closes: list[float]) -> pl.DataFrame:
    days = [DAYS[0] - timedelta(days=3), *DAYS]  # Monday 24 August onwards (with its own gaps: fine for a test)
    return pl.DataFrame({
        "symbol": "AAPL", "con_id": 265598, "exchange": "SMART", "primary_exchange": "NASDAQ", "currency": "USD",
        "bar_size": "1 day", "what_to_show": "TRADES", "use_rth": True,
        "ts": [datetime.combine(d, datetime.min.time(), UTC) for d in days], "open": closes, "high": closes,
        "low": closes, "close": closes, "volume": 1000.0, "wap": closes, "bar_count": 10,
        "ingested_at": datetime(2020, 9, 2, tzinfo=UTC), "flow_run_id": "test", "request": "test",
    }, schema={**BAR_COLUMNS, **LINEAGE_COLUMNS})


def test_backtest_run_reads_the_mode_asked_for_and_the_results_row_says_which(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    merge_bars(location, stored_bars([496.0, 500.0, 504.0, 127.0, 128.0]))  # stored before and after the split
    rescale_history(location, symbol="AAPL", con_id=265598, kind=ActionKind.SPLIT, factor=4.0, effective=SPLIT)
    older = {name: [None] for name in RESULTS_SCHEMA if name != "adjust"}  # a results table from before `adjust`
    write(location.backtest_results, pl.DataFrame({**older, "run_id": ["older"]},
                                                  schema={k: v for k, v in RESULTS_SCHEMA.items() if k != "adjust"}),
          mode="error")

    def buy_and_hold(adjust: str) -> float:
        result = CliRunner().invoke(app, ["backtest", "run", "--strategy", "buy_and_hold", "--symbol", "AAPL",
                                          "--bar-size", "1 day", "--start", "2020-08-24", "--end", "2020-09-02",
                                          "--adjust", adjust, "--json"],
                                    env={"IBKR_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["adjust"] == adjust
        return payload["results"]["AAPL"]["buy_and_hold_return_pct"]

    assert buy_and_hold("splits") == pytest.approx(0.0, abs=5)  # 124 -> 128 on one scale
    assert buy_and_hold("none") < -70  # 496 -> 128: the split as a loss, as printed
    rows = read_backtest_results(location)
    assert "adjust" in IDENTITY_COLUMNS
    assert dict(zip(rows["run_id"].to_list(), rows["adjust"].to_list(), strict=True))["older"] is None
    assert sorted(a for a in rows["adjust"].to_list() if a) == ["none", "splits"]


def test_total_is_refused_for_series_that_are_not_trades(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backtest", "run", "--what-to-show", "MIDPOINT", "--adjust", "total"],
                                env={"IBKR_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    assert result.exit_code == 2 and "TRADES bars only" in result.output
