"""Every option works or says why within seconds: each what-to-show value x a small and a large bar size x RTH/ETH
stores bars, and each combination IB refuses ends at once with IB's reason and the fix, writes nothing and raises
no connection alert. Cells run the `ingest-bars` flow on a real (ephemeral) Prefect API against the simulator; a
few run the `ibkr data ingest` command itself; the refusals IB gives on the wire are also sent directly.

The matrix is written as a markdown table to `build/option-matrix.md` (`IBKR_OPTION_MATRIX_PATH` overrides it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.cli.errors import describe
from ibkr_flows.ib.historical import MAX_DURATION, WHAT_TO_SHOW
from ibkr_flows.ingest.errors import IngestIncompleteError, RequestRejectedError, SymbolError, UnknownSymbolError
from ibkr_flows.ingest.fetch import IBSession, RetryPolicy, fetch_chunk, qualify
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.plan import WHOLE_SERIES, Chunk
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import IBKRSettings, TWSEndpoint
from ibkr_flows.sim.embedded import EmbeddedSimulator
from storage.bars_table import table_version
from storage.location import TableLocation

pytestmark = pytest.mark.usefixtures("prefect_harness")

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)  # Friday evening, after the close: the simulator's clock
REFUSED_WITHIN_S = 15.0
"""A refusal must come well before the 60 s request timeout (and its retries) could."""

INSTRUMENTS: dict[str, str] = {"US stock": "AAPL"}
"""Parametrization point for instrument types: CASH (a forex pair, where IB refuses TRADES and serves MIDPOINT /
BID / ASK) joins here with the instruments issue, with its own refused cell for TRADES."""
BAR_SIZES: dict[str, tuple[datetime, int]] = {"1 min": (datetime(2024, 7, 11, tzinfo=UTC), 1),
                                              "1 day": (datetime(2024, 7, 1, tzinfo=UTC), 10)}
"""A small and a large bar size, each with its range: a start (end = NOW) for series fetched from a watermark,
lookback days for the ones IB serves only up to now (ADJUSTED_LAST: one request, so within IB's longest
duration for the bar size, '1 D' for 1-minute bars)."""


@dataclass(frozen=True)
class Cell:
    combination: str
    outcome: str
    reason: str
    seconds: float


MATRIX: list[Cell] = []


@pytest.fixture(scope="module", autouse=True)
def matrix_file() -> Iterator[None]:
    """Write the cells this module ran, in run order, as the markdown table the README carries."""
    yield
    path = Path(os.environ.get("IBKR_OPTION_MATRIX_PATH", Path(__file__).parents[1] / "build" / "option-matrix.md"))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| combination | outcome | reason | time |", "|---|---|---|---:|"]
    lines += [f"| {c.combination} | {c.outcome} | {c.reason.replace('|', '/')} | {c.seconds:.2f} s |" for c in MATRIX]
    path.write_text("\n".join(lines) + "\n")


def _request(symbol: str, what_to_show: str, bar_size: str, use_rth: bool, **extra: Any) -> IngestRequest:
    start, lookback = BAR_SIZES.get(bar_size, BAR_SIZES["1 day"])
    span: dict[str, Any] = {"lookback_days": lookback} if what_to_show in WHOLE_SERIES else {"start": start,
                                                                                          "end": NOW}
    return IngestRequest(symbols=(symbol,), what_to_show=what_to_show, bar_size=bar_size, use_rth=use_rth,
                         quality_engine="polars", **(span | extra))


def _run_flow(request: IngestRequest, tmp_path: Path) -> tuple[Any, float]:
    """The flow against its own simulator (a fresh port is a fresh pacing ledger: cells never wait on each other)."""
    from flows.ingest import ingest_flow

    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        started = time.perf_counter()
        state = ingest_flow(request=request, tws=TWSEndpoint(host=sim.host, port=sim.port, client_id=30),
                            data_dir=str(tmp_path), return_state=True)
        return state, time.perf_counter() - started


def _name(symbol: str, what_to_show: str, bar_size: str, use_rth: bool) -> str:
    kind = next(k for k, s in INSTRUMENTS.items() if s == symbol) if symbol in INSTRUMENTS.values() else symbol
    return f"{kind} {what_to_show} `{bar_size}` {'RTH' if use_rth else 'ETH'}"


@pytest.mark.parametrize("use_rth", [True, False], ids=["rth", "eth"])
@pytest.mark.parametrize("bar_size", list(BAR_SIZES))
@pytest.mark.parametrize("what_to_show", WHAT_TO_SHOW)
@pytest.mark.parametrize("symbol", list(INSTRUMENTS.values()), ids=list(INSTRUMENTS))
def test_every_option_stores_bars(tmp_path: Path, symbol: str, what_to_show: str, bar_size: str,
                                  use_rth: bool) -> None:
    state, elapsed = _run_flow(_request(symbol, what_to_show, bar_size, use_rth), tmp_path)
    assert state.is_completed(), state.message
    stored = state.result().symbols[0]
    assert stored.rows_inserted > 0 and stored.rows_inserted + stored.rows_quarantined == stored.rows_fetched
    how = "one request up to now, series replaced" if what_to_show in WHOLE_SERIES else \
        f"{stored.chunks_fetched} request(s)"
    MATRIX.append(Cell(_name(symbol, what_to_show, bar_size, use_rth), f"{stored.rows_inserted} bars stored",
                       f"{how}; {stored.rows_quarantined} quarantined", elapsed))


def _assert_refused_by_flow(state: Any, elapsed: float, tmp_path: Path, error_type: type[SymbolError]
                            ) -> SymbolError:
    """Failed fast with the typed error, nothing written, and not a connection failure (no alert fires)."""
    from ibkr_flows.alerts.failures import tws_error_in

    assert state.is_failed()
    failure = state.result(raise_on_failure=False)
    assert isinstance(failure, IngestIncompleteError)
    assert tws_error_in(state) is None  # the one test both alert routes (flow hook, preflight event) apply
    report = failure.report.symbols[0]
    assert report.error_type == error_type.__name__, report.error
    assert table_version(TableLocation(tmp_path)) is None
    assert elapsed < REFUSED_WITHIN_S
    return error_type(report.symbol, report.error or "")


def test_refused_duration_beyond_the_bar_size_limit(tmp_path: Path) -> None:
    """1-second ADJUSTED_LAST bars for 10 days would be one up-to-now request far beyond IB's longest duration for
    that size (TWS: 162 'Time length exceed max.'): refused before sending, with the limit and the fix."""
    state, elapsed = _run_flow(_request("AAPL", "ADJUSTED_LAST", "1 secs", True, lookback_days=10), tmp_path)
    error = _assert_refused_by_flow(state, elapsed, tmp_path, RequestRejectedError)
    assert f"at most {MAX_DURATION['1 secs']}" in error.reason and "Fix:" in error.reason
    MATRIX.append(Cell("US stock ADJUSTED_LAST `1 secs` RTH, 10 days", "refused (flow failed, nothing written)",
                       error.reason, elapsed))


def test_refused_unknown_contract(tmp_path: Path) -> None:
    state, elapsed = _run_flow(_request("ZZZZ", "TRADES", "1 day", True), tmp_path)
    error = _assert_refused_by_flow(state, elapsed, tmp_path, UnknownSymbolError)
    assert "error 200" in error.reason
    MATRIX.append(Cell("unknown contract ZZZZ TRADES `1 day`", "refused (flow failed, nothing written)",
                       error.reason, elapsed))


@pytest.mark.parametrize(("combination", "build", "message"), [
    ("ADJUSTED_LAST with an end date", lambda: _request("AAPL", "ADJUSTED_LAST", "1 day", True, end=NOW),
     "leave end empty"),
    ("unknown bar size `7 mins`", lambda: _request("AAPL", "TRADES", "7 mins", True), "7 mins"),
], ids=["adjusted-last-end-date", "unknown-bar-size"])
def test_refused_before_anything_is_sent(combination: str, build: Callable[[], IngestRequest], message: str
                                         ) -> None:
    """What IB is documented to refuse is refused by the request model: the flow's form, the CLI and the engine
    never send it."""
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message) as refused:
        build()
    MATRIX.append(Cell(combination, "refused before connecting (IngestRequest)", describe(refused.value),
                       time.perf_counter() - started))


async def _send_anyway(sim: EmbeddedSimulator, tmp_path: Path, chunk: Chunk, bar_size: str, what_to_show: str
                       ) -> RequestRejectedError:
    session = IBSession(IBKRSettings(host=sim.host, port=sim.port, client_id=31, connect_timeout=4.0),
                        RetryPolicy())
    try:
        await session.ensure_connected()
        details = await qualify(session, "AAPL", 10)
        with pytest.raises(RequestRejectedError) as refused:
            await fetch_chunk(session, PacingBudget(tmp_path / "ledger.json"), details.contract, chunk,
                              bar_size=bar_size, what_to_show=what_to_show, use_rth=True, timeout=60)
        return refused.value
    finally:
        session.close()


@pytest.mark.parametrize(("combination", "bar_size", "what_to_show", "code", "text"), [
    ("ADJUSTED_LAST with an end date, sent to TWS anyway", "1 day", "ADJUSTED_LAST", 321, "adjusted last"),
    ("unknown bar size `7 mins`, sent to TWS anyway", "7 mins", "TRADES", 321, "bar size setting is invalid"),
    ("duration beyond the bar size's limit (`1 secs`, 10 D), sent to TWS anyway", "1 secs", "TRADES", 162,
     "time length exceed max"),
], ids=["adjusted-last-end-date", "unknown-bar-size", "duration-beyond-limit"])
def test_a_refusal_on_the_wire_is_the_answer(tmp_path: Path, combination: str, bar_size: str, what_to_show: str,
                                             code: int, text: str) -> None:
    """TWS answers the first two with 321, which ib_async only logs as a warning and leaves the request waiting
    (60 s, then the retries, then a blamed connection). The error carrying the request's id is its answer: it
    ends the request at once, typed, with IB's code and text and the fix."""
    chunk = Chunk(datetime(2024, 7, 1, tzinfo=UTC), NOW, "10 D")
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        started = time.perf_counter()
        error = asyncio.run(_send_anyway(sim, tmp_path, chunk, bar_size, what_to_show))
        elapsed = time.perf_counter() - started
    assert error.code == code and text in error.reason.lower() and error.fix
    assert elapsed < REFUSED_WITHIN_S
    MATRIX.append(Cell(combination, f"TWS error {code}, request ended at once", error.reason, elapsed))


