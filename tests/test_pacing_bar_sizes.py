"""Ingestion paced by the rules IB applies to the bar size, end to end: the real ib_async client against the
simulator, real Delta tables. One-minute bars are not held to the small-bar limits (IB lifts them); a gateway that
paces every size is met by turning strict after its first 162, or from the start with IBKR_PACING_ALL_BAR_SIZES."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ibkr_flows.ib.pacing_rules import LONG_LIMIT
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import ALL_BAR_SIZES_ENV, PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.bars import SyntheticBars
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import scan_bars
from storage.location import TableLocation

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
START = datetime(2024, 6, 6, tzinfo=UTC)  # 25 sessions: 3 symbols make 75 requests, more than 60 per 10 minutes
SYMBOLS = ("AAPL", "MSFT", "SPY")
FAST = RetryPolicy(max_attempts=6, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=10)


def _ingest(sim: EmbeddedSimulator, location: TableLocation, budget: PacingBudget) -> IngestReport:
    request = IngestRequest(symbols=SYMBOLS, start=START, end=NOW, quality_engine="polars")
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=60, connect_timeout=2.0)
    return asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))


def _assert_complete(location: TableLocation) -> None:
    """Every bar the simulator has for the range is stored, once."""
    lazy, _ = scan_bars(location, list(SYMBOLS), bar_size="1 min", start=START, end=NOW)
    table = lazy.select("symbol", "ts").collect()
    source = SyntheticBars()
    for symbol in SYMBOLS:
        expected = source.bars(symbol, "1 min", "TRADES", True, START, NOW)["ts"].to_list()
        assert table.filter(symbol=symbol).sort("ts")["ts"].to_list() == expected


def test_one_minute_bars_are_not_held_to_sixty_per_ten_minutes(tmp_path: Path) -> None:
    """IB's real windows (time scale 1) against a simulator pacing as IB does: 75 one-minute requests, more than
    the small-bar limit of 60 per 10 minutes, go out without one wait and without one violation."""
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(enforce_pacing=True)
        budget = PacingBudget(tmp_path / "ledger.json")
        report = _ingest(sim, TableLocation(tmp_path), budget)
        snap = sim.snapshot()
    assert not report.failed
    assert snap["requests"]["reqHistoricalData"] == 75 > LONG_LIMIT
    assert snap["pacing_violations"] == 0
    assert budget.waited_s == 0.0 and not budget.all_bar_sizes
    _assert_complete(TableLocation(tmp_path))


def test_a_gateway_pacing_every_size_turns_the_budget_strict(tmp_path: Path) -> None:
    """The same run against a gateway that paces one-minute bars too (windows x0.01): the request past its limit
    is refused with 162, the budget applies the hard limits to every size from then on, and nothing is lost."""
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=True, time_scale=0.01)
        budget = PacingBudget(tmp_path / "ledger.json", time_scale=0.01)
        report = _ingest(sim, TableLocation(tmp_path), budget)
        snap = sim.snapshot()
    assert not report.failed
    assert snap["pacing_violations"] >= 1
    assert budget.all_bar_sizes and budget.waited_s > 0
    _assert_complete(TableLocation(tmp_path))


def test_strict_from_the_environment_meets_a_strict_gateway_without_violations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALL_BAR_SIZES_ENV, "1")
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=True, time_scale=0.01)
        report = _ingest(sim, TableLocation(tmp_path), PacingBudget(tmp_path / "ledger.json", time_scale=0.01))
        snap = sim.snapshot()
    assert not report.failed
    assert snap["pacing_violations"] == 0 and snap["pacing_violations_by_rule"] == {}
    _assert_complete(TableLocation(tmp_path))
