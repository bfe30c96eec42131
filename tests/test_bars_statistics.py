"""The bars table keeps per-file statistics on the symbol and the bar key only (issue 17: opening the table parses
every live file's statistics): every way a data file is written keeps them so, the readers that select files by
statistics still select the same files, and a table written before gets the setting at its next write and keeps
working, on disk and on S3. Real Delta tables."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from storage.bars_table import (
    BARS_CONFIGURATION,
    conform_bars,
    merge_bars,
    pruned_files,
    read_bars,
    replace_series,
    scan_bars,
    watermarks,
)
from storage.location import TableLocation
from storage.maintenance import compact
from storage.schema import BAR_COLUMNS, BAR_KEY, LINEAGE_COLUMNS, PARTITION_COLUMN
from storage.tables import open_table, write
from tests.test_bars_append_race import curve, expected_keys, writer
from tests.test_object_storage import s3_endpoint, s3_env, s3_location  # noqa: F401 - the moto S3 fixtures
from tests.test_storage import JULY, make_bars, read_all

KEPT = {"symbol", *BAR_KEY}
EVERY_COLUMN = set(BAR_COLUMNS) | set(LINEAGE_COLUMNS)
"""What a table written before keeps statistics on: Delta's default, the first 32 columns (all but the partition)."""
STATS_PROPERTY = "delta.dataSkippingStatsColumns"
TRADES_RTH = {"bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True}
JULY_1 = datetime(2024, 7, 1, 14, 30, tzinfo=UTC)
JULY_10 = datetime(2024, 7, 10, 14, 30, tzinfo=UTC)


def statistics_by_file(path: str) -> dict[str, set[str]]:
    """The columns each live data file keeps statistics on, from its add action in the log."""
    live = set(pl.DataFrame(DeltaTable(path).get_add_actions(flatten=True))["path"].to_list())
    columns: dict[str, set[str]] = {}
    for commit in sorted((Path(path) / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            add = json.loads(line).get("add")
            if add is not None and add["path"] in live:
                stats = json.loads(add["stats"])
                columns[add["path"]] = set(stats["minValues"]) | set(stats["maxValues"]) | set(stats["nullCount"])
    assert set(columns) == live
    return columns


def kept_everywhere(path: str) -> bool:
    return all(columns == KEPT for columns in statistics_by_file(path).values())


def write_as_before(location: TableLocation, frame: pl.DataFrame) -> None:
    """Create the bars table as the code before this setting did: the same write, without the configuration."""
    write(location.bars, conform_bars(frame), mode="error", partition_by=[PARTITION_COLUMN])


def oracle_watermarks(location: TableLocation) -> dict[str, datetime]:
    last = pl.scan_delta(location.bars).group_by("symbol").agg(pl.col("ts").max()).collect()
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


def test_every_write_keeps_statistics_on_the_symbol_and_the_bar_key_only(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    assert merge_bars(location, make_bars("AAPL", JULY, 3000)).operation == "create"  # July and August: two files
    assert DeltaTable(location.bars).metadata().configuration[STATS_PROPERTY] == (
        "symbol,con_id,bar_size,what_to_show,use_rth,ts")
    assert merge_bars(location, make_bars("MSFT", JULY, 60)).operation == "append"
    assert merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=2990), 20, price=200.0)).operation == (
        "merge")
    assert replace_series(location, make_bars("MSFT", JULY, 30)).rows_deleted == 30
    assert len(statistics_by_file(location.bars)) >= 3 and kept_everywhere(location.bars)

    before = read_all(location)
    assert compact(location.bars).files_added >= 1
    assert kept_everywhere(location.bars) and read_all(location).equals(before)


def test_readers_still_select_files_by_the_statistics_kept(tmp_path: Path) -> None:
    """Three files in one month: the symbol and time statistics alone tell them apart."""
    location = TableLocation(tmp_path)
    for symbol, start in (("AAPL", JULY_1), ("MSFT", JULY_1), ("AAPL", JULY_10)):
        merge_bars(location, make_bars(symbol, start, 60))
    table = DeltaTable(location.bars)
    assert len(table.file_uris()) == 3
    msft = pruned_files(table, [("symbol", "in", ["MSFT"]), ("bar_size", "=", "1 min")]).collect()
    assert msft["symbol"].unique().to_list() == ["MSFT"] and msft.height == 60  # one file opened, not three
    late = pruned_files(table, [("ts", ">=", JULY_10)]).collect()
    assert late["ts"].min() == JULY_10 and late.height == 60
    assert watermarks(location, **TRADES_RTH, symbols=["AAPL", "MSFT"]) == {
        "AAPL": JULY_10 + timedelta(minutes=59), "MSFT": JULY_1 + timedelta(minutes=59)}

    revised = merge_bars(location, make_bars("MSFT", JULY_1 + timedelta(minutes=50), 20, price=200.0))
    assert (revised.operation, revised.rows_inserted, revised.rows_updated) == ("merge", 10, 10)
    metrics = DeltaTable(location.bars).history(1)[0]["operationMetrics"]
    assert (metrics["num_target_files_removed"], metrics["num_target_files_added"]) == (1, 1)  # MSFT's file only
    bars, _ = read_bars(location, ["MSFT"], columns=["ts", "open"], **TRADES_RTH, start=JULY_1, end=JULY_10)
    assert bars.height == 70 and bars["open"].tail(20).to_list() == [200.0 + i * 0.01 for i in range(20)]


def test_a_table_written_before_gets_the_setting_at_its_next_write_and_keeps_working(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    write_as_before(location, make_bars("AAPL", JULY, 3000))
    assert STATS_PROPERTY not in DeltaTable(location.bars).metadata().configuration
    old_files = statistics_by_file(location.bars)
    assert list(old_files.values()) == [EVERY_COLUMN, EVERY_COLUMN]

    appended = merge_bars(location, make_bars("MSFT", JULY, 60))
    assert (appended.operation, appended.version) == ("append", 2)  # version 1: the setting, one commit
    table = DeltaTable(location.bars)
    assert table.metadata().configuration[STATS_PROPERTY] == BARS_CONFIGURATION[STATS_PROPERTY]
    statistics = statistics_by_file(location.bars)
    assert {f: statistics[f] for f in old_files} == old_files  # files written before keep theirs
    assert [statistics[f] for f in statistics if f not in old_files] == [KEPT]

    assert merge_bars(location, make_bars("AAPL", JULY, 3000)).operation == "none"  # a re-run stores nothing
    revised = merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=2990), 20, price=200.0))
    assert (revised.rows_inserted, revised.rows_updated, revised.version) == (10, 10, 3)
    assert watermarks(location, **TRADES_RTH, symbols=["AAPL", "MSFT"]) == oracle_watermarks(location) == {
        "AAPL": JULY + timedelta(minutes=3009), "MSFT": JULY + timedelta(minutes=59)}
    assert read_all(location).height == 3070
    assert read_all(location, version=0).height == 3000  # time travel to the table as it was written before

    before = read_all(location)
    compact(location.bars)  # the maintenance flow rewrites the older files with the kept statistics
    assert kept_everywhere(location.bars) and read_all(location).equals(before)


