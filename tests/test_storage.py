"""The Delta tables, real ones in a temp dir: MERGE idempotency, revisions, races, schema traps, time travel."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storage.bars_table import bars_history, merge_bars, scan_bars, table_version, watermarks
from storage.errors import BarsSchemaError, NotADeltaTableError
from storage.location import TableLocation
from storage.maintenance import compact, vacuum
from storage.quarantine_table import append_quarantine, read_quarantine
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS

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
    assert bars_history(location)[0]["operation"] == "MERGE"


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