# --- the command itself, for a representative subset ----------------------------------------------------------------

def _cli(tmp_path: Path, sim: EmbeddedSimulator, *args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["data", "ingest", *args, "--quality-engine", "polars", "--host", sim.host,
                                      "--port", str(sim.port), "--client-id", "32", "--data-dir", str(tmp_path)],
                                env={"COLUMNS": "200"})
    return result.exit_code, result.output, time.perf_counter() - started


def test_cli_adjusted_last_daily_runs_and_reruns_replace_the_series(tmp_path: Path) -> None:
    """The command of the issue: 489 s and a connection alert before; now two runs of seconds, the second
    replacing the series with the new snapshot (one commit)."""
    args = ("AAPL", "--what-to-show", "ADJUSTED_LAST", "--bar-size", "1 day", "--lookback-days", "10")
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        code, output, elapsed = _cli(tmp_path, sim, *args)
        assert code == 0, output
        first = table_version(TableLocation(tmp_path))
        code, output, again = _cli(tmp_path, sim, *args[:-1], "3")
    assert code == 0, output
    assert table_version(TableLocation(tmp_path)) == first + 1  # type: ignore[operator]
    from storage.bars_table import read_bars

    bars, _ = read_bars(TableLocation(tmp_path), ["AAPL"], columns=["ts"], bar_size="1 day",
                        start=datetime(2024, 1, 1, tzinfo=UTC), end=NOW, what_to_show="ADJUSTED_LAST")
    assert bars.height == 3  # the 3-day snapshot replaced the 10-day one: no bars of an older adjustment remain
    MATRIX.append(Cell("CLI: `ibkr data ingest AAPL --what-to-show ADJUSTED_LAST --bar-size \"1 day\" "
                       "--lookback-days 10`, then `--lookback-days 3`", "exit 0, then exit 0 (series replaced: "
                       "3 bars)", "", elapsed + again))


