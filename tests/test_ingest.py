"""Ingestion end to end without Prefect: the real ib_async client against the simulator, real Delta tables,
real quality checks. Each test says which promise of the ingestion it holds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from ib_async import IB, Stock

from ibkr_flows.ib.instruments import InstrumentId
from ibkr_flows.ingest.engine import IngestReport, SymbolReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.ingest.stages import SessionGap
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import scan_bars, table_version
from storage.location import TableLocation
from storage.quarantine_table import read_quarantine

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)  # Friday evening, after the close
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=10)
BAR_COLUMNS_COMPARED = ["symbol", "con_id", "bar_size", "what_to_show", "use_rth", "ts", "open", "high", "low",
                        "close", "volume", "wap", "bar_count"]


@pytest.fixture
def tws() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        yield sim


def run(sim: EmbeddedSimulator, location: TableLocation, symbols: tuple[str, ...], *, start: datetime,
        end: datetime = NOW, client_id: int = 50, bar_size: str = "1 min", budget_scale: float = 0.01,
        ledger: Path | None = None, policy: RetryPolicy = FAST, engine: str = "polars",
        request_timeout_s: float = 5.0, all_bar_sizes: bool = False) -> IngestReport:
    request = IngestRequest(symbols=symbols, bar_size=bar_size, start=start, end=end, quality_engine=engine,
                            request_timeout_s=request_timeout_s)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
    budget = PacingBudget(ledger or location.root / "pacing.json", time_scale=budget_scale,
                          all_bar_sizes=all_bar_sizes)
    return asyncio.run(ingest_async(request, location, settings, flow_run_id=f"test-{client_id}", budget=budget,
                                    policy=policy))


def stored(location: TableLocation, symbols: list[str], start: datetime, end: datetime = NOW,
           version: int | None = None) -> pl.DataFrame:
    lazy, _ = scan_bars(location, symbols, bar_size="1 min", start=start, end=end, version=version)
    return lazy.select(BAR_COLUMNS_COMPARED).sort("symbol", "ts").collect()


def test_two_runs_no_duplicates_and_the_second_fetches_only_the_tail(tws: EmbeddedSimulator, tmp_path: Path
                                                                       ) -> None:
    location = TableLocation(tmp_path)
    start = datetime(2024, 7, 8, tzinfo=UTC)
    first = run(tws, location, ("AAPL", "MSFT"), start=start)
    assert [s.status for s in first.symbols] == ["ok", "ok"]
    assert [s.rows_inserted for s in first.symbols] == [390 * 5, 390 * 5]  # 2024-07-08..12
    table = stored(location, ["AAPL", "MSFT"], start)
    assert table.height == 2 * first.symbols[0].rows_inserted
    assert table.select(pl.struct("symbol", "ts").is_unique().all()).item()

    second = run(tws, location, ("AAPL", "MSFT"), start=start)
    assert all(s.rows_inserted == 0 for s in second.symbols)
    assert all(s.chunks_fetched == 1 for s in second.symbols)  # only the last session, for the overlap
    assert stored(location, ["AAPL", "MSFT"], start).equals(table)


def test_holidays_and_half_days_give_no_false_gaps(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    report = run(tws, TableLocation(tmp_path), ("SPY",), start=datetime(2024, 7, 1, tzinfo=UTC),
                 end=datetime(2024, 7, 9, tzinfo=UTC), engine="great_expectations")
    spy = report.symbols[0]
    assert spy.status == "ok", spy.error
    assert spy.chunks_fetched == 5  # 07-01, 07-02, 07-03 (half day), 07-05, 07-08; no request for 07-04
    assert spy.rows_inserted == 390 * 4 + 210
    assert spy.gap_bars == 0 and spy.rows_quarantined == 0


def test_drops_mid_run_end_with_the_same_table_as_an_uninterrupted_run(tws: EmbeddedSimulator, tmp_path: Path
                                                                        ) -> None:
    start = datetime(2024, 7, 1, tzinfo=UTC)
    clean = TableLocation(tmp_path / "clean")
    run(tws, clean, ("AAPL", "MSFT"), start=start)

    tws.update_faults(drop_after_messages=9)  # every connection dies after 9 requests, mid-backfill
    dropped = TableLocation(tmp_path / "dropped")
    report = run(tws, dropped, ("AAPL", "MSFT"), start=start, client_id=60)
    assert report.reconnects > 0
    if report.failed:  # retries may run out mid-way: a rerun must complete it
        tws.clear_faults()
        report = run(tws, dropped, ("AAPL", "MSFT"), start=start, client_id=61)
    assert not report.failed
    assert stored(dropped, ["AAPL", "MSFT"], start).equals(stored(clean, ["AAPL", "MSFT"], start))


def test_a_run_killed_by_tws_going_away_resumes_on_rerun(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    start = datetime(2024, 6, 24, tzinfo=UTC)
    location = TableLocation(tmp_path)
    tws.update_faults(latency_seconds=0.05)
    short = RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1, pacing_delay_s=0.1,
                        reconnect_deadline_s=0.5)
    stopper = threading.Timer(0.6, lambda: tws.update_faults(connect="not-listening"))
    stopper.start()
    partial = run(tws, location, ("AAPL",), start=start, policy=short)
    stopper.join()
    tws.clear_faults()
    done = run(tws, location, ("AAPL",), start=start, client_id=51)
    assert not done.failed
    table = stored(location, ["AAPL"], start)
    assert table.height == 390 * 14 - 180  # 14 sessions 06-24..07-12 (not 07-04), 07-03 a half day
    assert table["ts"].is_unique().all()
    assert partial.symbols[0].rows_inserted + done.symbols[0].rows_inserted == table.height


def test_zero_pacing_violations_on_a_time_scaled_backfill(tmp_path: Path) -> None:
    """A gateway that paces every bar size (IBKR_PACING_ALL_BAR_SIZES): the simulator enforces IB's hard limits on
    1-minute bars with windows shrunk 100x; the client budget uses the same scale and rules, so three symbols x 25
    sessions (75 requests > 60 per '10 minutes') must pass without one violation."""
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        sim.update_faults(enforce_pacing=True, pacing_all_bar_sizes=True, time_scale=0.01)
        report = run(sim, TableLocation(tmp_path), ("AAPL", "MSFT", "SPY"), start=datetime(2024, 6, 6, tzinfo=UTC),
                     all_bar_sizes=True)
        snap = sim.snapshot()
    assert not report.failed
    assert snap["pacing_violations_by_rule"] == {}
    assert snap["requests"]["reqHistoricalData"] == 75
    assert snap["pacing_violations"] == 0
    assert report.pacing_wait_s > 0


def test_a_pacing_violation_is_backed_off_and_retried(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """Another program on the same TWS has used up the 60-per-10-minutes budget (scaled to 3 s): our budget sees
    nothing of it, TWS answers 162, the run backs off and retries, and nothing is lost."""
    tws.update_faults(enforce_pacing=True, pacing_all_bar_sizes=True, time_scale=0.005)
    other = IB()
    other.connect(tws.host, tws.port, clientId=99, readonly=True, timeout=5)
    for i in range(60):
        contract = Stock(conId=(265598, 272093, 756733)[i % 3], exchange="SMART")
        other.reqHistoricalData(contract, f"20240708-{14 + i // 60:02d}:{i % 60:02d}:00", "60 S", "1 min",
                                "TRADES", True)
    other.disconnect()
    assert tws.snapshot()["pacing_violations"] == 0
    patient = RetryPolicy(max_attempts=8, base_delay_s=0.05, max_delay_s=2.0, pacing_delay_s=0.5,
                          reconnect_deadline_s=10)
    report = run(tws, TableLocation(tmp_path), ("AAPL",), start=datetime(2024, 7, 8, tzinfo=UTC),
                 budget_scale=0.0001, policy=patient)
    assert tws.snapshot()["pacing_violations"] > 0
    assert report.symbols[0].status == "ok" and report.symbols[0].rows_inserted == 390 * 5


def test_bad_bars_land_in_quarantine_with_the_reason(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    tws.update_faults(bad_bars={"high-below-low": 97, "negative-volume": 89, "duplicate-ts": 101,
                                "misaligned-ts": 83})
    location = TableLocation(tmp_path)
    report = run(tws, location, ("AAPL",), start=datetime(2024, 7, 8, tzinfo=UTC), engine="great_expectations")
    injected = tws.snapshot()["injected_bad_bars"]
    quarantine = read_quarantine(location)
    assert report.symbols[0].rows_quarantined == len(injected) == quarantine.height
    expected = sorted((datetime.fromisoformat(i["ts"]), i["kind"]) for i in injected)
    got = sorted(zip(quarantine["ts"].to_list(), quarantine["failed_check"].to_list(), strict=True))
    assert [ts for ts, _ in got] == [ts for ts, _ in expected]
    check_at = dict(got)
    checks_by_kind: dict[str, set[str]] = {}
    for ts, kind in expected:
        checks_by_kind.setdefault(kind, set()).add(check_at[ts])
    assert len(checks_by_kind) == 4 and all(len(checks) == 1 for checks in checks_by_kind.values()), checks_by_kind
    assert len({next(iter(checks)) for checks in checks_by_kind.values()}) == 4  # one distinct reason per fault
    table = stored(location, ["AAPL"], datetime(2024, 7, 8, tzinfo=UTC))
    assert table["ts"].is_unique().all()
    assert table.height == 390 * 5 - sum(1 for i in injected if i["kind"] != "duplicate-ts")


def test_unknown_symbol_fails_alone(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    report = run(tws, TableLocation(tmp_path), ("AAPL", "ZZZZ"), start=datetime(2024, 7, 11, tzinfo=UTC))
    by_symbol = {s.symbol: s for s in report.symbols}
    assert by_symbol["AAPL"].status == "ok" and by_symbol["AAPL"].rows_inserted == 780
    assert by_symbol["ZZZZ"].status == "failed" and by_symbol["ZZZZ"].error_type == "UnknownSymbolError"
    assert "error 200" in by_symbol["ZZZZ"].error


def test_no_permissions_fails_that_symbol_with_a_clear_error(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    tws.update_faults(no_permission_symbols={"MSFT"})
    report = run(tws, TableLocation(tmp_path), ("MSFT", "SPY"), start=datetime(2024, 7, 11, tzinfo=UTC))
    by_symbol = {s.symbol: s for s in report.symbols}
    assert by_symbol["MSFT"].error_type == "NoPermissionsError"
    assert "No market data permissions" in by_symbol["MSFT"].error
    assert by_symbol["SPY"].status == "ok"


def test_silence_is_not_mistaken_for_no_data(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """ib_async returns [] on its timeout; the ingestion must call that a failure, not an empty range."""
    tws.update_faults(latency_seconds=2.0)
    report = run(tws, TableLocation(tmp_path), ("AAPL",), start=datetime(2024, 7, 12, tzinfo=UTC),
                 request_timeout_s=0.3, policy=RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1,
                                                           pacing_delay_s=0.1, reconnect_deadline_s=1))
    aapl = report.symbols[0]
    assert aapl.status == "failed" and aapl.error_type == "RetriesExhaustedError"
    assert aapl.chunks_empty == 0 and aapl.rows_inserted == 0


def test_no_data_in_every_range_fails_the_symbol_never_ok(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """162 'no data' is an empty range, not an error: every range is still requested. But a symbol whose every
    range came back empty stored nothing where bars were expected, which is never `ok`."""
    tws.update_faults(no_data_symbols={"IBM"})
    report = run(tws, TableLocation(tmp_path), ("IBM", "SPY"), start=datetime(2024, 7, 11, tzinfo=UTC))
    ibm, spy = report.symbols
    assert ibm.chunks_empty == ibm.chunks_fetched == 2 and ibm.rows_inserted == 0
    assert ibm.status == "failed" and ibm.error_type == "NothingStoredError"
    assert "no bars for any of the 2 requested ranges" in ibm.error
    assert spy.status == "ok" and spy.rows_inserted > 0 and report.failed == [ibm]


def test_every_bar_quarantined_fails_the_symbol_never_ok(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """A replay file without a `count` column used to make every TRADES bar fail its check: the run said `ok`
    over an empty table. Whatever the cause, all bars quarantined is a failure that says where to look."""
    tws.update_faults(bad_bars={"negative-volume": 1})  # every bar
    report = run(tws, TableLocation(tmp_path), ("AAPL",), start=datetime(2024, 7, 11, tzinfo=UTC))
    aapl = report.symbols[0]
    assert aapl.rows_fetched > 0 and aapl.rows_quarantined == aapl.rows_fetched and aapl.rows_inserted == 0
    assert aapl.status == "failed" and aapl.error_type == "NothingStoredError"
    assert "ibkr data quarantine --show --symbol AAPL" in aapl.error


def test_connectivity_loss_mid_run_is_waited_out(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    tws.update_faults(latency_seconds=0.05)
    threading.Timer(0.3, lambda: tws.lose_connectivity(restore_after=1.0)).start()
    report = run(tws, TableLocation(tmp_path), ("AAPL",), start=datetime(2024, 6, 24, tzinfo=UTC),
                 request_timeout_s=1.0)
    assert not report.failed, report.symbols[0].error
    assert report.symbols[0].rows_inserted == 390 * 14 - 180


def test_concurrent_runs_on_one_table_both_land(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    start = datetime(2024, 7, 1, tzinfo=UTC)
    reports: dict[str, IngestReport] = {}

    def ingest(symbols: tuple[str, ...], client_id: int) -> None:
        reports[symbols[0]] = run(tws, location, symbols, start=start, client_id=client_id,
                                  ledger=tmp_path / "shared-ledger.json")

    threads = [threading.Thread(target=ingest, args=(("AAPL", "QQQ"), 70)),
               threading.Thread(target=ingest, args=(("MSFT", "SPY"), 80))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not r.failed for r in reports.values())
    table = stored(location, ["AAPL", "QQQ", "MSFT", "SPY"], start)
    assert table.height == 4 * (390 * 8 + 210)
    assert table.select(pl.struct("symbol", "ts").is_unique().all()).item()


def test_time_travel_reads_the_older_version(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    start = datetime(2024, 7, 8, tzinfo=UTC)
    run(tws, location, ("AAPL",), start=start, end=datetime(2024, 7, 10, tzinfo=UTC))
    old_version = table_version(location)
    run(tws, location, ("AAPL",), start=start)
    assert table_version(location) > old_version
    assert stored(location, ["AAPL"], start, version=old_version).height == 2 * 390
    assert stored(location, ["AAPL"], start).height == 5 * 390


def test_bad_requests_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="7 mins"):
        IngestRequest(symbols=("AAPL",), bar_size="7 mins")
    with pytest.raises(ValueError, match="not before"):
        IngestRequest(symbols=("AAPL",), start=NOW, end=NOW - timedelta(days=1))
    with pytest.raises(ValueError, match="invalid instrument id"):
        IngestRequest(symbols=("../etc/passwd",))
    with pytest.raises(ValueError, match="what_to_show"):
        IngestRequest(symbols=("AAPL",), what_to_show="VOLUME")


def test_an_error_carrying_the_request_id_is_its_answer(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """ADJUSTED_LAST with an end date: TWS answers 321 for that request id, which ib_async only logs as a warning.
    Before, the request waited 60 s, six times, and blamed the connection (489 s); now it ends at once, typed as
    a request error with IB's code, text and the fix, and is not retried."""
    from ibkr_flows.ingest.errors import RequestRejectedError
    from ibkr_flows.ingest.fetch import IBSession, fetch_chunk, qualify
    from ibkr_flows.ingest.plan import Chunk

    async def send() -> RequestRejectedError:
        session = IBSession(IBKRSettings(host=tws.host, port=tws.port, client_id=52, connect_timeout=2.0), FAST)
        try:
            await session.ensure_connected()
            details = await qualify(session, InstrumentId.parse("AAPL"), 5)
            with pytest.raises(RequestRejectedError) as refused:
                await fetch_chunk(session, PacingBudget(tmp_path / "ledger.json", time_scale=0.01),
                                  details.contract, Chunk(datetime(2024, 7, 1, tzinfo=UTC), NOW, "10 D"),
                                  bar_size="1 day", what_to_show="ADJUSTED_LAST", use_rth=True, timeout=60)
            return refused.value
        finally:
            session.close()

    started = time.perf_counter()
    error = asyncio.run(send())
    assert time.perf_counter() - started < 5
    assert error.code == 321 and "End date not supported with adjusted last" in error.reason
    assert "empty end date" in error.fix
    assert tws.snapshot()["requests"]["reqHistoricalData"] == 1  # answered, so never retried


