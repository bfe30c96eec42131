"""Ingesting instrument ids beyond US stocks end to end: the real ib_async client against the simulator (its clock
at a known Friday), real Delta tables, real quality checks. Each class stores its bars under its id with its
resolved contract; ids TWS cannot pin to one contract, and requests IB would refuse, fail before anything is
written; every resolved contract lands in the instruments table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.quality.review import release_quarantined
from ibkr_flows.quality.validate import validate_bars
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.instruments_table import read_instruments
from storage.location import TableLocation
from storage.quarantine_table import Review, append_quarantine
from storage.schema import BAR_COLUMNS
from tests.helpers_instruments import NOW, listed

WEEK = (datetime(2025, 1, 6, tzinfo=UTC), NOW)
"""2025-01-06..10: four NYSE sessions (the 9th was a national day of mourning)."""
HOURLY_RTH_BARS = 7
"""1-hour RTH bars per NYSE session: 09:30 (a half-hour bar), 10:00, ..., 15:00."""
XETRA_SESSIONS, XETRA_HOURLY_BARS = 5, 9
"""Xetra traded on the 9th; 1-hour bars 09:00, ..., 17:00 Frankfurt (a half-hour bar to the 17:30 close)."""
FX_HOURS = 4 * 24 + 22
"""FX 24/5: every hour from Monday 00:00 UTC (inside the session opened Sunday 17:00 New York) to NOW, Friday
17:00 New York, when the week's last session closes."""
EXPECTED_ROWS = {"STK:SAP@IBIS:EUR": XETRA_SESSIONS * XETRA_HOURLY_BARS, "CASH:EUR.USD@IDEALPRO": FX_HOURS,
                 "IND:SPX@CBOE": 4 * HOURLY_RTH_BARS, "AAPL": 4 * HOURLY_RTH_BARS}
"""Each class on its own calendar: Xetra sessions, FX 24/5, NYSE sessions for the US index and stock."""
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=5)


@pytest.fixture
def tws() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        yield sim


def ingest(sim: EmbeddedSimulator, location: TableLocation, *ids: str, span: tuple[datetime, datetime] = WEEK,
           engine: str = "polars", client_id: int = 70) -> IngestReport:
    request = IngestRequest(symbols=ids, bar_size="1 hour", start=span[0], end=span[1], quality_engine=engine,
                            request_timeout_s=5)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
    budget = PacingBudget(Path(str(location.root)) / "pacing.json", time_scale=0.01)
    return asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))


def stored_bars(location: TableLocation) -> pl.DataFrame:
    return pl.read_delta(location.bars).sort("symbol", "ts")


def cli(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"IBKR_DATA_DIR": str(data_dir), "COLUMNS": "200"})
    return result.exit_code, result.output


