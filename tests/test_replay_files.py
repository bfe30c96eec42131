"""Replay files as users write them (pandas CSVs without a trade count, daily rows as midnight datetimes) are
ingested end to end through ib_async: stored, none quarantined, one bar per session date. Both used to end in
0 rows stored and an `ok` run."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import polars as pl

from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.replay_bars import ReplayBars
from storage.bars_table import scan_bars
from storage.location import TableLocation

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
SESSIONS = pd.bdate_range("2024-07-01", "2024-07-12").drop(pd.Timestamp("2024-07-04"))  # Independence Day


def _pandas_daily_csv(path: Path) -> Path:
    """What `DataFrame.to_csv` writes for daily bars indexed by date: midnight datetimes, no count column."""
    frame = pd.DataFrame({"open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 1_000_000.0},
                         index=pd.DatetimeIndex(SESSIONS, name="datetime"))
    frame.to_csv(path)
    return path


def _ingest(sim: EmbeddedSimulator, location: TableLocation, bar_size: str, start: datetime) -> object:
    request = IngestRequest(symbols=("AAPL",), bar_size=bar_size, start=start, end=NOW, quality_engine="polars")
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=61, connect_timeout=2.0)
    budget = PacingBudget(location.root / "pacing.json", time_scale=0.01)
    return asyncio.run(ingest_async(request, location, settings, budget=budget)).symbols[0]  # type: ignore[attr-defined]


def test_midnight_datetimes_are_daily_bars(tmp_path: Path) -> None:
    replay = ReplayBars(_pandas_daily_csv(tmp_path / "daily.csv"))
    assert replay.daily
    bars = replay.bars("AAPL", "1 day", "TRADES", True, datetime(2024, 7, 1, tzinfo=UTC), NOW)
    assert bars.height == len(SESSIONS) and (bars["count"] == 0).all()


def test_a_pandas_daily_csv_without_counts_is_stored_whole(tmp_path: Path) -> None:
    source = ReplayBars(_pandas_daily_csv(tmp_path / "daily.csv"))
    location = TableLocation(tmp_path / "data")
    with EmbeddedSimulator(clock=lambda: NOW, bar_source=source) as sim:
        report = _ingest(sim, location, "1 day", datetime(2024, 7, 1, tzinfo=UTC))
    assert report.status == "ok" and report.rows_quarantined == 0, report  # type: ignore[attr-defined]
    lazy, _ = scan_bars(location, ["AAPL"], bar_size="1 day", start=datetime(2024, 6, 30, tzinfo=UTC), end=NOW)
    days = lazy.select(pl.col("ts").dt.date()).collect()["ts"].to_list()
    assert days == [d.date() for d in SESSIONS]


def test_an_intraday_file_at_midnight_and_later_stays_intraday(tmp_path: Path) -> None:
    """One midnight among other times is an intraday (e.g. 24-hour) file, not daily bars."""
    path = tmp_path / "minutes.parquet"
    ts = [datetime(2024, 7, 8, 0, 0), datetime(2024, 7, 8, 0, 1), datetime(2024, 7, 8, 13, 30)]
    pl.DataFrame({"ts": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}).write_parquet(path)
    replay = ReplayBars(path)
    assert not replay.daily and replay.native.total_seconds() == 60
    assert date(2024, 7, 8) in {t.date() for t in replay.frame["ts"].to_list()}