def test_adjusted_last_refetches_the_whole_series_and_replaces_it(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """IB re-adjusts ADJUSTED_LAST as a whole and serves it only up to now: each run is one request with an empty
    end date reaching back over the lookback, and replaces the stored series in one commit (no bars of an
    older adjustment survive); other series are untouched."""
    location = TableLocation(tmp_path)
    settings = IBKRSettings(host=tws.host, port=tws.port, client_id=53, connect_timeout=2.0)

    def ingest(what_to_show: str, **span: object) -> IngestReport:
        request = IngestRequest(symbols=("AAPL",), bar_size="1 day", what_to_show=what_to_show,
                                quality_engine="polars", **span)  # type: ignore[arg-type]
        budget = PacingBudget(tmp_path / "ledger.json", time_scale=0.01)
        return asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))

    ingest("TRADES", start=datetime(2024, 7, 1, tzinfo=UTC), end=NOW)
    first = ingest("ADJUSTED_LAST", lookback_days=10).symbols[0]
    assert first.status == "ok" and first.chunks_fetched == 1 and first.rows_inserted == 7  # 07-03 .. 07-12
    version = table_version(location)
    second = ingest("ADJUSTED_LAST", lookback_days=3).symbols[0]
    assert second.chunks_fetched == 1 and table_version(location) == version + 1  # type: ignore[operator]

    def series(what_to_show: str) -> list[datetime]:
        lazy, _ = scan_bars(location, ["AAPL"], bar_size="1 day", start=datetime(2024, 1, 1, tzinfo=UTC), end=NOW,
                            what_to_show=what_to_show)
        return lazy.collect()["ts"].to_list()

    assert [ts.day for ts in series("ADJUSTED_LAST")] == [10, 11, 12]
    assert len(series("TRADES")) == 9
    assert tws.snapshot()["requests"]["reqHistoricalData"] == 1 + 2


