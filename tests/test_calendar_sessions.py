"""Annualization and completeness follow the instrument's calendar (issue 15): sessions per year and bars per
session of Xetra, Tokyo (without its lunch), CME Globex and FX 24/5 from exchange_calendars and the calendars'
hours, NYSE's exactly as before; a backtest reads them from its instrument's terms, and a grid on the same
instrument reports the same periods per year and metrics; Tokyo's sessions are judged for completeness with their
lunch break left out. Real exchange_calendars; the instruments ingested from the simulator over loopback with the
real ib_async client into real Delta tables.

Sessions per year are the mean over 2015-2024 (`ib.calendars.ANNUAL_YEARS`), rounded, counted by hand:
- XNYS 252+252+251+251+252+253+252+251+250+252 = 2516 -> 251.6 -> 252 (as before);
- XETR 253+255+252+251+251+254+255+257+255+254 = 2537 -> 253.7 -> 254;
- XTKS 244+245+247+245+241+242+245+244+246+245 = 2444 -> 244.4 -> 244;
- CMES (CME Globex trade dates: every weekday but Christmas, New Year and Good Friday) 2579 -> 257.9 -> 258;
- FX 24/5, every weekday: 3653 days from Thursday 2015-01-01 = 521 weeks + Thursday..Tuesday (4 weekdays), so
  521 x 5 + 4 = 2609 -> 260.9 -> 261.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest

from ibkr_flows.api import load_bars as load_api_bars
from ibkr_flows.backtest.contract_terms import US_VENUES, listing_calendar, read_contract_terms
from ibkr_flows.backtest.exits import sessions
from ibkr_flows.backtest.grid import evaluate_grid
from ibkr_flows.backtest.metrics import RTH_SESSION, SESSIONS_PER_YEAR, annualization
from ibkr_flows.backtest.request import BacktestRequest, GridRequest
from ibkr_flows.backtest.runner import grid_config, load_bars, run_request
from ibkr_flows.ib.calendars import (
    CME_GLOBEX,
    EXCHANGE_CALENDARS,
    FX_24_5,
    NYSE,
    full_session_bars,
    planning_calendar,
    session_dates,
    sessions_per_year,
)
from ibkr_flows.ib.historical import BAR_SIZES, bar_step, is_intraday
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.ingest.scales import check_scale, rescale_before_merge
from ibkr_flows.quality.review import catalog_series
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import merge_bars
from storage.corporate_actions_table import ActionKind
from storage.location import TableLocation
from storage.schema import BAR_COLUMNS, LINEAGE_COLUMNS
from tests.helpers_instruments import NOW

BASIS = "; Sharpe/Sortino from per-bar equity returns, risk-free rate 0"
SAP, TOYOTA, ES, EURUSD = "STK:SAP@IBIS:EUR", "STK:7203@TSEJ:JPY", "FUT:ES@CME:202503", "CASH:EUR.USD@IDEALPRO"
THREE_WEEKS = (datetime(2024, 12, 16, tzinfo=UTC), NOW)
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=5)


def test_nyse_keeps_its_constants_which_are_the_calendars() -> None:
    assert sessions_per_year(NYSE) == SESSIONS_PER_YEAR == 252
    for size in filter(is_intraday, BAR_SIZES):
        assert full_session_bars(NYSE, True, bar_step(size)) == math.ceil(RTH_SESSION / bar_step(size)), size
    one_minute = annualization("1 min")
    assert (one_minute.periods_per_year, one_minute.description) == (
        252 * 390, f"1 min bars, 390 bars per RTH session, 252 sessions per year{BASIS}")
    assert annualization("1 min", calendar=NYSE) == one_minute
    assert annualization("1 hour").periods_per_year == 252 * 7
    assert annualization("1 day").description == f"1 day bars, 252 sessions per year{BASIS}"
    # extended hours, 04:00-20:00 New York: 16 h of minutes
    assert annualization("1 min", use_rth=False).periods_per_year == 252 * 960


@pytest.mark.parametrize(("calendar", "use_rth", "bar_size", "sessions", "per_session", "session"), [
    ("XETR", True, "1 min", 254, 510, "RTH session"),  # 09:00-17:30 Frankfurt: 8.5 h
    ("XETR", True, "1 hour", 254, 9, "RTH session"),  # 09:00, ..., 16:00, then 17:00-17:30
    ("XETR", False, "1 min", 254, 510, "ETH session"),  # IB has no Xetra bars outside its hours
    ("XTKS", True, "1 min", 244, 150 + 180, "RTH session without its mid-day break"),  # 09:00-11:30, 12:30-15:30
    ("XTKS", True, "5 mins", 244, 30 + 36, "RTH session without its mid-day break"),
    ("XTKS", True, "1 hour", 244, 3 + 4, "RTH session without its mid-day break"),  # 9, 10, 11; 12:30, 13, 14, 15
    (CME_GLOBEX, False, "1 min", 258, 23 * 60, "ETH session"),  # 18:00 the evening before to 17:00 New York
    (CME_GLOBEX, False, "1 hour", 258, 23, "ETH session"),
    (CME_GLOBEX, True, "1 min", 258, 390, "RTH session"),  # liquid hours 09:30-16:00 New York
    (FX_24_5, True, "1 min", 261, 24 * 60, "RTH session"),
    (FX_24_5, False, "1 hour", 261, 24, "ETH session"),
])
def test_each_calendar_annualizes_its_own_sessions(calendar: str, use_rth: bool, bar_size: str, sessions: int,
                                                   per_session: int, session: str) -> None:
    annual = annualization(bar_size, calendar=calendar, use_rth=use_rth)
    assert annual.periods_per_year == sessions * per_session
    assert annual.description == (f"{bar_size} bars, {per_session} bars per {session}, {sessions} sessions per year "
                                  f"on {calendar}{BASIS}")


@pytest.mark.parametrize(("calendar", "sessions"), [("XETR", 254), ("XTKS", 244), (CME_GLOBEX, 258), (FX_24_5, 261)])
def test_daily_bars_count_the_calendars_sessions(calendar: str, sessions: int) -> None:
    annual = annualization("1 day", calendar=calendar)
    assert (annual.periods_per_year, annual.description) == (
        sessions, f"1 day bars, {sessions} sessions per year on {calendar}{BASIS}")
    assert annualization("1 week", calendar=calendar).periods_per_year == 52  # weeks and months stay calendar ones


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TableLocation]:
    """Three weeks of 1-hour bars of a Xetra stock, a Tokyo stock, an ES future (all hours) and EUR.USD, ingested
    from the simulator: the instruments table records each contract as TWS describes it."""
    location = TableLocation(tmp_path_factory.mktemp("annualization"))
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        for client_id, (symbols, use_rth) in enumerate([((SAP, TOYOTA, EURUSD), True), ((ES,), False)], start=80):
            report = ingest(sim, location, symbols, client_id, use_rth=use_rth)
            assert [s.status for s in report.symbols] == ["ok"] * len(symbols), report.symbols
    yield location


def ingest(sim: EmbeddedSimulator, location: TableLocation, symbols: tuple[str, ...], client_id: int, *,
           use_rth: bool = True, bar_size: str = "1 hour", span: tuple[datetime, datetime] = THREE_WEEKS
           ) -> IngestReport:
    request = IngestRequest(symbols=symbols, bar_size=bar_size, use_rth=use_rth, start=span[0], end=span[1],
                            quality_engine="polars", request_timeout_s=5)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
    budget = PacingBudget(Path(str(location.root)) / "pacing.json", time_scale=0.01)
    return asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))


@pytest.mark.parametrize(("symbol", "use_rth", "calendar", "periods_per_year"), [
    (SAP, True, "XETR", 254 * 9),
    (TOYOTA, True, "XTKS", 244 * 7),
    (ES, False, CME_GLOBEX, 258 * 23),
    (EURUSD, True, FX_24_5, 261 * 24),
])
def test_a_backtest_annualizes_on_its_instruments_calendar(ingested: TableLocation, symbol: str, use_rth: bool,
                                                           calendar: str, periods_per_year: int) -> None:
    assert read_contract_terms(ingested, [symbol])[symbol].calendar == calendar
    what_to_show = "MIDPOINT" if symbol == EURUSD else "TRADES"
    request = BacktestRequest(symbols=(symbol,), params={"fast_period": 3, "slow_period": 8}, bar_size="1 hour",
                              use_rth=use_rth, what_to_show=what_to_show, start=THREE_WEEKS[0], end=THREE_WEEKS[1])
    [result] = run_request(request, ingested).results
    assert result.result.metrics.periods_per_year == periods_per_year
    assert result.result.metrics.annualization.endswith(f"sessions per year on {calendar}{BASIS}")


def test_a_plain_symbol_without_an_instruments_row_stays_on_nyse(ingested: TableLocation) -> None:
    assert read_contract_terms(ingested, ["AAPL"])["AAPL"].calendar == NYSE


def test_us_listings_are_read_on_nyse_without_loading_the_calendars() -> None:
    """The terms' shortcut for US stocks and indices names exactly the exchanges the calendars put on NYSE."""
    assert {venue for venue, name in EXCHANGE_CALENDARS.items() if name == NYSE} - {"SMART"} == US_VENUES
    for sec_type in ("STK", "IND", "CASH", "FUT"):
        for venue in (*US_VENUES, "SMART", "IBIS", "TSEJ", "CME", "IDEALPRO"):
            for exchange, primary in ((venue, ""), ("SMART", venue)):
                assert listing_calendar(sec_type, exchange, primary, "US/Eastern") == planning_calendar(
                    sec_type, exchange, primary, "US/Eastern"), (sec_type, exchange, primary)