def test_each_class_is_stored_under_its_id_with_its_resolved_contract(tws: EmbeddedSimulator, tmp_path: Path
                                                                       ) -> None:
    location = TableLocation(tmp_path)
    report = ingest(tws, location, "stk:sap@ibis:eur", "CASH:EUR.USD@IDEALPRO", "IND:SPX@CBOE", "AAPL")
    by_id = {s.symbol: s for s in report.symbols}
    assert list(by_id) == ["STK:SAP@IBIS:EUR", "CASH:EUR.USD@IDEALPRO", "IND:SPX@CBOE", "AAPL"]
    for symbol, series in by_id.items():
        assert series.status == "ok", (symbol, series.error)
        assert series.rows_inserted == EXPECTED_ROWS[symbol] and series.rows_quarantined == 0, symbol
    assert by_id["CASH:EUR.USD@IDEALPRO"].what_to_show == "MIDPOINT"  # IB's only data for a pair, by default
    assert {s.what_to_show for s in report.symbols if s.symbol != "CASH:EUR.USD@IDEALPRO"} == {"TRADES"}

    bars = stored_bars(location)
    contracts = bars.group_by("symbol").agg(pl.col("con_id", "exchange", "primary_exchange", "currency",
                                                   "what_to_show").unique()).sort("symbol")
    assert contracts.rows() == [
        ("AAPL", [265598], ["SMART"], ["NASDAQ"], ["USD"], ["TRADES"]),
        ("CASH:EUR.USD@IDEALPRO", [listed("EUR.USD", "IDEALPRO")], ["IDEALPRO"], ["IDEALPRO"], ["USD"],
         ["MIDPOINT"]),
        ("IND:SPX@CBOE", [listed("SPX", "CBOE")], ["CBOE"], ["CBOE"], ["USD"], ["TRADES"]),
        ("STK:SAP@IBIS:EUR", [listed("SAP", "IBIS")], ["IBIS"], ["IBIS"], ["EUR"], ["TRADES"]),
    ]
    pair = bars.filter(pl.col("symbol") == "CASH:EUR.USD@IDEALPRO")
    assert (pair["volume"] == -1).all() and (pair["bar_count"] == -1).all()  # stored as IB sends them
    assert pair["close"].is_between(0.9, 1.3).all()
    index = bars.filter(pl.col("symbol") == "IND:SPX@CBOE")
    assert (index["volume"] == 0).all() and (index["close"] > 3500).all()
    assert bars.filter(pl.col("symbol") == "STK:SAP@IBIS:EUR")["request"][0].startswith("STK:SAP@IBIS:EUR 1 hour")
    # each class is planned and judged on its own calendar: no NYSE-calendar note, no false session gap
    assert not [w for w in report.quality_warnings if "NYSE calendar" in w or "missing" in w], report.quality_warnings
    sap = bars.filter(pl.col("symbol") == "STK:SAP@IBIS:EUR")
    assert sap["ts"].dt.convert_time_zone("Europe/Berlin").dt.strftime("%H:%M").unique().sort().to_list() == [
        f"{hour:02d}:00" for hour in range(9, 18)]

    again = ingest(tws, location, "STK:SAP@IBIS:EUR", "CASH:EUR.USD@IDEALPRO", client_id=71)
    assert [(s.status, s.rows_inserted, s.chunks_fetched) for s in again.symbols] == [("ok", 0, 1)] * 2  # resumed