def test_replace_series_is_one_commit_and_leaves_other_series_alone(tmp_path: Path) -> None:
    """storage.bars_table.replace_series: the new snapshot inserted, changed bars updated, bars it lacks deleted,
    all in one Delta commit."""
    from storage.bars_table import bars_history, merge_bars, replace_series
    from tests.test_storage import make_bars

    location = TableLocation(tmp_path)
    start = datetime(2024, 7, 30, 14, 30, tzinfo=UTC)
    adjusted = pl.col("what_to_show").str.replace("TRADES", "ADJUSTED_LAST")
    merge_bars(location, make_bars("MSFT", start, 5))
    merge_bars(location, make_bars("AAPL", start, 5))
    replace_series(location, make_bars("AAPL", start, 10).with_columns(adjusted))
    version = table_version(location)
    result = replace_series(location, make_bars("AAPL", start + timedelta(minutes=3), 10, price=50)
                            .with_columns(adjusted))
    assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (3, 7, 3)
    assert result.version == version + 1 and bars_history(location, 1)[0]["operation"] == "MERGE"  # type: ignore[operator]
    table = pl.read_delta(location.bars).group_by("symbol", "what_to_show").agg(pl.len(), pl.col("open").min())
    assert sorted(table.rows()) == [("AAPL", "ADJUSTED_LAST", 10, 50.0), ("AAPL", "TRADES", 5, 100.0),
                                    ("MSFT", "TRADES", 5, 100.0)]