@pytest.mark.parametrize("symbol", [SAP, TOYOTA])
def test_the_grid_reports_what_single_runs_report_on_another_calendar(ingested: TableLocation, symbol: str) -> None:
    """Costs and sizing the grid's kernel knows (no commission, all in): its rows are computed by the kernel, not
    by the engine, and must carry the instrument's annualization all the same."""
    grid = GridRequest(symbol=symbol, grid={"fast_period": [2, 3], "slow_period": [5, 8]}, bar_size="1 hour",
                       commission="none", start=THREE_WEEKS[0], end=THREE_WEEKS[1])
    base = grid_config(ingested, grid)
    bars, _ = load_bars(ingested, grid, symbol, None)
    rows = evaluate_grid(bars, "1 hour", grid.spec(), base)
    assert set(rows["periods_per_year"]) == {annualization("1 hour", calendar=base.terms.calendar).periods_per_year}
    for row in rows.iter_rows(named=True):
        params = {"fast_period": row["fast_period"], "slow_period": row["slow_period"]}
        single = BacktestRequest(symbols=(symbol,), params=params, bar_size="1 hour", commission="none",
                                 start=THREE_WEEKS[0], end=THREE_WEEKS[1])
        metrics = run_request(single, ingested).results[0].result.metrics
        for name in ("periods_per_year", "bars", "trades", "final_equity", "annualized_return_pct"):
            assert row[name] == getattr(metrics, name), (params, name)
        for name in ("sharpe", "sortino", "annualized_volatility_pct"):
            assert row[name] == pytest.approx(getattr(metrics, name), rel=1e-9), (params, name)