@pytest.mark.parametrize(("combination", "args", "exit_code", "message"), [
    ("CLI: ADJUSTED_LAST with --end", ("AAPL", "--what-to-show", "ADJUSTED_LAST", "--bar-size", "1 day", "--end",
                                       "2024-07-12"), 2, "leave end empty"),
    ("CLI: unknown contract", ("ZZZZ", "--bar-size", "1 day", "--start", "2024-07-01", "--end", "2024-07-12"), 1,
     "error 200"),
    ("CLI: ADJUSTED_LAST `1 secs` for 10 days", ("AAPL", "--what-to-show", "ADJUSTED_LAST", "--bar-size", "1 secs",
                                                 "--lookback-days", "10"), 1, "Fix: a larger --bar-size"),
], ids=["adjusted-last-end", "unknown-contract", "duration-beyond-limit"])
def test_cli_refusals_exit_with_the_reason(tmp_path: Path, combination: str, args: tuple[str, ...],
                                           exit_code: int, message: str) -> None:
    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        code, output, elapsed = _cli(tmp_path, sim, *args)
    assert code == exit_code and message in " ".join(output.split()), output
    assert "Traceback" not in output and elapsed < REFUSED_WITHIN_S
    assert table_version(TableLocation(tmp_path)) is None
    last = [line for line in output.splitlines() if line.strip()][-1].strip()
    MATRIX.append(Cell(combination, f"exit {code}, nothing written", last, elapsed))