def test_an_expired_future_is_fetched_with_include_expired(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    december = (datetime(2024, 12, 9, tzinfo=UTC), datetime(2024, 12, 14, tzinfo=UTC))  # ESZ4 expired 12-20
    report = ingest(tws, location, "FUT:ES@CME:202412", span=december)
    [es] = report.symbols
    assert es.status == "ok", es.error
    assert es.rows_inserted == 5 * HOURLY_RTH_BARS and es.rows_quarantined == 0
    bars = stored_bars(location)
    assert set(bars["symbol"]) == {"FUT:ES@CME:202412"} and set(bars["con_id"]) == {listed("ESZ4", "CME")}
    assert bars["close"].is_between(4000, 6500).all()
    assert bars["ts"].min() >= december[0] and bars["ts"].max() < december[1]


def test_the_instruments_table_records_each_resolved_contract_once(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    ingest(tws, location, "STK:SAP@IBIS:EUR", "CASH:EUR.USD@IDEALPRO", "IND:SPX@CBOE")
    ingest(tws, location, "FUT:ES@CME:202412", span=(datetime(2024, 12, 9, tzinfo=UTC),
                                                     datetime(2024, 12, 11, tzinfo=UTC)), client_id=71)
    first = read_instruments(location)
    rows = {r["instrument_id"]: r for r in first.iter_rows(named=True)}
    assert sorted(rows) == ["CASH:EUR.USD@IDEALPRO", "FUT:ES@CME:202412", "IND:SPX@CBOE", "STK:SAP@IBIS:EUR"]
    es, sap, pair = rows["FUT:ES@CME:202412"], rows["STK:SAP@IBIS:EUR"], rows["CASH:EUR.USD@IDEALPRO"]
    assert (es["con_id"], es["sec_type"], es["local_symbol"], es["multiplier"], es["min_tick"], es["expiry"],
            es["time_zone_id"]) == (listed("ESZ4", "CME"), "FUT", "ESZ4", 50.0, 0.25, "20241220", "US/Central")
    assert (sap["currency"], sap["primary_exchange"], sap["time_zone_id"], sap["multiplier"], sap["expiry"]) == (
        "EUR", "IBIS", "MET", None, None)
    assert (pair["sec_type"], pair["symbol"], pair["local_symbol"], pair["currency"]) == ("CASH", "EUR", "EUR.USD",
                                                                                         "USD")
    assert "20250110:0900-20250110:1730" in sap["liquid_hours"] and es["trading_hours"]

    ingest(tws, location, "STK:SAP@IBIS:EUR", client_id=72)  # a known contract: refreshed, not added
    second = read_instruments(location)
    assert second.height == first.height == second["con_id"].n_unique()
    sap_again = second.filter(pl.col("instrument_id") == "STK:SAP@IBIS:EUR").row(0, named=True)
    assert sap_again["first_seen"] == sap["first_seen"] and sap_again["last_updated"] > sap["last_updated"]

    code, output = cli(tmp_path, "data", "instruments", "--json")
    assert code == 0, output
    listing = {r["instrument_id"]: r for r in json.loads(output)}
    assert listing["FUT:ES@CME:202412"]["multiplier"] == 50 and listing["STK:SAP@IBIS:EUR"]["currency"] == "EUR"


def test_the_cli_ingests_ids_of_several_classes(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    code, output = cli(tmp_path, "data", "ingest", "STK:SAP@IBIS:EUR", "CASH:EUR.USD@IDEALPRO", "--bar-size",
                       "1 hour", "--start", "2025-01-06", "--end", "2025-01-11", "--quality-engine", "polars",
                       "--port", str(tws.port), "--no-prefect", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert [(s["symbol"], s["what_to_show"], s["rows_inserted"]) for s in report["symbols"]] == [
        ("STK:SAP@IBIS:EUR", "TRADES", XETRA_SESSIONS * XETRA_HOURLY_BARS),
        ("CASH:EUR.USD@IDEALPRO", "MIDPOINT", FX_HOURS)]  # the week's last FX session closed before --end
    assert report["request"]["what_to_show"] is None
    code, table = cli(tmp_path, "data", "instruments")
    assert code == 0 and "EUR.USD" in table and "IBIS" in table and "2 instrument(s)" in table


def test_an_ambiguous_id_fails_listing_its_candidates_and_writes_nothing(tws: EmbeddedSimulator, tmp_path: Path
                                                                         ) -> None:
    code, output = cli(tmp_path, "data", "ingest", "STK:SHOP@SMART", "--bar-size", "1 hour", "--start",
                       "2025-01-06", "--end", "2025-01-11", "--port", str(tws.port), "--no-prefect")
    assert code == 1, output
    assert "is ambiguous" in output and "AmbiguousSymbolError" in output
    assert "STK:SHOP@NYSE:USD" in output and "STK:SHOP@TSE:CAD" in output
    assert f"CONID:{listed('SHOP', 'NYSE')}" in output and f"CONID:{listed('SHOP', 'TSE')}" in output
    assert tws.snapshot()["requests"].get("reqHistoricalData", 0) == 0
    assert not (tmp_path / "bars").exists() and not (tmp_path / "instruments").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["STK:SAP@@IBIS"], "invalid instrument id 'STK:SAP@@IBIS'"),
    (["BOND:T@SMART"], "unknown instrument class 'BOND'"),
    (["STK:SAP@IBIS:EURO"], "the currency must be three letters"),
    (["FUT:ES@CME"], "needs its contract month"),
    (["CASH:EUR.USD@IDEALPRO", "--what-to-show", "TRADES"], "use --what-to-show MIDPOINT, BID, ASK or BID_ASK"),
    (["CONTFUT:ES@CME", "--end", "2025-01-10"], "served only up to now"),
])
def test_ids_and_requests_ib_would_refuse_are_rejected_before_connecting(tmp_path: Path, args: list[str],
                                                                        message: str) -> None:
    code, output = cli(tmp_path, "data", "ingest", *args, "--port", "1", "--no-prefect")
    assert code == 2 and message in " ".join(output.split()), output
    assert "Traceback" not in output and not any(tmp_path.iterdir())


def _bars(sec_type_volume: float, what_to_show: str, count: int = 6) -> pl.DataFrame:
    start = datetime(2025, 1, 6, 14, 30, tzinfo=UTC)
    return pl.DataFrame({
        "symbol": "X", "con_id": 1, "exchange": "SMART", "primary_exchange": "SMART", "currency": "USD",
        "bar_size": "1 min", "what_to_show": what_to_show, "use_rth": True,
        "ts": [start + timedelta(minutes=i) for i in range(count)], "open": 10.0, "high": 11.0, "low": 9.0,
        "close": 10.5, "volume": sec_type_volume, "wap": sec_type_volume, "bar_count": int(sec_type_volume),
    }, schema=BAR_COLUMNS)


@pytest.mark.parametrize(("sec_type", "what_to_show", "size", "finding"), [
    ("CASH", "MIDPOINT", -1.0, False),
    ("CASH", "BID", 0.0, False),
    ("IND", "TRADES", -1.0, False),
    ("IND", "TRADES", 0.0, False),
    ("STK", "TRADES", -1.0, True),
    ("FUT", "TRADES", -1.0, True),
    ("FUT", "TRADES", 0.0, False),
])
@pytest.mark.parametrize("engine", ["polars", "great_expectations"])
def test_missing_volume_is_a_finding_only_where_the_class_has_volume(sec_type: str, what_to_show: str,
                                                                      size: float, finding: bool,
                                                                      engine: str) -> None:
    result = validate_bars(_bars(size, what_to_show), bar_size="1 min", use_rth=True, what_to_show=what_to_show,
                           sec_type=sec_type, engine=engine)  # type: ignore[arg-type]
    if finding:
        assert result.clean.is_empty() and set(result.quarantined["failed_check"]) == {"volume_non_negative"}
    else:
        assert result.quarantined.is_empty() and result.clean.height == 6


def test_a_release_rechecks_bars_under_their_class_rules(tws: EmbeddedSimulator, tmp_path: Path) -> None:
    """Index bars with -1 sizes (as IB may send them), quarantined by rules that did not know the class, pass
    today's rules on release: the instruments table says the conId is an index. A stock's stay quarantined."""
    location = TableLocation(tmp_path)
    ingest(tws, location, "IND:SPX@CBOE")  # records SPX in the instruments table
    spx = listed("SPX", "CBOE")
    lineage = {name: pl.lit(value) for name, value in (
        ("ingested_at", datetime(2025, 1, 11, tzinfo=UTC)), ("flow_run_id", "old"), ("request", "test"),
        ("failed_check", "volume_non_negative"), ("check_detail", "negative: volume -1.0"))}
    index = _bars(-1.0, "TRADES").with_columns(symbol=pl.lit("IND:SPX@CBOE"), con_id=pl.lit(spx),
                                               ts=pl.col("ts") - timedelta(days=7), **lineage)
    stock = _bars(-1.0, "TRADES").with_columns(symbol=pl.lit("AAPL"), con_id=pl.lit(265598),
                                               ts=pl.col("ts") - timedelta(days=7), **lineage)
    append_quarantine(location, pl.concat([index, stock]))
    review = Review("release", "class-aware rules", "test", datetime.now(UTC))
    released = release_quarantined(location, review)
    assert (released.examined, released.released, released.still_failing) == (12, 6, {"volume_non_negative": 6})
    assert stored_bars(location).filter(pl.col("volume") == -1)["symbol"].unique().to_list() == ["IND:SPX@CBOE"]