def test_gaps_are_reported_as_the_sessions_short_of_bars(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """A quarantined bar leaves its session short: the report names the sessions, with bars received of bars
    expected, instead of a bare count of missing bars."""
    tws.update_faults(bad_bars={"negative-volume": 200})
    report = run(tws, TableLocation(tmp_path), ("AAPL",), start=datetime(2024, 7, 11, tzinfo=UTC),
                 end=datetime(2024, 7, 13, tzinfo=UTC))
    aapl = report.symbols[0]
    assert aapl.status == "ok" and aapl.rows_quarantined > 0
    assert [g.session for g in aapl.gaps] == [date(2024, 7, 11), date(2024, 7, 12)]
    assert all(g.expected == 390 and g.received < 390 for g in aapl.gaps)
    assert aapl.gap_bars == aapl.rows_quarantined
    words = aapl.gaps_in_words()
    assert words.startswith("2 sessions: 2024-07-11 (") and "of 390 bars)" in words


def test_gaps_in_words_list_the_first_sessions_and_count_the_rest() -> None:
    report = SymbolReport("SPY", gaps=[SessionGap(date(2024, 7, d), 390, 0 if d == 5 else 389) for d in (5, 8, 9, 10)])
    assert report.gaps_in_words() == ("4 sessions: 2024-07-05 (no bars), 2024-07-08 (389 of 390 bars), "
                                      "2024-07-09 (389 of 390 bars), and 1 more")
    assert SymbolReport("SPY").gaps_in_words() == "none"
