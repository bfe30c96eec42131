"""The Delta tables, real ones in a temp dir: MERGE idempotency, revisions, races, schema traps, time travel."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from storage.bars_table import (
    bars_history,
    conform_bars,
    merge_bars,
    plan_write,
    replace_series,
    scan_bars,
    series_app_id,
    stored_in_range,
    table_version,
    watermarks,
    write_plan,
)
from storage.errors import BarsSchemaError, NotADeltaTableError
from storage.location import TableLocation
from storage.maintenance import compact, vacuum
from storage.quarantine_table import QUARANTINE_CONFIGURATION, QUARANTINE_KEY, append_quarantine, read_quarantine
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS, QUARANTINE_SCHEMA
from storage.tables import conform, write

CON_IDS = {"AAPL": 265598, "MSFT": 272093, "SPY": 756733}


def make_bars(symbol: str, start: datetime, count: int, *, price: float = 100.0, run: str = "run-1") -> pl.DataFrame:
    ts = [start + timedelta(minutes=i) for i in range(count)]
    return pl.DataFrame(
        {
            "symbol": symbol, "con_id": CON_IDS[symbol], "exchange": "SMART", "primary_exchange": "NASDAQ",
            "currency": "USD", "bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True, "ts": ts,
            "open": [price + i * 0.01 for i in range(count)], "high": [price + 1 + i * 0.01 for i in range(count)],
            "low": [price - 1 + i * 0.01 for i in range(count)],
            "close": [price + 0.5 + i * 0.01 for i in range(count)],
            "volume": 1000.0, "wap": price, "bar_count": 10,
            "ingested_at": datetime(2024, 8, 1, tzinfo=UTC), "flow_run_id": run, "request": "test",
        },
        schema={**BAR_COLUMNS, **LINEAGE_COLUMNS},
    )


JULY = datetime(2024, 7, 30, 14, 30, tzinfo=UTC)


def read_all(location: TableLocation, version: int | None = None) -> pl.DataFrame:
    lazy, _ = scan_bars(location, list(CON_IDS), bar_size="1 min", start=datetime(2000, 1, 1, tzinfo=UTC),
                        end=datetime(2100, 1, 1, tzinfo=UTC), version=version)
    return lazy.collect()


def test_merge_is_idempotent_and_replaces_revised_bars(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    # spans a month boundary: two partitions
    first = merge_bars(location, make_bars("AAPL", JULY, 3000))
    assert (first.rows_inserted, first.rows_updated) == (3000, 0)
    again = merge_bars(location, make_bars("AAPL", JULY, 3000, run="run-2"))
    assert (again.rows_inserted, again.rows_updated) == (0, 0)
    revised = make_bars("AAPL", JULY + timedelta(minutes=2990), 20, price=200.0, run="run-3")
    result = merge_bars(location, revised)
    assert (result.rows_inserted, result.rows_updated) == (10, 10)
    table = read_all(location)
    assert table.height == 3010
    assert table.filter(pl.col("ts") >= revised["ts"][0])["open"].to_list() == revised["open"].to_list()
    assert table.filter(pl.col("flow_run_id") == "run-2").is_empty()  # unchanged rows keep their lineage
    assert sorted(p.name for p in Path(location.bars).iterdir() if p.name.startswith("month=")) == [
        "month=2024-07", "month=2024-08"]


def test_each_batch_is_appended_merged_or_skipped_in_one_commit(tmp_path: Path) -> None:
    """New bars are appended, revised ones merged (with the new ones of the batch, one commit), bars stored as is
    are not written; a gap before the last stored bar is filled by the append, never duplicated."""
    location = TableLocation(tmp_path)
    created = merge_bars(location, pl.concat([make_bars("AAPL", JULY, 100), make_bars("MSFT", JULY, 100)]))
    assert (created.operation, created.rows_inserted, created.version) == ("create", 200, 0)
    appended = merge_bars(location, make_bars("AAPL", JULY, 120).slice(90))  # minutes 90..119: 10 stored as is
    assert (appended.operation, appended.rows_inserted, appended.rows_updated, appended.version) == \
        ("append", 20, 0, 1)
    same = merge_bars(location, make_bars("AAPL", JULY, 120, run="run-2"))
    assert (same.operation, same.rows_inserted, same.rows_updated, same.version) == ("none", 0, 0, 1)
    spy = make_bars("SPY", JULY, 30)
    merge_bars(location, pl.concat([spy.slice(0, 10), spy.slice(20)]))
    filled = merge_bars(location, spy)  # minutes 10..19 lie before the last stored bar
    assert (filled.operation, filled.rows_inserted, filled.rows_updated) == ("append", 10, 0)
    revised = pl.concat([make_bars("MSFT", JULY + timedelta(minutes=95), 10, price=300.0, run="run-3"),
                         make_bars("AAPL", JULY, 125, run="run-3").slice(120)])
    merged = merge_bars(location, revised)  # 5 MSFT bars revised, 5 MSFT + 5 AAPL new
    assert (merged.operation, merged.rows_inserted, merged.rows_updated, merged.version) == ("merge", 10, 5, 4)
    table = read_all(location)
    assert dict(table.group_by("symbol").len().iter_rows()) == {"AAPL": 125, "MSFT": 105, "SPY": 30}
    assert table.select(pl.struct("con_id", "ts").is_duplicated().any()).item() is False
    msft = table.filter(pl.col("symbol") == "MSFT", pl.col("ts") >= JULY + timedelta(minutes=95))
    assert msft["open"].to_list() == revised.filter(pl.col("symbol") == "MSFT")["open"].to_list()
    assert set(msft["flow_run_id"]) == {"run-3"}


def test_every_write_carries_commit_metadata_in_the_history(tmp_path: Path) -> None:
    """What `ibkr data history` reads: the flow runs, the operation and the symbols of each commit."""
    location = TableLocation(tmp_path)
    merge_bars(location, pl.concat([make_bars("MSFT", JULY, 10, run="run-b"), make_bars("AAPL", JULY, 10)]))
    merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=10), 10, run="run-2"))
    merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=15), 10, price=5.0, run="run-3"))
    replace_series(location, make_bars("MSFT", JULY, 5, run="run-4").with_columns(what_to_show=pl.lit("ADJUSTED_LAST")))
    history = {h["version"]: h for h in bars_history(location)}
    assert [(history[v]["operation"], history[v]["ibkr.operation"], history[v]["ibkr.flow_run_id"],
             history[v]["ibkr.symbols"]) for v in range(4)] == [
        ("WRITE", "append-bars", "run-1,run-b", "AAPL,MSFT"),
        ("WRITE", "append-bars", "run-2", "AAPL"),
        ("MERGE", "merge-bars", "run-3", "AAPL"),
        ("MERGE", "replace-series", "run-4", "MSFT"),
    ]
    # each commit also recorded the app transaction of every series it wrote, numbered with its planned version
    table = DeltaTable(location.bars)
    assert table.transaction_version(series_app_id(CON_IDS["AAPL"], "1 min", "TRADES", True)) == 2
    assert table.transaction_version(series_app_id(CON_IDS["MSFT"], "1 min", "TRADES", True)) == 0
    assert table.transaction_version(series_app_id(CON_IDS["MSFT"], "1 min", "ADJUSTED_LAST", True)) == 3
    assert table.transaction_version(series_app_id(CON_IDS["SPY"], "1 min", "TRADES", True)) is None


def test_a_write_planned_before_a_commit_of_its_series_is_refused(tmp_path: Path) -> None:
    """The race the append must lose: writer 1 reads the stored bars at version v, writer 2 commits bars of the
    same series, writer 1's append (based on v) must fail rather than store a key twice; a commit of another
    series since v does not stop it. Real delta-rs conflict detection, no mocks."""
    location = TableLocation(tmp_path)
    merge_bars(location, pl.concat([make_bars("AAPL", JULY, 10), make_bars("MSFT", JULY, 10)]))
    batch = conform_bars(make_bars("AAPL", JULY, 25).slice(5))
    stale = DeltaTable(location.bars)
    plan = plan_write(stale, batch)
    assert (plan.version, plan.new.height, plan.changed.height, plan.unchanged) == (0, 15, 0, 5)
    merge_bars(location, make_bars("MSFT", JULY + timedelta(minutes=10), 10))  # another series: no conflict
    merge_bars(location, make_bars("AAPL", JULY, 13).slice(10))  # the same series, past v's bars
    with pytest.raises(CommitFailedError, match="Concurrent transaction"):
        write_plan(stale, batch, plan)
    result = merge_bars(location, batch)  # what the retry does: plan again from the latest version
    assert (result.rows_inserted, result.rows_updated) == (12, 0)
    table = read_all(location)
    assert table.height == 45 and table.select(pl.struct("con_id", "ts").is_duplicated().any()).item() is False

    other = DeltaTable(location.bars)
    msft = conform_bars(make_bars("MSFT", JULY + timedelta(minutes=20), 5))
    msft_plan = plan_write(other, msft)
    merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=30), 5))  # AAPL commits in between
    assert write_plan(other, msft, msft_plan)[1:] == (5, 0, "append")


def test_the_collision_read_is_pruned_to_the_batch(tmp_path: Path) -> None:
    """`stored_in_range` returns only stored bars of the batch's series inside its months and time range."""
    location = TableLocation(tmp_path)
    merge_bars(location, pl.concat([make_bars("AAPL", JULY, 3000), make_bars("MSFT", JULY, 3000)]))
    batch = conform_bars(make_bars("AAPL", JULY + timedelta(minutes=2990), 20))
    stored = stored_in_range(DeltaTable(location.bars), batch)
    assert stored.height == 10 and stored["con_id"].unique().to_list() == [CON_IDS["AAPL"]]
    assert stored["ts"].min() == batch["ts"].min()


