"""Continuous futures: the project's own roll of stored dated contracts (rules `days:N` and `volume`, back-adjusted
by `none | difference | ratio`), checked against hand-worked series; rebuilt at a stored bars version it is the same
frame; end to end from two real simulator contracts ingested through ib_async (ES on CME; CL on NYMEX, rolled on
the CME Globex calendar and backtested with its 1,000-barrel multiplier); and IB's CONTFUT series ingested as a
whole-series snapshot into the continuous table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import typer
from ib_async import ContFuture, Future
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from ibkr_flows.backtest.request import BacktestRequest
from ibkr_flows.backtest.runner import run_request
from ibkr_flows.cli.data_roll import roll_command
from ibkr_flows.continuous.build import build_continuous, roll_and_store
from ibkr_flows.continuous.contracts import ContinuousSpec
from ibkr_flows.continuous.errors import InvalidRollRuleError, NoContractsError, NoOverlapError
from ibkr_flows.continuous.rules import Adjustment, RollRule
from ibkr_flows.ib.refusals import Refusal, answer_or_refusal
from ibkr_flows.ingest.engine import IngestReport, ingest_async
from ibkr_flows.ingest.fetch import RetryPolicy
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.handlers.historical import CONTFUT_END_CAUSE
from storage.bars_table import merge_bars
from storage.continuous_table import IB_ADJUSTMENT, IB_CONTFUT_RULE, read_series
from storage.instruments_table import read_instruments, upsert_instruments
from storage.location import TableLocation
from storage.rolls_table import read_rolls
from storage.schema import BARS_SCHEMA, INSTRUMENTS_SCHEMA
from tests.helpers_instruments import NOW, client_at_now, listed

H5, M5, U5 = 1, 2, 3
CONTRACTS = {H5: ("FUT:ES@CME:202503", "20250321"), M5: ("FUT:ES@CME:202506", "20250620"),
             U5: ("FUT:ES@CME:202509", "20250919")}
D = date
CLOSES = {
    H5: {D(2025, 3, 13): 100, D(2025, 3, 14): 101, D(2025, 3, 17): 102, D(2025, 3, 18): 104, D(2025, 3, 19): 105,
         D(2025, 3, 20): 106},
    M5: {D(2025, 3, 17): 111, D(2025, 3, 18): 112, D(2025, 3, 19): 113, D(2025, 3, 20): 114, D(2025, 6, 12): 120,
         D(2025, 6, 13): 121, D(2025, 6, 16): 122, D(2025, 6, 17): 124},
    U5: {D(2025, 6, 13): 125, D(2025, 6, 16): 126, D(2025, 6, 17): 128, D(2025, 6, 18): 130, D(2025, 6, 20): 131},
}
"""Daily closes of three ES contracts (the bars sit at 00:00 UTC of their session, as IB stamps daily bars)."""
VOLUMES = {
    H5: dict.fromkeys(CLOSES[H5], 1000.0),
    M5: {D(2025, 3, 17): 500.0, D(2025, 3, 18): 900.0, D(2025, 3, 19): 1500.0, D(2025, 3, 20): 2000.0,
         **dict.fromkeys([D(2025, 6, 12), D(2025, 6, 13), D(2025, 6, 16), D(2025, 6, 17)], 1000.0)},
    U5: {D(2025, 6, 13): 200.0, D(2025, 6, 16): 1200.0, D(2025, 6, 17): 3000.0, D(2025, 6, 18): 3000.0,
         D(2025, 6, 20): 3000.0},
}
"""M5 first out-trades H5 on 03-19, U5 out-trades M5 on 06-16."""


def bar_rows(con_id: int, sessions: list[date] | None = None) -> pl.DataFrame:
    symbol, _ = CONTRACTS[con_id]
    days = sessions or list(CLOSES[con_id])
    closes = [float(CLOSES[con_id][d]) for d in days]
    return pl.DataFrame({
        "symbol": symbol, "con_id": con_id, "exchange": "CME", "primary_exchange": "CME", "currency": "USD",
        "bar_size": "1 day", "what_to_show": "TRADES", "use_rth": True,
        "ts": [datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in days],
        "open": [c - 0.5 for c in closes], "high": [c + 1 for c in closes], "low": [c - 1 for c in closes],
        "close": closes, "volume": [VOLUMES[con_id][d] for d in days], "wap": closes, "bar_count": 10,
        "ingested_at": datetime(2025, 7, 1, tzinfo=UTC), "flow_run_id": "test", "request": "hand-made",
        "month": "",
    }, schema=BARS_SCHEMA)


def instrument_rows() -> pl.DataFrame:
    seen = datetime(2025, 7, 1, tzinfo=UTC)
    return pl.DataFrame([{
        "con_id": con_id, "sec_type": "FUT", "symbol": "ES", "local_symbol": f"ES{'HMU'[con_id - 1]}5",
        "trading_class": "ES", "exchange": "CME", "primary_exchange": "CME", "currency": "USD", "multiplier": 50.0,
        "min_tick": 0.25, "time_zone_id": "US/Central", "trading_hours": "", "liquid_hours": "", "expiry": expiry,
        "instrument_id": symbol, "long_name": "E-mini S&P 500", "first_seen": seen, "last_updated": seen,
    } for con_id, (symbol, expiry) in CONTRACTS.items()], schema=INSTRUMENTS_SCHEMA)


@pytest.fixture
def stored(tmp_path) -> TableLocation:  # type: ignore[no-untyped-def]
    location = TableLocation(tmp_path)
    upsert_instruments(location, instrument_rows())
    merge_bars(location, pl.concat([bar_rows(c) for c in CONTRACTS]))
    return location


def spec(rule: str, adjustment: str) -> ContinuousSpec:
    return ContinuousSpec("ES", "CME", "1 day", rule=RollRule.parse(rule), adjustment=Adjustment.parse(adjustment))


def held(build_series: pl.DataFrame) -> list[tuple[date, int, float]]:
    return [(s, c, round(p, 9)) for s, c, p in build_series.select("session", "contract", "close").iter_rows()]


DAYS_2_HELD = [(D(2025, 3, 13), H5), (D(2025, 3, 14), H5), (D(2025, 3, 17), H5), (D(2025, 3, 18), H5),
               (D(2025, 3, 19), M5), (D(2025, 3, 20), M5), (D(2025, 6, 12), M5), (D(2025, 6, 13), M5),
               (D(2025, 6, 16), M5), (D(2025, 6, 17), M5), (D(2025, 6, 18), U5), (D(2025, 6, 20), U5)]
"""days:2 rolls H5 -> M5 on 2025-03-19 (2 CME sessions before its 03-21 expiry) and M5 -> U5 on 06-18 (2 before
06-20; CME trades on Juneteenth, 06-19)."""


def test_days_rule_without_adjustment_stitches_raw_prices(stored: TableLocation) -> None:
    build = build_continuous(stored, spec("days:2", "none"))
    assert held(build.series) == [(s, c, float(CLOSES[c][s])) for s, c in DAYS_2_HELD]
    rolls = build.rolls.select("roll_session", "from_con_id", "to_con_id", "gap_ts", "from_close", "to_close",
                               "price_gap").rows()
    assert rolls == [  # the gap is measured at the last bar both share before the roll session
        (D(2025, 3, 19), H5, M5, datetime(2025, 3, 18, tzinfo=UTC), 104.0, 112.0, 8.0),
        (D(2025, 6, 18), M5, U5, datetime(2025, 6, 17, tzinfo=UTC), 124.0, 128.0, 4.0),
    ]
    assert build.series["instrument_id"].to_list()[:1] == ["FUT:ES@CME:202503"]


def test_days_rule_back_adjusted_by_difference_adds_every_later_gap(stored: TableLocation) -> None:
    build = build_continuous(stored, spec("days:2", "difference"))
    later_gaps = {H5: 8.0 + 4.0, M5: 4.0, U5: 0.0}
    assert held(build.series) == [(s, c, CLOSES[c][s] + later_gaps[c]) for s, c in DAYS_2_HELD]
    assert (build.series["high"] - build.series["close"]).to_list() == [1.0] * len(DAYS_2_HELD)
    assert (build.series["wap"] == build.series["close"]).all()
    # no jump at the rolls: the adjusted close of the last held bar equals the next contract's close there
    assert held(build.series)[3][2] == 116.0 == CLOSES[M5][D(2025, 3, 18)] + 4.0


def test_days_rule_back_adjusted_by_ratio_multiplies_every_later_ratio(stored: TableLocation) -> None:
    build = build_continuous(stored, spec("days:2", "ratio"))
    factors = {H5: 112 / 104 * (128 / 124), M5: 128 / 124, U5: 1.0}
    assert held(build.series) == [(s, c, round(CLOSES[c][s] * factors[c], 9)) for s, c in DAYS_2_HELD]
    assert build.rolls["price_ratio"].to_list() == [112 / 104, 128 / 124]
    assert build.series.filter(pl.col("contract") == U5)["close"].to_list() == [130.0, 131.0]  # latest as traded


def test_volume_rule_rolls_the_session_after_the_next_contract_trades_more(stored: TableLocation) -> None:
    build = build_continuous(stored, spec("volume", "difference"))
    expected = [(D(2025, 3, 13), H5, 112.0), (D(2025, 3, 14), H5, 113.0), (D(2025, 3, 17), H5, 114.0),
                (D(2025, 3, 18), H5, 116.0), (D(2025, 3, 19), H5, 117.0),  # M5 out-trades H5 on 03-19 ...
                (D(2025, 3, 20), M5, 118.0), (D(2025, 6, 12), M5, 124.0), (D(2025, 6, 13), M5, 125.0),
                (D(2025, 6, 16), M5, 126.0),  # ... U5 out-trades M5 on 06-16
                (D(2025, 6, 17), U5, 128.0), (D(2025, 6, 18), U5, 130.0), (D(2025, 6, 20), U5, 131.0)]
    assert held(build.series) == expected
    assert build.rolls.select("roll_session", "price_gap").rows() == [(D(2025, 3, 20), 8.0), (D(2025, 6, 17), 4.0)]
    assert "traded 1,500 > FUT:ES@CME:202503 1,000 on 2025-03-19" in build.rolls["reason"][0]


def test_a_rebuild_at_the_stored_bars_version_is_the_same_frame(stored: TableLocation) -> None:
    rolled = spec("days:2", "ratio")
    first = roll_and_store(stored, rolled)
    stored_series = read_series(stored, rolled.series_key())
    assert stored_series["bars_version"].unique().to_list() == [first.bars_version]
    assert (stored_series["rule"].unique().to_list(), stored_series["adjustment"].unique().to_list()) == (
        ["days:2"], ["ratio"])
    assert_frame_equal(stored_series.select(first.series.columns), first.series)

    later = bar_rows(U5, [D(2025, 6, 20)]).with_columns(pl.col("ts") + timedelta(days=3), close=pl.lit(133.0))
    merge_bars(stored, later)  # a new U5 bar (06-23)
    revised = bar_rows(M5).with_columns(pl.col("close") + 1)  # IB revised M5: every M5 close moves
    merge_bars(stored, revised)
    latest = build_continuous(stored, rolled)
    assert latest.bars_version > first.bars_version and not latest.series.equals(first.series)

    again = build_continuous(stored, rolled, version=first.bars_version)
    assert_frame_equal(again.series, first.series)
    assert_frame_equal(again.rolls, first.rolls)

    roll_and_store(stored, rolled)  # the latest build replaces the stored series; rolls of both versions remain
    assert read_series(stored, rolled.series_key())["bars_version"].unique().to_list() == [latest.bars_version]
    assert sorted(read_rolls(stored, "ES")["bars_version"].unique().to_list()) == [first.bars_version,
                                                                                   latest.bars_version]


def test_missing_inputs_and_bad_rules_fail_with_the_fix(tmp_path, stored: TableLocation) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoContractsError, match="ibkr data ingest FUT:NQ@CME"):
        build_continuous(stored, ContinuousSpec("NQ", bar_size="1 day"))
    empty = TableLocation(tmp_path / "empty")
    with pytest.raises(NoContractsError):
        build_continuous(empty, spec("days:5", "none"))
    with pytest.raises(InvalidRollRuleError, match="days:N"):
        RollRule.parse("weeks:2")
    with pytest.raises(InvalidRollRuleError, match="none, difference, ratio"):
        Adjustment.parse("panama")
    assert str(RollRule.parse("days")) == "days:5" and str(RollRule.parse(" VOLUME ")) == "volume"

    apart = TableLocation(tmp_path / "apart")  # U5 stored only from its roll on: no bar shared with M5 before it
    upsert_instruments(apart, instrument_rows())
    merge_bars(apart, pl.concat([bar_rows(M5), bar_rows(U5, [D(2025, 6, 18), D(2025, 6, 20)])]))
    with pytest.raises(NoOverlapError, match="ingest FUT:ES@CME:202509 from at least one session before 2025-06-18"):
        build_continuous(apart, spec("days:2", "difference"))


ROLL_CLOCK = datetime(2025, 4, 4, 22, 0, tzinfo=UTC)
"""A Friday after ESH5 expired (2025-03-21): both March and June contracts are served (March with includeExpired)."""
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, pacing_delay_s=0.2, reconnect_deadline_s=5)


def ingest(sim: EmbeddedSimulator, location: TableLocation, *ids: str, start: datetime | None = None,
           end: datetime | None = None, bar_size: str = "1 hour", client_id: int = 80,
           lookback_days: int = 7) -> IngestReport:
    request = IngestRequest(symbols=ids, bar_size=bar_size, start=start, end=end, quality_engine="polars",
                            request_timeout_s=10, lookback_days=lookback_days)
    settings = IBKRSettings(host=sim.host, port=sim.port, client_id=client_id, connect_timeout=2.0)
    budget = PacingBudget(Path(str(location.root)) / "pacing.json", time_scale=0.01)
    return asyncio.run(ingest_async(request, location, settings, budget=budget, policy=FAST))


@pytest.fixture
def tws_after_march_expiry() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: ROLL_CLOCK) as sim:
        yield sim


def test_two_contracts_ingested_from_the_simulator_roll_five_sessions_before_expiry(
        tws_after_march_expiry: EmbeddedSimulator, tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    report = ingest(tws_after_march_expiry, location, "FUT:ES@CME:202503", "FUT:ES@CME:202506",
                    start=datetime(2025, 3, 10, tzinfo=UTC), end=datetime(2025, 3, 22, tzinfo=UTC))
    assert [(s.symbol, s.status) for s in report.symbols] == [("FUT:ES@CME:202503", "ok"),
                                                              ("FUT:ES@CME:202506", "ok")], report.symbols
    raw = pl.read_delta(location.bars).select("con_id", "ts", "close")
    march, june = listed("ESH5", "CME"), listed("ESM5", "CME")

    build = build_continuous(location, ContinuousSpec("ES", rule=RollRule.parse("days:5"),
                                                      adjustment=Adjustment.RATIO))
    [roll] = build.rolls.rows(named=True)
    assert (roll["roll_session"], roll["from_con_id"], roll["to_con_id"]) == (D(2025, 3, 14), march, june)
    last_march_bar = raw.filter(pl.col("con_id") == march, pl.col("ts") < datetime(2025, 3, 14, tzinfo=UTC))
    gap_ts = last_march_bar["ts"].max()
    closes = dict(raw.filter(pl.col("ts") == gap_ts).select("con_id", "close").iter_rows())
    assert roll["gap_ts"] == gap_ts and roll["price_gap"] == closes[june] - closes[march] != 0
    series = build.series
    assert series["ts"].is_unique().all() and series["ts"].is_sorted()
    by_contract = dict(series.group_by("contract").agg(pl.col("session").min()).iter_rows())
    assert by_contract == {march: D(2025, 3, 10), june: D(2025, 3, 14)}
    assert series.filter(pl.col("contract") == june).height == 6 * 7  # 03-14..03-21: six sessions of 7 bars
    expected_march = (raw.filter(pl.col("con_id") == march, pl.col("ts") <= gap_ts)
                      .select("ts", (pl.col("close") * roll["price_ratio"]).alias("close")))
    assert_frame_equal(series.filter(pl.col("contract") == march).select("ts", "close"), expected_march)
    assert_frame_equal(series.filter(pl.col("contract") == june).select("ts", "close"),
                       raw.filter(pl.col("con_id") == june, pl.col("ts") >= datetime(2025, 3, 14, tzinfo=UTC))
                       .select("ts", "close").sort("ts"))


def roll_cli(location: TableLocation, *args: str) -> tuple[int, str]:
    """`ibkr data roll` as registered in `cli.data` (`data_app.command("roll")(roll_command)`)."""
    app = typer.Typer()
    app.command("roll")(roll_command)
    app.command("noop")(lambda: None)  # two commands: typer then keeps "roll" as a subcommand name
    result = CliRunner().invoke(app, ["roll", *args], env={"IBKR_DATA_DIR": str(location.root), "COLUMNS": "200"})
    return result.exit_code, result.output


def test_the_cli_rolls_stores_and_reports_the_rolls(stored: TableLocation) -> None:
    code, output = roll_cli(stored, "ES", "--rule", "days:2", "--adjust", "difference", "--bar-size", "1 day",
                            "--json")
    assert code == 0, output
    report = json.loads(output)
    assert (report["rule"], report["adjustment"], report["bars"]) == ("days:2", "difference", len(DAYS_2_HELD))
    assert [(r["roll_session"], r["price_gap"]) for r in report["rolls"]] == [("2025-03-19", 8.0),
                                                                            ("2025-06-18", 4.0)]
    assert [(c["instrument_id"], c["first_session"], c["bars"]) for c in report["contracts"]] == [
        ("FUT:ES@CME:202503", "2025-03-13", 4), ("FUT:ES@CME:202506", "2025-03-19", 6),
        ("FUT:ES@CME:202509", "2025-06-18", 2)]
    stored_series = read_series(stored, spec("days:2", "difference").series_key())
    assert stored_series["close"].to_list()[:4] == [112.0, 113.0, 114.0, 116.0]

    code, output = roll_cli(stored, "ES", "--rule", "volume", "--bar-size", "1 day")
    assert code == 0 and "2 roll(s) of ES@CME 1 day TRADES RTH, rule volume" in output, output
    assert "12 bars 2025-03-13 00:00 → 2025-06-20 00:00 UTC from 3 contract(s)" in " ".join(output.split())

    code, output = roll_cli(stored, "NQ", "--bar-size", "1 day")
    assert code == 3 and "ibkr data ingest FUT:NQ@CME" in " ".join(output.split()), output
    code, output = roll_cli(stored, "ES", "--rule", "weeks:1")
    assert code == 2 and "days:N" in output and "Traceback" not in output, output


CRUDE = ("FUT:CL@NYMEX:202503", "FUT:CL@NYMEX:202504")
"""CLH5 and CLJ5: contract months March and April, last traded 2025-02-20 and 2025-03-20."""
CRUDE_WEEKS = (datetime(2025, 2, 10, tzinfo=UTC), datetime(2025, 2, 20, tzinfo=UTC))
"""Eight CME Globex sessions up to CLH5's last day (02-17, Presidents' Day, a session closing at 12:00 Chicago)."""


@pytest.fixture(scope="module")
def crude(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TableLocation, IngestReport]]:
    """CLH5 and CLJ5 ingested as 1-hour bars from a simulator living after both expired."""
    location = TableLocation(tmp_path_factory.mktemp("crude"))
    with EmbeddedSimulator(clock=lambda: ROLL_CLOCK) as sim:
        yield location, ingest(sim, location, *CRUDE, start=CRUDE_WEEKS[0], end=CRUDE_WEEKS[1], client_id=84)


def test_crude_oil_contracts_are_ingested_under_their_contract_months(
        crude: tuple[TableLocation, IngestReport]) -> None:
    location, report = crude
    assert [(s.symbol, s.status, s.rows_quarantined, s.gap_bars) for s in report.symbols] == [
        (symbol, "ok", 0, 0) for symbol in CRUDE], report.symbols
    instruments = read_instruments(location).sort("expiry")
    terms = instruments.select("instrument_id", "local_symbol", "exchange", "multiplier", "min_tick", "expiry")
    assert terms.rows() == [
        ("FUT:CL@NYMEX:202503", "CLH5", "NYMEX", 1000.0, 0.01, "20250220"),
        ("FUT:CL@NYMEX:202504", "CLJ5", "NYMEX", 1000.0, 0.01, "20250320")]
    bars = pl.read_delta(location.bars)
    assert bars["close"].is_between(40, 120).all()
    cents = bars["close"] * 100
    assert ((cents - cents.round()).abs() < 1e-6).all()  # on the cent tick
    # RTH 09:30-16:00 New York: 7 bars a session, 4 (09:30 to 12:00) on Presidents' Day's 12:00 Chicago close
    per_contract = bars.group_by("symbol").len().sort("symbol").rows()
    assert per_contract == [(symbol, 7 * 7 + 4) for symbol in CRUDE]


def test_crude_oil_rolls_on_the_globex_calendar_from_the_cli(crude: tuple[TableLocation, IngestReport]) -> None:
    location, _ = crude
    code, output = roll_cli(location, "CL", "--exchange", "NYMEX", "--rule", "days:5", "--adjust", "difference",
                            "--json")
    assert code == 0, output
    report = json.loads(output)
    # 5 sessions before 02-20: 02-19, 18, 17 (Presidents' Day: a CME session), 14, 13
    [roll] = report["rolls"]
    assert (roll["roll_session"], roll["from_instrument"], roll["to_instrument"]) == ("2025-02-13", *CRUDE)
    assert [(c["instrument_id"], c["first_session"]) for c in report["contracts"]] == [
        ("FUT:CL@NYMEX:202503", "2025-02-10"), ("FUT:CL@NYMEX:202504", "2025-02-13")]
    raw = pl.read_delta(location.bars)
    gap_ts = datetime.fromisoformat(roll["gap_ts"])
    assert gap_ts == datetime(2025, 2, 12, 20, tzinfo=UTC)  # the 15:00 New York bar of 02-12
    closes = dict(raw.filter(pl.col("ts") == gap_ts).select("symbol", "close").iter_rows())
    assert roll["price_gap"] == pytest.approx(closes[CRUDE[1]] - closes[CRUDE[0]])
    series = read_series(location, {"root": "CL", "exchange": "NYMEX", "bar_size": "1 hour",
                                    "what_to_show": "TRADES", "use_rth": True, "rule": "days:5",
                                    "adjustment": "difference"})
    assert series.height == report["bars"] == 3 * 7 + 4 * 7 + 4  # CLH5 02-10..12, CLJ5 02-13..19


def test_a_crude_oil_backtest_pays_1000_barrels_a_point(crude: tuple[TableLocation, IngestReport]) -> None:
    location, _ = crude
    request = BacktestRequest(symbols=(CRUDE[1],), strategy="buy_and_hold", params={}, start=CRUDE_WEEKS[0],
                              end=CRUDE_WEEKS[1], bar_size="1 hour", cash=500_000, sizing="fixed_shares", size=3)
    [run] = run_request(request, location).results
    assert (run.terms.multiplier, run.terms.min_tick, run.terms.calendar, run.commission) == (
        1000.0, 0.01, "CME_GLOBEX", "ibkr_futures")
    trade = run.result.trades.row(0, named=True)
    fee = 0.85 + 1.50 + 0.02  # IBKR Fixed + NYMEX's CL fee + NFA fee, per contract and order
    assert trade["size"] == 3 and trade["commission"] == pytest.approx(2 * 3 * fee)
    points = trade["exit_price"] - trade["entry_price"]
    assert points != 0 and trade["pnl"] == pytest.approx(points * 1000 * 3 - 2 * 3 * fee)
    assert run.result.metrics.final_equity == pytest.approx(500_000 + trade["pnl"])


def test_the_simulator_refuses_an_end_date_for_a_continuous_future_as_ib_does() -> None:
    with client_at_now(client_id=81) as ib:
        bars = ib.reqHistoricalData(ContFuture("ES", "CME"), "", "2 D", "1 hour", "TRADES", True)
        assert bars
        refused = ib.run(answer_or_refusal(  # ib_async logs a 321 and would leave the request waiting
            ib, ContFuture("ES", "CME"), lambda own: ib.reqHistoricalDataAsync(
                own, datetime(2025, 1, 9, 21, tzinfo=UTC), "2 D", "1 hour", "TRADES", True), timeout=5))
        assert isinstance(refused, Refusal), refused
        assert refused.code == 321 and CONTFUT_END_CAUSE in refused.text
        dated = ib.reqHistoricalData(Future("ES", "202503", "CME"), datetime(2025, 1, 9, 21, tzinfo=UTC), "2 D",
                                     "1 hour", "TRADES", True)
        assert dated  # a dated contract takes an end date


def test_an_ingest_request_refuses_an_end_date_for_a_continuous_future() -> None:
    with pytest.raises(ValueError, match="served only up to now"):
        IngestRequest(symbols=("CONTFUT:ES@CME",), end=datetime(2025, 1, 10, tzinfo=UTC))
    assert IngestRequest(symbols=("contfut:es@cme",)).symbols == ("CONTFUT:ES@CME",)


@pytest.fixture
def tws() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        yield sim


def test_ibs_continuous_future_is_ingested_as_a_whole_series_snapshot(tws: EmbeddedSimulator,
                                                                     tmp_path: Path) -> None:
    location = TableLocation(tmp_path)
    [dated] = ingest(tws, location, "FUT:ES@CME:202503", start=datetime(2025, 1, 6, tzinfo=UTC), end=NOW).symbols
    assert dated.status == "ok", dated.error
    [contfut] = ingest(tws, location, "CONTFUT:ES@CME", lookback_days=5, client_id=83).symbols  # up to TWS's now
    assert (contfut.symbol, contfut.status, contfut.chunks_fetched) == ("CONTFUT:ES@CME", "ok", 1), contfut.error
    ib_key = {"root": "ES", "exchange": "CME", "bar_size": "1 hour", "what_to_show": "TRADES", "use_rth": True,
              "rule": IB_CONTFUT_RULE, "adjustment": IB_ADJUSTMENT}
    snapshot = read_series(location, ib_key)
    assert snapshot.height == contfut.rows_inserted > 0 and snapshot["ts"].is_unique().all()
    assert snapshot["contract"].is_null().all() and snapshot["bars_version"].is_null().all()
    assert snapshot["close"].is_between(4000, 6500).all() and snapshot["ts"].max() < NOW
    # the bars table holds the dated contract alone: the CONTFUT bars would share the front's conId (ESH5)
    bars = pl.read_delta(location.bars)
    assert set(bars["symbol"]) == {"FUT:ES@CME:202503"} and set(bars["con_id"]) == {listed("ESH5", "CME")}
    instruments = read_instruments(location)
    assert instruments.select("instrument_id", "sec_type").rows() == [("FUT:ES@CME:202503", "FUT")]

    again = ingest(tws, location, "CONTFUT:ES@CME", lookback_days=2, client_id=82)
    [replaced] = again.symbols
    assert replaced.status == "ok" and replaced.table_version == contfut.table_version + 1  # type: ignore[operator]
    shorter = read_series(location, ib_key)  # the new snapshot replaced the old one, no mix of the two
    assert 0 < shorter.height < snapshot.height and shorter.height == replaced.rows_inserted
    assert_frame_equal(shorter.drop("built_at"),
                       snapshot.filter(pl.col("ts") >= shorter["ts"].min()).drop("built_at"))
