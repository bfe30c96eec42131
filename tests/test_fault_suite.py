"""Reliability under seeded chaos: ingestion of several symbols while the simulator injects faults at random
moments; after each scenario, rerun until complete and compare with a fault-free run of the same range.

Promise per scenario: rows lost = 0, duplicates = 0, quarantined rows = exactly the injected bad rows. The suite
prints its summary table (faults injected / survived / rows lost / duplicates); the README quotes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ibkr_flows.ib.historical import bar_step
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.chaos import Chaos, ChaosKind
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import scan_bars
from storage.location import TableLocation
from storage.quarantine_table import read_quarantine

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
START = datetime(2024, 5, 1, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "SPY")
KEY = ["symbol", "ts"]
COMPARED = ["symbol", "ts", "open", "high", "low", "close", "volume", "wap", "bar_count"]
POLICY = RetryPolicy(max_attempts=6, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2,
                     reconnect_deadline_s=15)
BAD_BARS = {"high-below-low": 97, "negative-volume": 89, "duplicate-ts": 101, "misaligned-ts": 83}
ALL = tuple(ChaosKind)


@dataclass(frozen=True)
class Scenario:
    name: str
    kinds: tuple[ChaosKind, ...]
    count: int
    seed: int
    bad_bars: bool = False


SCENARIOS = [
    Scenario("connection drops", (ChaosKind.DROP,), 8, 1),
    Scenario("1100 then 1102", (ChaosKind.CONNECTIVITY,), 6, 2),
    Scenario("nightly restarts", (ChaosKind.RESTART,), 5, 3),
    Scenario("pacing 162", (ChaosKind.PACING,), 8, 4),
    Scenario("slow answers", (ChaosKind.LATENCY,), 5, 5),
    Scenario("client id in use on reconnect", (ChaosKind.BUSY_CLIENT_ID,), 5, 6),
    Scenario("everything at once", ALL, 12, 7),
    Scenario("malformed and duplicate bars + faults", ALL, 6, 8, bad_bars=True),
]
SUMMARY: list[dict[str, object]] = []


def _run(sim: EmbeddedSimulator, location: TableLocation, client_id: int) -> IngestReport:
    request = IngestRequest(symbols=SYMBOLS, start=START, end=NOW, quality_engine="polars", request_timeout_s=1.0)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
    budget = PacingBudget(location.root / "pacing.json", time_scale=0.001)
    return asyncio.run(ingest_async(request, location, settings, flow_run_id=f"suite-{client_id}", budget=budget,
                                    policy=POLICY))


def _table(location: TableLocation) -> pl.DataFrame:
    lazy, _ = scan_bars(location, list(SYMBOLS), bar_size="1 min", start=START, end=NOW)
    return lazy.select(COMPARED).sort(KEY).collect()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    location = TableLocation(tmp_path_factory.mktemp("baseline"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        report = _run(sim, location, 200)
    assert not report.failed
    return _table(location)


@pytest.fixture
def sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as running:
        running.update_faults(latency_seconds=0.03)  # answers take a little time, so faults land mid-run
        yield running


def _injected_bad_keys(sim: EmbeddedSimulator) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows the feed corrupted, keyed as received; the original bars they replaced, keyed as stored)."""
    records = pl.DataFrame(sim.snapshot()["injected_bad_bars"], schema={
        "symbol": pl.String, "bar_size": pl.String, "what_to_show": pl.String, "use_rth": pl.Boolean,
        "ts": pl.String, "kind": pl.String})
    received = records.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC", time_unit="us")) \
        .select("symbol", "ts", "kind").unique()
    half_step = bar_step("1 min") / 2
    replaced = received.filter(pl.col("kind") != "duplicate-ts").with_columns(
        pl.when(pl.col("kind") == "misaligned-ts").then(pl.col("ts") - half_step).otherwise("ts").alias("ts"))
    return received, replaced.select(KEY).unique()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_ingestion_survives(scenario: Scenario, sim: EmbeddedSimulator, baseline: pl.DataFrame,
                            tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    if scenario.bad_bars:
        sim.update_faults(bad_bars=BAD_BARS)
    with Chaos(sim, seed=scenario.seed, kinds=scenario.kinds, count=scenario.count) as chaos:
        reports = [_run(sim, location, 300)]
    for attempt in range(4):  # rerun until complete, as the nightly schedule would
        if not reports[-1].failed:
            break
        reports.append(_run(sim, location, 310 + attempt))
    assert not reports[-1].failed, [s.error for s in reports[-1].failed]

    table = _table(location)
    received, replaced = _injected_bad_keys(sim)
    quarantine = read_quarantine(location).select("symbol", "ts").unique()
    lost = baseline.select(KEY).join(table.select(KEY), on=KEY, how="anti").join(replaced, on=KEY, how="anti")
    duplicates = table.height - table.select(KEY).unique().height
    changed = table.join(baseline, on=KEY, how="inner", suffix="_clean").filter(
        pl.any_horizontal(pl.col(c) != pl.col(f"{c}_clean") for c in COMPARED[2:]))
    SUMMARY.append({"scenario": scenario.name, "faults injected": len(chaos.injected),
                    "survived": not reports[-1].failed, "reruns": len(reports) - 1, "rows lost": lost.height,
                    "duplicates": duplicates, "bad rows injected": received.height,
                    "quarantined": quarantine.height})
    assert lost.height == 0 and duplicates == 0 and changed.height == 0
    assert quarantine.sort(KEY).equals(received.select(KEY).unique().sort(KEY))
    if scenario.bad_bars:
        assert received.height > 0
    else:
        assert table.equals(baseline)


def test_suite_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """At least 50 faults injected across the suite, all survived; prints the table the README quotes."""
    assert len(SUMMARY) == len(SCENARIOS), "run the whole module: the summary needs every scenario"
    frame = pl.DataFrame(SUMMARY)
    with capsys.disabled(), pl.Config(tbl_rows=20, tbl_cols=10, tbl_width_chars=160, tbl_hide_dataframe_shape=True,
                                       tbl_hide_column_data_types=True, tbl_formatting="MARKDOWN"):
        print(f"\nfault suite ({datetime.now(UTC) - timedelta(0):%Y-%m-%d}):\n{frame}\n"
              f"total: {frame['faults injected'].sum()} faults injected, "
              f"{frame['survived'].sum()}/{frame.height} scenarios complete, {frame['rows lost'].sum()} rows lost, "
              f"{frame['duplicates'].sum()} duplicates")
    assert frame["faults injected"].sum() >= 50
    assert frame["survived"].all() and frame["rows lost"].sum() == 0 and frame["duplicates"].sum() == 0