def test_watermarks_come_from_the_table(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    assert watermarks(location, bar_size="1 min", what_to_show="TRADES", use_rth=True, symbols=["AAPL"]) == {}
    merge_bars(location, pl.concat([make_bars("AAPL", JULY, 10), make_bars("MSFT", JULY, 5)]))
    marks = watermarks(location, bar_size="1 min", what_to_show="TRADES", use_rth=True,
                       symbols=["AAPL", "MSFT", "SPY"])
    assert marks == {"AAPL": JULY + timedelta(minutes=9), "MSFT": JULY + timedelta(minutes=4)}
    assert watermarks(location, bar_size="5 mins", what_to_show="TRADES", use_rth=True, symbols=["AAPL"]) == {}


def test_time_travel_returns_the_older_version(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    v0 = merge_bars(location, make_bars("SPY", JULY, 10)).version
    merge_bars(location, make_bars("SPY", JULY + timedelta(minutes=10), 10))
    lazy, version = scan_bars(location, ["SPY"], bar_size="1 min", start=JULY, end=JULY + timedelta(days=1),
                              version=v0)
    assert version == v0 and lazy.collect().height == 10
    _, latest = scan_bars(location, ["SPY"], bar_size="1 min", start=JULY, end=JULY + timedelta(days=1))
    assert latest == table_version(location) == v0 + 1
    assert read_all(location).height == 20
    assert bars_history(location)[0]["operation"] == "WRITE"  # bars past the stored ones: a plain append


def test_concurrent_merges_both_land(tmp_path: Path) -> None:
    """Two writers on the same partitions: the commit loser reloads and redoes its MERGE."""
    location = TableLocation(tmp_path)
    merge_bars(location, make_bars("AAPL", JULY, 5))
    batches = [make_bars(s, JULY + timedelta(minutes=5 * k), 200) for k in range(3) for s in ("AAPL", "MSFT")]
    results = []

    def write(frame: pl.DataFrame) -> None:
        results.append(merge_bars(location, frame))

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = read_all(location)
    assert table.height == 210 * 2  # each symbol: minutes 0..209
    assert table.select(pl.struct("con_id", "ts").is_duplicated().any()).item() is False
    assert len(results) == 6 and sum(r.rows_inserted for r in results) == 420 - 5


def test_schema_traps_are_refused_before_writing(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    naive = make_bars("AAPL", JULY, 3).with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(BarsSchemaError, match="timezone-aware"):
        merge_bars(location, naive)
    with pytest.raises(BarsSchemaError, match="missing column"):
        merge_bars(location, make_bars("AAPL", JULY, 3).drop("wap"))
    duplicated = pl.concat([make_bars("AAPL", JULY, 3), make_bars("AAPL", JULY, 1)])
    with pytest.raises(BarsSchemaError, match="share a key"):
        merge_bars(location, duplicated)
    assert table_version(location) is None  # nothing was written
    zoned = make_bars("AAPL", JULY, 3).with_columns(pl.col("ts").dt.convert_time_zone("America/New_York"))
    merge_bars(location, zoned)
    assert read_all(location)["ts"].to_list() == make_bars("AAPL", JULY, 3)["ts"].to_list()


def test_a_directory_that_is_not_a_table_is_never_written_into(tmp_path: Path) -> None:
    (tmp_path / "bars").mkdir()
    (tmp_path / "bars" / "notes.txt").write_text("my files")
    location = TableLocation(tmp_path)
    with pytest.raises(NotADeltaTableError, match="_delta_log"):
        merge_bars(location, make_bars("AAPL", JULY, 3))
    with pytest.raises(NotADeltaTableError):
        scan_bars(TableLocation(tmp_path / "empty"), ["AAPL"], bar_size="1 min", start=JULY, end=JULY)
    assert sorted(p.name for p in (tmp_path / "bars").iterdir()) == ["notes.txt"]


def test_quarantine_is_idempotent_per_run(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    bad = make_bars("AAPL", JULY, 4).with_columns(failed_check=pl.lit("high_ge_open_close"),
                                                  check_detail=pl.lit("high below open"))
    assert append_quarantine(location, bad) == 4
    assert append_quarantine(location, bad) == 0
    assert append_quarantine(location, bad.with_columns(flow_run_id=pl.lit("run-2"))) == 4
    assert read_quarantine(location).height == 8
    assert read_quarantine(location, "run-2")["failed_check"].unique().to_list() == ["high_ge_open_close"]
    assert read_quarantine(TableLocation(tmp_path / "none")).is_empty()


def file_statistics(path: str) -> list[set[str]]:
    """The columns each data file added by the table's latest commit keeps statistics on, as written in its log
    (delta-rs reports only the configured columns' once a table has the setting)."""
    table = DeltaTable(path)
    log = Path(path) / "_delta_log" / f"{table.version():020d}.json"
    adds = [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]
    return [set(json.loads(add["stats"])["minValues"]) | set(json.loads(add["stats"])["nullCount"]) for add in adds]


def test_the_quarantine_keeps_statistics_on_the_symbol_and_its_key_only(tmp_path: Path) -> None:
    """Readers and the insert's MERGE select files by the symbol and the key; statistics on the other columns
    (prices, detail text) only made every open and commit parse more. A table created before gets the setting
    from its next insert, and its new files follow it."""
    location = TableLocation(tmp_path)
    bad = make_bars("AAPL", JULY, 4).with_columns(failed_check=pl.lit("high_ge_open_close"),
                                                  check_detail=pl.lit("high below open"),
                                                  quarantined_at=pl.lit(JULY))
    wanted = {"symbol", *QUARANTINE_KEY}
    assert append_quarantine(location, bad) == 4
    assert file_statistics(location.quarantine) == [wanted]

    older = TableLocation(tmp_path / "older")
    write(older.quarantine, conform(bad, QUARANTINE_SCHEMA, what="test"), mode="error")  # as before the setting
    assert file_statistics(older.quarantine)[0] > wanted
    assert append_quarantine(older, bad.with_columns(flow_run_id=pl.lit("run-2"))) == 4
    assert DeltaTable(older.quarantine).metadata().configuration["delta.dataSkippingStatsColumns"] == \
        QUARANTINE_CONFIGURATION["delta.dataSkippingStatsColumns"]
    assert file_statistics(older.quarantine) == [wanted]
    assert read_quarantine(older).height == 8 and read_quarantine(older, "run-2").height == 4


def test_compaction_and_vacuum_keep_every_row(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    for k in range(6):
        merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=10 * k), 10))
    before = read_all(location)
    result = compact(location.bars)
    assert result.files_removed > result.files_added >= 1
    assert read_all(location).equals(before)
    assert vacuum(location.bars, dry_run=True) == []  # nothing is old enough: time travel still works
    assert read_all(location, version=0).height == 10
