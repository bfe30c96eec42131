"""Repairing a table after a split (issue 16): real ingestion from the simulator before and after AAPL's 2020 split,
detection on the overlap, the re-scale in one Delta commit, the corporate_actions row, and time travel."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ibkr_flows.ingest.adjustments import AdjustmentEvent, compare_overlap, split_like_jumps
from ibkr_flows.ingest.engine import ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_rescale import SeriesFilter, rescale_history
from storage.bars_table import bars_history, merge_bars, scan_bars, table_version
from storage.corporate_actions_table import ActionKind, read_actions
from storage.location import TableLocation
from tests.test_storage import CON_IDS, make_bars

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=10)
START = datetime(2020, 8, 3, tzinfo=UTC)
SPLIT = date(2020, 8, 31)


def ingest(sim: EmbeddedSimulator, location: TableLocation, *, as_of: date, end: datetime) -> None:
    sim.set_as_of(as_of)
    request = IngestRequest(symbols=("AAPL",), bar_size="1 day", start=START, end=end, quality_engine="polars")
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=71, connect_timeout=2.0)
    budget = PacingBudget(location.root / "pacing.json", time_scale=0.01)
    report = asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))
    assert report.symbols[0].status == "ok", report.symbols[0]


def daily_bars(location: TableLocation, version: int | None = None) -> pl.DataFrame:
    lazy, _ = scan_bars(location, ["AAPL"], bar_size="1 day", start=START, end=datetime(2021, 1, 1, tzinfo=UTC),
                        version=version)
    return lazy.sort("ts").collect()


def test_a_split_between_two_ingestions_is_detected_and_repaired_in_one_commit(sim: EmbeddedSimulator,
                                                                               tmp_path: Path) -> None:
    stored_at = TableLocation(tmp_path / "stored")
    ingest(sim, stored_at, as_of=date(2020, 8, 28), end=datetime(2020, 8, 29, tzinfo=UTC))
    refetched_at = TableLocation(tmp_path / "refetched")  # the overlap fetched again once the split has happened
    ingest(sim, refetched_at, as_of=date(2020, 9, 18), end=datetime(2020, 9, 19, tzinfo=UTC))
    stored, fresh = daily_bars(stored_at), daily_bars(refetched_at)

    verdict = compare_overlap(stored, fresh, bar_size="1 day", dividend_adjusted=False)
    assert isinstance(verdict, AdjustmentEvent)
    assert (verdict.kind, verdict.factor, verdict.effective_date) == (ActionKind.SPLIT, 4.0, SPLIT)
    assert verdict.bars_compared == stored.height == 20

    old_version = table_version(stored_at)
    result = rescale_history(stored_at, symbol="AAPL", con_id=int(stored["con_id"][0]), kind=verdict.kind,
                             factor=verdict.factor, effective=verdict.effective_date)  # type: ignore[arg-type]
    assert result.rows_rescaled == 20 and not result.already_applied
    assert table_version(stored_at) == old_version + 1  # type: ignore[operator]
    assert bars_history(stored_at, 1)[0]["ibkr.operation"] == "rescale"
    repaired = daily_bars(stored_at).select("ts", "open", "high", "low", "close", "volume")
    expected = fresh.join(repaired.select("ts"), on="ts").select(repaired.columns)
    assert repaired.select("ts").equals(expected.select("ts"))
    for column in ("open", "high", "low", "close", "volume"):
        assert (repaired[column] - expected[column]).abs().max() < 1e-6  # type: ignore[operator]
    assert daily_bars(stored_at, version=old_version).equals(stored)  # the old scale, by time travel

    actions = read_actions(stored_at).row(0, named=True)
    assert (actions["kind"], actions["factor"], actions["effective_date"]) == ("split", 4.0, SPLIT)
    assert (actions["bars_version_before"], actions["bars_version_after"]) == (old_version, old_version + 1)  # type: ignore[operator]

    ingest(sim, stored_at, as_of=date(2020, 9, 18), end=datetime(2020, 9, 19, tzinfo=UTC))  # the tail, new scale
    whole = daily_bars(stored_at)
    assert whole.height == fresh.height and split_like_jumps(whole, bar_size="1 day") == []
    assert split_like_jumps(pl.concat([stored, fresh.filter(pl.col("ts") >= datetime(2020, 8, 31, tzinfo=UTC))]),
                            bar_size="1 day")[0].ts == datetime(2020, 8, 31, tzinfo=UTC)


def test_rescale_touches_only_the_chosen_series_before_the_date_and_runs_once(tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    monday = datetime(2024, 6, 10, 13, 30, tzinfo=UTC)  # NVDA's 10:1; AAPL's rows stand in for any instrument
    merge_bars(location, make_bars("AAPL", monday - timedelta(days=3), 5, price=1200.0))  # Friday, old scale
    merge_bars(location, make_bars("AAPL", monday, 5, price=120.0))
    merge_bars(location, make_bars("MSFT", monday - timedelta(days=3), 5, price=400.0))
    quotes = make_bars("AAPL", monday - timedelta(days=3), 5, price=1200.0).with_columns(
        what_to_show=pl.lit("MIDPOINT"), volume=pl.lit(-1.0), wap=pl.lit(-1.0))
    merge_bars(location, quotes)
    version = table_version(location)

    def rescale() -> int:
        return rescale_history(location, symbol="AAPL", con_id=CON_IDS["AAPL"], kind=ActionKind.SPLIT, factor=10.0,
                               effective=date(2024, 6, 10), series=SeriesFilter(what_to_show=["TRADES"])
                               ).rows_rescaled

    assert rescale() == 5
    table = pl.read_delta(str(location.bars)).sort("symbol", "what_to_show", "ts")
    aapl = table.filter(symbol="AAPL", what_to_show="TRADES")
    assert aapl["open"].to_list()[:5] == pytest.approx([120.0 + i * 0.001 for i in range(5)])
    assert aapl["volume"].to_list() == [10_000.0] * 5 + [1000.0] * 5
    assert table.filter(what_to_show="MIDPOINT")["open"][0] == 1200.0  # not chosen
    assert table.filter(symbol="MSFT")["open"][0] == 400.0
    assert rescale() == 0 and table_version(location) == version + 1  # type: ignore[operator]
    assert read_actions(location).height == 1
