"""`watermarks` reads the newest files first (issue 17): it must still give every symbol its true last bar, for
its own series only, however the bars are spread over months and files, and without opening old files."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from storage.bars_table import merge_bars, watermarks
from storage.errors import CorruptTableError
from storage.location import TableLocation
from storage.maintenance import compact
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS

CON_IDS = {"AAPL": 265598, "MSFT": 272093, "SPY": 756733, "QQQ": 320227571}
TRADES_RTH = {"bar_size": "1 min", "what_to_show": "TRADES", "use_rth": True}


def bars(symbol: str, start: datetime, count: int, *, bar_size: str = "1 min", what_to_show: str = "TRADES",
         use_rth: bool = True, step: timedelta = timedelta(minutes=1)) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": symbol, "con_id": CON_IDS[symbol], "exchange": "SMART", "primary_exchange": "NASDAQ",
            "currency": "USD", "bar_size": bar_size, "what_to_show": what_to_show, "use_rth": use_rth,
            "ts": [start + i * step for i in range(count)], "open": 100.0, "high": 101.0, "low": 99.0,
            "close": 100.5, "volume": 1000.0, "wap": 100.0, "bar_count": 10,
            "ingested_at": datetime(2024, 8, 1, tzinfo=UTC), "flow_run_id": "run-1", "request": "test",
        },
        schema={**BAR_COLUMNS, **LINEAGE_COLUMNS},
    )


def full_scan(location: TableLocation, *, bar_size: str, what_to_show: str, use_rth: bool) -> dict[str, datetime]:
    """The oracle: one group-by over every row of the table."""
    last = (pl.scan_delta(location.bars)
            .filter(pl.col("bar_size") == bar_size, pl.col("what_to_show") == what_to_show,
                    pl.col("use_rth") == use_rth)
            .group_by("symbol").agg(pl.col("ts").max()).collect())
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


def at(month: int, day: int, year: int = 2024) -> datetime:
    return datetime(year, month, day, 14, 30, tzinfo=UTC)


def test_each_series_over_many_months_and_one_ending_in_an_old_month(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    for month in range(1, 13):  # AAPL: one commit a month through 2024
        merge_bars(location, bars("AAPL", at(month, 3), 20))
    merge_bars(location, bars("MSFT", at(2, 5, 2023), 30))  # MSFT: last bar 14 months before the newest
    merge_bars(location, bars("SPY", at(12, 3), 10, use_rth=False))  # ETH bars newer than SPY's RTH ones
    merge_bars(location, bars("SPY", at(6, 3), 10))
    merge_bars(location, bars("QQQ", at(12, 3), 15, what_to_show="MIDPOINT"))  # only MIDPOINT

    marks = watermarks(location, **TRADES_RTH, symbols=["AAPL", "MSFT", "SPY", "QQQ", "IBM"])

    assert marks == {"AAPL": at(12, 3) + timedelta(minutes=19), "MSFT": at(2, 5, 2023) + timedelta(minutes=29),
                     "SPY": at(6, 3) + timedelta(minutes=9)}
    assert marks == {k: v for k, v in full_scan(location, **TRADES_RTH).items() if k != "IBM"}
    assert watermarks(location, bar_size="1 min", what_to_show="TRADES", use_rth=False, symbols=["SPY", "AAPL"]) \
        == {"SPY": at(12, 3) + timedelta(minutes=9)}
    assert watermarks(location, bar_size="1 min", what_to_show="MIDPOINT", use_rth=True, symbols=["QQQ"]) \
        == {"QQQ": at(12, 3) + timedelta(minutes=14)}
    assert watermarks(location, bar_size="5 mins", what_to_show="TRADES", use_rth=True, symbols=["AAPL"]) == {}
    assert watermarks(location, **TRADES_RTH, symbols=[]) == {}


def test_a_symbol_seen_in_a_new_file_with_an_old_bar_is_not_settled_by_it(tmp_path: Path) -> None:
    """The newest file holds MSFT's bar of March 1 (a late backfill next to AAPL's March 29 bars); MSFT's true last
    bar, March 20, is in an older file that the first window does not read: it must still be found."""
    location = TableLocation(tmp_path)
    merge_bars(location, bars("MSFT", at(3, 20), 5))
    merge_bars(location, pl.concat([bars("AAPL", at(3, 29), 5), bars("MSFT", at(3, 1), 5)]))

    assert watermarks(location, **TRADES_RTH, symbols=["AAPL", "MSFT"]) == {
        "AAPL": at(3, 29) + timedelta(minutes=4), "MSFT": at(3, 20) + timedelta(minutes=4)}


def test_symbols_ending_recently_never_open_the_old_files(tmp_path: Path) -> None:
    """The point of issue 17: a nightly's watermarks cost its newest files. With every old month's data files
    deleted from disk (the log still lists them), the recent symbols' watermarks are still read; a symbol whose
    bars are only in those months then needs them, and the missing file is an error naming the table
    (`CorruptTableError`), not a silent answer."""
    location = TableLocation(tmp_path)
    for month in range(1, 7):
        merge_bars(location, pl.concat([bars("AAPL", at(month, 3), 10), bars("MSFT", at(month, 4), 10)]))
    merge_bars(location, bars("SPY", at(2, 5), 10))
    old_files = [path for path in Path(location.bars).glob("month=2024-0[1-5]/*.parquet")]
    assert old_files
    for path in old_files:
        path.unlink()

    assert watermarks(location, **TRADES_RTH, symbols=["AAPL", "MSFT"]) == {
        "AAPL": at(6, 3) + timedelta(minutes=9), "MSFT": at(6, 4) + timedelta(minutes=9)}
    with pytest.raises(CorruptTableError, match="No such file"):
        watermarks(location, **TRADES_RTH, symbols=["SPY"])


def test_random_tables_agree_with_a_full_scan(tmp_path: Path) -> None:
    """Random commits of random series over two years, before and after compaction (files holding many series
    and months' worth of bars): every series' watermarks equal the full-scan oracle's."""
    rng = random.Random(17)
    location = TableLocation(tmp_path)
    origin = datetime(2023, 1, 2, 14, 30, tzinfo=UTC)
    for _ in range(40):
        batch = [bars(symbol, origin + timedelta(hours=rng.randrange(0, 2 * 365 * 24)), rng.randrange(1, 30),
                      bar_size=rng.choice(["1 min", "5 mins"]), what_to_show=rng.choice(["TRADES", "MIDPOINT"]),
                      use_rth=rng.choice([True, False]))
                 for symbol in rng.sample(sorted(CON_IDS), rng.randrange(1, 4))]
        frame = pl.concat(batch).unique(subset=["con_id", "bar_size", "what_to_show", "use_rth", "ts"])
        merge_bars(location, frame)
    series = [{"bar_size": b, "what_to_show": w, "use_rth": r}
              for b in ("1 min", "5 mins") for w in ("TRADES", "MIDPOINT") for r in (True, False)]

    for layout in ("as written", "compacted"):
        if layout == "compacted":
            assert compact(location.bars).files_removed > 0
            assert len(DeltaTable(location.bars).file_uris()) < 40
        for one in series:
            assert watermarks(location, **one, symbols=sorted(CON_IDS)) == full_scan(location, **one), (layout, one)