def test_extended_hours_data_annualizes_on_extended_hours(ingested: TableLocation) -> None:
    """The ES series was ingested with all hours: it has the 23 hourly bars a session that its backtest counts."""
    es = pl.read_delta(ingested.bars).filter(pl.col("symbol") == ES)
    assert set(es["use_rth"]) == {False}
    per_session = es.group_by(session_dates(pl.col("ts"), CME_GLOBEX)).len()
    assert per_session["len"].max() == 23 == full_session_bars(CME_GLOBEX, False, timedelta(hours=1))


def test_tokyo_minutes_are_judged_for_completeness_and_lunch_is_no_gap(tmp_path: Path) -> None:
    """Three Tokyo sessions of 1-minute bars from the simulator: 330 a session (none in the 11:30-12:30 lunch
    break), all judged complete, nothing quarantined."""
    location = TableLocation(tmp_path)
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        report = ingest(sim, location, (TOYOTA,), 85, bar_size="1 min", span=(datetime(2025, 1, 8, tzinfo=UTC), NOW))
    [toyota] = report.symbols
    assert toyota.status == "ok" and toyota.gaps == [], (toyota.error, toyota.gaps)
    assert (toyota.rows_inserted, toyota.rows_quarantined) == (3 * 330, 0)
    assert not [w for w in report.quality_warnings if "missing" in w or "not judged" in w], report.quality_warnings
    tokyo_time = pl.read_delta(location.bars)["ts"].dt.convert_time_zone("Asia/Tokyo").dt.time()
    assert not tokyo_time.is_between(time(11, 30), time(12, 30), closed="left").any()


