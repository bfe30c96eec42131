"""`ibkr data ls | show | export | quarantine | history` on real Delta tables: bars ingested from the simulator
(with its bad_bars fault for the quarantine) and series written through storage's own merge path."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.api import load_bars
from ibkr_flows.cli.app import app
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import merge_bars, table_version
from storage.location import TableLocation
from storage.quarantine_table import append_quarantine, read_quarantine
from tests.conftest import free_port

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
START = datetime(2024, 7, 10, tzinfo=UTC)
BAD_BARS = {"high-below-low": 97, "negative-volume": 89}


def strict(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse and jq do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def cli(location: TableLocation, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "220"})
    return result.exit_code, result.stdout, result.stderr


def ingest(location: TableLocation, sim: EmbeddedSimulator, symbols: tuple[str, ...], start: datetime) -> None:
    request = IngestRequest(symbols=symbols, start=start, end=NOW, quality_engine="polars")
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=71, connect_timeout=2.0)
    asyncio.run(ingest_async(request, location, settings, budget=PacingBudget(location.root / "pacing.json",
                                                                               time_scale=0.01)))


@dataclass(frozen=True)
class Stored:
    location: TableLocation
    before_msft: int
    """The bars table version after the AAPL ingest, before any MSFT bar."""


@pytest.fixture(scope="module")
def stored() -> Iterator[Stored]:
    """AAPL and MSFT 1-minute RTH bars of 2024-07-10..12 from the simulator, every 97th bar with high < low and
    every 89th with a negative volume (quarantined), in two ingests."""
    with tempfile.TemporaryDirectory(prefix="ibkr-catalog-") as tmp, EmbeddedSimulator(clock=lambda: NOW) as sim:
        location = TableLocation(Path(tmp))
        sim.update_faults(bad_bars=BAD_BARS)
        ingest(location, sim, ("AAPL",), START)
        before_msft = table_version(location)
        ingest(location, sim, ("MSFT",), START)
        assert before_msft is not None
        yield Stored(location, before_msft)


def bars(symbol: str, con_id: int, bar_size: str, stamps: list[datetime], close: float = 100.0) -> pl.DataFrame:
    """Valid bars of one series, as the ingestion stores them."""
    n = len(stamps)
    return pl.DataFrame({
        "symbol": [symbol] * n, "con_id": [con_id] * n, "exchange": ["SMART"] * n, "primary_exchange": ["NYSE"] * n,
        "currency": ["USD"] * n, "bar_size": [bar_size] * n, "what_to_show": ["TRADES"] * n, "use_rth": [True] * n,
        "ts": stamps, "open": [close] * n, "high": [close + 1] * n, "low": [close - 1] * n, "close": [close] * n,
        "volume": [1000.0] * n, "wap": [close] * n, "bar_count": [10] * n,
        "ingested_at": [NOW] * n, "flow_run_id": ["test-run"] * n, "request": ["written by the test"] * n,
    }, schema_overrides={"ts": pl.Datetime("us", "UTC"), "ingested_at": pl.Datetime("us", "UTC")})


def test_ls_lists_each_series_with_its_range_rows_quarantine_and_version(stored: Stored) -> None:
    code, out, err = cli(stored.location, "data", "ls", "--json")
    assert code == 0, err
    listed = {row["symbol"]: row for row in strict(out)}
    table = pl.read_delta(stored.location.bars)
    quarantine = read_quarantine(stored.location)
    assert set(listed) == {"AAPL", "MSFT"}
    for symbol, row in listed.items():
        mine = table.filter(pl.col("symbol") == symbol)
        assert (row["bar_size"], row["what_to_show"], row["use_rth"]) == ("1 min", "TRADES", True)
        assert row["rows"] == mine.height > 0
        assert datetime.fromisoformat(row["first_bar"]) == mine["ts"].min()
        assert datetime.fromisoformat(row["last_bar"]) == mine["ts"].max()
        assert datetime.fromisoformat(row["last_ingest"]) == mine["ingested_at"].max()
        assert row["quarantined"] == quarantine.filter(pl.col("symbol") == symbol).height > 0
        assert row["sessions_missing"] == 0 and row["missing_sessions"] == []
        assert row["table_version"] == table_version(stored.location)
    code, out, _ = cli(stored.location, "data", "ls")
    assert code == 0 and "2 series in bars table version" in out and "AAPL" in out and "MSFT" in out


def test_ls_names_the_sessions_missing_per_the_exchange_calendar(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    daily = [datetime(2024, 7, d, tzinfo=UTC) for d in (1, 2, 3, 5, 8, 10, 11, 12)]  # 07-04 holiday, 07-09 missing
    hourly = [datetime(2024, 7, d, h, 30, tzinfo=UTC) for d in (8, 10) for h in (13, 14, 15)]  # 07-09 missing
    merge_bars(location, bars("AAPL", 265598, "1 day", daily))
    merge_bars(location, bars("SPY", 756733, "1 hour", hourly))
    merge_bars(location, bars("SPY", 756733, "1 week", [datetime(2024, 7, 1, tzinfo=UTC),
                                                         datetime(2024, 7, 15, tzinfo=UTC)]))
    code, out, err = cli(location, "data", "ls", "--json")
    assert code == 0, err
    listed = {(row["symbol"], row["bar_size"]): row for row in strict(out)}
    assert listed[("AAPL", "1 day")]["missing_sessions"] == ["2024-07-09"]
    assert listed[("SPY", "1 hour")]["missing_sessions"] == ["2024-07-09"]
    assert listed[("SPY", "1 hour")]["sessions_missing"] == 1
    assert listed[("SPY", "1 week")]["sessions_missing"] is None  # one bar a week: not judged per session
    assert all(row["quarantined"] == 0 for row in listed.values())
    code, out, _ = cli(location, "data", "ls")
    assert code == 0 and "1 (2024-07-09)" in out


def test_ls_on_an_empty_directory_lists_nothing(tmp_path: Path) -> None:
    code, out, err = cli(TableLocation(tmp_path), "data", "ls", "--json")
    assert (code, strict(out)) == (0, []), err
    assert not any(tmp_path.iterdir())


def test_show_summarises_a_series_and_draws_close_and_volume(stored: Stored, tmp_path: Path) -> None:
    chart = tmp_path / "aapl.png"
    code, out, err = cli(stored.location, "data", "show", "AAPL", "--start", "2024-07-11", "--end", "2024-07-12",
                         "--rows", "3", "--plot", str(chart), "--json")
    assert code == 0, err
    shown = strict(out)
    day = pl.read_delta(stored.location.bars).filter(pl.col("symbol") == "AAPL",
                                                     pl.col("ts").dt.date() == date(2024, 7, 11))
    assert shown["summary"]["rows"] == day.height > 0
    assert shown["summary"]["min_close"] == day["close"].min() and shown["summary"]["max_close"] == day["close"].max()
    assert shown["summary"]["total_volume"] == day.filter(pl.col("volume") >= 0)["volume"].sum()
    assert [datetime.fromisoformat(r["ts"]) for r in shown["head"]] == day.sort("ts")["ts"].head(3).to_list()
    assert [datetime.fromisoformat(r["ts"]) for r in shown["tail"]] == day.sort("ts")["ts"].tail(3).to_list()
    assert shown["version"] == table_version(stored.location)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    code, out, _ = cli(stored.location, "data", "show", "AAPL")
    assert code == 0 and "min_close" in out and "first 5" in out and "last 5" in out


def test_show_of_a_series_not_stored_says_what_is(stored: Stored, tmp_path: Path) -> None:
    code, out, _ = cli(stored.location, "data", "show", "AAPL", "--bar-size", "1 day")
    assert code == 3 and "no bars for AAPL 1 day TRADES RTH" in out and "ibkr data ls" in out
    code, out, _ = cli(TableLocation(tmp_path), "data", "show", "AAPL")
    assert code == 3 and "no table there yet" in out


def test_export_writes_the_series_at_a_version(stored: Stored, tmp_path: Path) -> None:
    table = pl.read_delta(stored.location.bars).filter(pl.col("symbol") == "MSFT").sort("ts").drop("month")
    out_file = tmp_path / "msft.parquet"
    code, _, err = cli(stored.location, "data", "export", "MSFT", "--format", "parquet", "--out", str(out_file))
    assert code == 0 and f"exported {table.height} rows" in err
    exported = pl.read_parquet(out_file)
    assert exported.columns[0] == "session" and exported.drop("session").equals(table)
    assert exported["session"].to_list() == table["ts"].dt.convert_time_zone("America/New_York").dt.date().to_list()
    code, out, _ = cli(stored.location, "data", "export", "MSFT", "--end", "2024-07-11")
    assert code == 0
    csv = pl.read_csv(io.StringIO(out), try_parse_dates=True)
    assert csv.height == table.filter(pl.col("ts") < datetime(2024, 7, 11, tzinfo=UTC)).height > 0
    assert csv["close"].to_list() == table.filter(pl.col("ts") < datetime(2024, 7, 11, tzinfo=UTC))["close"].to_list()


def test_export_time_travels_and_refuses_a_version_that_does_not_exist(stored: Stored) -> None:
    code, out, err = cli(stored.location, "data", "export", "MSFT", "--version", str(stored.before_msft))
    assert code == 3 and f"at bars table version {stored.before_msft}" in err, (out, err)
    code, out, err = cli(stored.location, "data", "export", "AAPL", "--version", str(stored.before_msft))
    assert code == 0 and pl.read_csv(io.StringIO(out)).height == pl.read_delta(stored.location.bars).filter(
        pl.col("symbol") == "AAPL").height
    code, out, err = cli(stored.location, "data", "export", "AAPL", "--version", "999")
    assert code == 2 and "the bars table has no version 999" in err and "Traceback" not in err
    code, _, err = cli(stored.location, "data", "export", "AAPL", "--format", "parquet")
    assert code == 2 and "--out FILE.parquet" in err
    code, _, err = cli(stored.location, "data", "export", "AAPL", "--format", "xlsx", "--out", "x.xlsx")
    assert code == 2 and "parquet or csv" in err


def test_history_lists_versions_with_rows_touched(stored: Stored) -> None:
    code, out, err = cli(stored.location, "data", "history", "--json")
    assert code == 0, err
    versions = strict(out)
    assert [v["version"] for v in versions] == sorted((v["version"] for v in versions), reverse=True)
    assert versions[0]["version"] == table_version(stored.location)
    table = pl.read_delta(stored.location.bars)
    assert sum(v["rows_inserted"] or 0 for v in versions) == table.height  # only inserts so far
    assert all(datetime.fromisoformat(v["timestamp"]) <= datetime.now(UTC) for v in versions)
    run_ids = set(table["flow_run_id"].to_list())
    assert all(v["flow_run_id"] == "" or v["flow_run_id"] in run_ids for v in versions)
    assert {"operation", "flow_operation", "symbols", "files_added"} <= set(versions[0])
    assert all(v["operation"] in ("WRITE", "MERGE", "CREATE TABLE") for v in versions)


def test_quarantine_counts_release_and_drop_with_an_audit_trail(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(bad_bars=BAD_BARS)
        ingest(location, sim, ("AAPL", "MSFT"), datetime(2024, 7, 11, tzinfo=UTC))
    quarantined = read_quarantine(location)
    code, out, err = cli(location, "data", "quarantine", "--json")
    assert code == 0, err
    counts = {(c["failed_check"], c["symbol"]): c for c in strict(out)}
    expected = quarantined.group_by("failed_check", "symbol").len()
    assert {k: c["pending"] for k, c in counts.items()} == {(f, s): n for f, s, n in expected.iter_rows()}
    assert set(quarantined["failed_check"]) == {"high_ge_open_close", "volume_non_negative"}

    assert cli(location, "data", "quarantine", "--release")[0] == 2  # no reason, no action
    version = table_version(location)
    code, out, err = cli(location, "data", "quarantine", "--release", "--reason", "vendor says fixed", "--json")
    assert code == 0, err
    released = strict(out)
    assert released["released"] == 0 and released["examined"] == quarantined.height
    assert released["still_failing"] == dict(quarantined["failed_check"].value_counts().iter_rows())
    assert table_version(location) == version  # nothing merged

    code, out, err = cli(location, "data", "quarantine", "--drop", "--check", "high_ge_open_close", "--symbol",
                         "AAPL", "--reason", "bad prints", "--json")
    assert code == 0, err
    dropped = quarantined.filter(pl.col("failed_check") == "high_ge_open_close", pl.col("symbol") == "AAPL").height
    assert strict(out)["dropped"] == dropped > 0 and strict(out)["user"] == getpass.getuser()
    code, out, _ = cli(location, "data", "quarantine", "--show", "--reviewed", "--json")
    audit = strict(out)
    assert len(audit) == dropped and {(r["review_action"], r["review_reason"], r["reviewed_by"]) for r in audit} \
        == {("dropped", "bad prints", getpass.getuser())}
    assert read_quarantine(location).height == quarantined.height  # marked, never deleted
    code, out, _ = cli(location, "data", "quarantine", "--show", "--json")
    assert len(strict(out)) == quarantined.height - dropped
    counts = {(c["failed_check"], c["symbol"]): c for c in strict(cli(location, "data", "quarantine", "--json")[1])}
    assert (counts[("high_ge_open_close", "AAPL")]["pending"], counts[("high_ge_open_close", "AAPL")]["dropped"]) \
        == (0, dropped)
    code, out, _ = cli(location, "data", "quarantine", "--drop", "--check", "high_ge_open_close", "--symbol", "AAPL",
                       "--reason", "again")
    assert code == 3 and "no pending quarantined rows match --symbol AAPL --check high_ge_open_close" in out
    ls = {row["symbol"]: row for row in strict(cli(location, "data", "ls", "--json")[1])}
    assert ls["AAPL"]["quarantined"] == quarantined.filter(pl.col("symbol") == "AAPL").height - dropped


def test_release_merges_bars_that_pass_today_and_keeps_a_stored_bar(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    stamps = [datetime(2024, 7, 10, 13, 30, tzinfo=UTC) + timedelta(minutes=m) for m in range(4)]
    merge_bars(location, bars("AAPL", 265598, "1 min", stamps[:2]))
    quarantined_at = pl.lit(NOW)
    passes = bars("AAPL", 265598, "1 min", stamps[2:3]).with_columns(  # a rule that has since been relaxed
        failed_check=pl.lit("old_rule"), check_detail=pl.lit("retired"), quarantined_at=quarantined_at)
    conflicts = bars("AAPL", 265598, "1 min", stamps[:1], close=101.0).with_columns(  # another bar is stored
        failed_check=pl.lit("unique_key"), check_detail=pl.lit("later copy"), quarantined_at=quarantined_at)
    still_bad = bars("AAPL", 265598, "1 min", stamps[3:4]).with_columns(  # high below close: fails today too
        high=pl.lit(99.0), failed_check=pl.lit("high_ge_open_close"), check_detail=pl.lit("high < close"),
        quarantined_at=quarantined_at)
    append_quarantine(location, pl.concat([passes, conflicts, still_bad]))

    code, out, err = cli(location, "data", "quarantine", "--release", "--reason", "rule retired", "--json")
    assert code == 0, err
    report = strict(out)
    assert (report["examined"], report["released"]) == (3, 1)
    assert report["still_failing"] == {"stored_bar_differs": 1, "high_ge_open_close": 1}
    stored = pl.read_delta(location.bars).sort("ts")
    assert stored["ts"].to_list() == stamps[:3] and stored["close"].to_list() == [100.0] * 3
    assert report["bars_version"] == table_version(location)
    pending = strict(cli(location, "data", "quarantine", "--show", "--json")[1])
    assert sorted(r["failed_check"] for r in pending) == ["high_ge_open_close", "unique_key"]


def test_connect_json_is_strict_json_with_the_verdicts_exit_code() -> None:
    result = CliRunner().invoke(app, ["data", "connect", "--port", str(free_port()), "--json", "--timeout", "1"])
    verdict = strict(result.stdout)
    assert result.exit_code in (10, 11) and verdict["failure_class"] in ("not-listening", "wrong-port")


def test_a_chart_is_drawn_from_at_most_its_points_and_keeps_the_volume(stored: Stored) -> None:
    from storage.bars_catalog import SeriesSelection, downsample, scan_series, series_summary

    lazy, _ = scan_series(stored.location, SeriesSelection("MSFT", "1 min"))
    summary = series_summary(lazy, stored.location)
    points = downsample(lazy, stored.location, summary["first_bar"], summary["last_bar"], 100)
    assert 0 < points.height <= 100 and points["ts"].is_sorted()
    assert points["volume"].sum() == summary["total_volume"]
    assert points["close"][-1] == pl.read_delta(stored.location.bars).filter(pl.col("symbol") == "MSFT") \
        .sort("ts")["close"][-1]


def test_daily_bars_are_shown_and_loaded_by_their_session_date(tmp_path: Path) -> None:
    """IB stamps a daily bar 00:00 UTC of its session: in New York that is the evening before. `session` names
    the trading day itself, in `data show`, `load_bars` and exports."""
    location = TableLocation(tmp_path)
    days = [datetime(2024, 7, d, tzinfo=UTC) for d in (10, 11, 12)]
    merge_bars(location, bars("AAPL", 265598, "1 day", days))
    code, out, err = cli(location, "data", "show", "AAPL", "--bar-size", "1 day", "--json")
    assert code == 0, err
    shown = strict(out)
    assert [row["session"] for row in shown["head"]] == ["2024-07-10", "2024-07-11", "2024-07-12"]
    loaded = load_bars("AAPL", start="2024-07-01", end="2024-08-01", bar_size="1 day", data_dir=str(tmp_path))
    assert loaded["session"].to_list() == [date(2024, 7, 10), date(2024, 7, 11), date(2024, 7, 12)]
    assert loaded["ts"].dt.convert_time_zone("America/New_York").dt.date().to_list()[0] == date(2024, 7, 9)