def test_two_processes_writing_first_to_a_table_written_before_both_land(tmp_path: Path) -> None:
    """Both find the setting missing at their first write: it is set once (a writer whose commit is refused plans
    again and finds it set), and no bar is lost or stored twice."""
    location = TableLocation(tmp_path)
    write_as_before(location, curve("AAPL", 100.0).slice(0, 100))
    rounds = 3
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding delta-rs / polars threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=writer, args=(str(tmp_path), role, barrier, results, rounds)) for role in (0, 1)]
    for process in processes:
        process.start()
    reports = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [error for _, _, error in reports] == [None, None] and [p.exitcode for p in processes] == [0, 0]

    table = DeltaTable(location.bars)
    assert table.metadata().configuration[STATS_PROPERTY] == BARS_CONFIGURATION[STATS_PROPERTY]
    settings = [entry for entry in table.history() if entry["operation"] == "SET TBLPROPERTIES"]
    assert len(settings) == 1
    lazy, _ = scan_bars(location, ["AAPL", "MSFT", "SPY"], bar_size="1 min", start=JULY, end=JULY + timedelta(days=30))
    stored = lazy.collect()
    assert stored.select(pl.struct("con_id", "ts").is_duplicated().sum()).item() == 0
    assert stored.select("symbol", "ts").sort("symbol", "ts").equals(expected_keys(rounds))


def test_a_table_written_before_on_s3_gets_the_setting_at_its_next_write(s3_location: TableLocation) -> None:  # noqa: F811
    write_as_before(s3_location, make_bars("AAPL", JULY, 120))
    later = make_bars("AAPL", JULY + timedelta(minutes=120), 60)
    assert merge_bars(s3_location, later).version == 2  # version 1: the setting
    assert open_table(s3_location.bars).metadata().configuration[STATS_PROPERTY] == BARS_CONFIGURATION[STATS_PROPERTY]
    assert merge_bars(s3_location, later).operation == "none"
    assert watermarks(s3_location, **TRADES_RTH, symbols=["AAPL"]) == {"AAPL": JULY + timedelta(minutes=179)}
    bars, version = read_bars(s3_location, ["AAPL"], columns=["ts"], **TRADES_RTH, start=JULY,
                              end=JULY + timedelta(days=1))
    assert (bars.height, version) == (180, 2)