def test_a_split_in_a_tokyo_series_takes_effect_on_the_next_tokyo_session(ingested: TableLocation,
                                                                          tmp_path: Path) -> None:
    """Stored bars of 7203 on the scale before a 5:1 split, re-fetched on the new one: the split takes effect on
    the first Tokyo session after the last stored bar, Tuesday 2025-01-14 (Monday was Coming of Age Day, a Tokyo
    holiday; the NYSE traded), and the stored bars before it are re-scaled."""
    fresh = (pl.read_delta(ingested.bars).filter(pl.col("symbol") == TOYOTA, pl.col("ts") < NOW)
             .select(*BAR_COLUMNS, *LINEAGE_COLUMNS))
    location = TableLocation(tmp_path)
    merge_bars(location, fresh.with_columns(pl.col("open", "high", "low", "close", "wap") * 5))
    check = check_scale(location, fresh, dividend_adjusted=False, calendar="XTKS")
    assert check is not None and check.event is not None
    assert (check.event.kind, check.event.factor, check.event.effective_date) == (ActionKind.SPLIT, 5.0,
                                                                                   date(2025, 1, 14))
    on_nyse = check_scale(location, fresh, dividend_adjusted=False)
    assert on_nyse is not None and on_nyse.event is not None and on_nyse.event.effective_date == date(2025, 1, 13)
    assert rescale_before_merge(location, check).rows_rescaled == fresh.height
    rescaled = pl.read_delta(location.bars).sort("ts")
    assert rescaled["close"].to_list() == pytest.approx(fresh.sort("ts")["close"].to_list())


def test_the_catalog_and_the_session_column_count_each_series_sessions_on_its_calendar(ingested: TableLocation
                                                                                       ) -> None:
    """No false missing session: Xetra's Christmas, Tokyo's New Year, CME's and FX's holidays are their own
    calendars' (on NYSE's, each series would miss or gain days)."""
    series, _ = catalog_series(ingested)
    missing = {r["symbol"]: r["missing_sessions"] for r in series.iter_rows(named=True)}
    assert missing == {symbol: [] for symbol in (SAP, TOYOTA, ES, EURUSD)}
    toyota = load_api_bars(TOYOTA, start="2025-01-08", end="2025-01-09", bar_size="1 hour",
                           data_dir=str(ingested.root))
    assert set(toyota["session"]) == {date(2025, 1, 8)}  # 09:00-15:30 Tokyo: 00:00-06:30 UTC, the 7th in New York
    es = load_api_bars(ES, start="2025-01-07 23:00", end="2025-01-08", bar_size="1 hour", use_rth=False,
                       data_dir=str(ingested.root))
    assert set(es["session"]) == {date(2025, 1, 8)}  # 18:00 New York the evening before: the 8th's session


def test_flatten_at_close_flattens_at_the_end_of_each_tokyo_session(ingested: TableLocation) -> None:
    """A Tokyo session ends at its 15:00 bar (06:00 UTC); its New York date changes mid-session (14:00 Tokyo), which
    must not end it. The engine and the grid's realism kernel flatten at the same bars."""
    settings = {"bar_size": "1 hour", "commission": "none", "flatten_at_close": True, "start": THREE_WEEKS[0],
                "end": THREE_WEEKS[1]}
    [run] = run_request(BacktestRequest(symbols=(TOYOTA,), params={"fast_period": 2, "slow_period": 5}, **settings),
                        ingested).results
    ts = run.result.equity["ts"]
    session_end, _ = sessions(ts, "XTKS")
    assert set(ts.filter(pl.Series(session_end)).dt.convert_time_zone("Asia/Tokyo").dt.hour()) == {15}
    assert (run.result.equity.filter(pl.Series(session_end))["position"] == 0).all()
    assert run.result.trades.height > 0

    grid = GridRequest(symbol=TOYOTA, grid={"fast_period": [2], "slow_period": [5]}, **settings)
    bars, _ = load_bars(ingested, grid, TOYOTA, None)
    [row] = evaluate_grid(bars, "1 hour", grid.spec(), grid_config(ingested, grid)).iter_rows(named=True)
    assert (row["trades"], row["final_equity"]) == (run.result.metrics.trades, run.result.metrics.final_equity)
