"""Running a `BacktestRequest`: `run_request` reads one pinned version of the bars table and backtests each
symbol; the run becomes backtest_results rows, and missing bars an error that says how to fetch them."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl

from ibkr_flows.backtest.adjust import adjust_bars
from ibkr_flows.backtest.continuous_bars import is_continuous, read_continuous
from ibkr_flows.backtest.contract_terms import US_STOCK, ContractTerms, read_contract_terms
from ibkr_flows.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from ibkr_flows.backtest.errors import NoBarsError
from ibkr_flows.backtest.metrics import metric_values
from ibkr_flows.backtest.request import BacktestRequest, BacktestSettings, GridRequest
from storage.bars_table import read_bars
from storage.continuous_table import IB_CONTFUT_RULE
from storage.corporate_actions_table import read_actions
from storage.location import TableLocation
from storage.results_table import RunTables, result_row
from storage.results_table import store_run as store_run_rows


@dataclass(frozen=True)
class SymbolBacktest:
    symbol: str
    result: BacktestResult
    terms: ContractTerms = US_STOCK
    """The instrument's terms the run used (from the instruments table)."""
    commission: str = "ibkr_fixed"
    """The commission model charged (the request's `auto` resolved for this instrument)."""


@dataclass(frozen=True)
class BacktestRun:
    run_id: str
    request: BacktestRequest
    table_version: int
    code_version: str
    results: list[SymbolBacktest]
    read_s: float
    """Reading the bars (every symbol)."""
    engine_s: float
    """The engine (every symbol)."""

    def summary_lines(self) -> list[str]:
        """One line per symbol: the return against buy and hold, the Sharpe ratio, the trades."""
        lines = []
        for s in self.results:
            m = s.result.metrics
            sharpe = m.sharpe if m.sharpe is None else round(m.sharpe, 3)
            lines.append(f"{s.symbol}: return {m.total_return_pct:.2f}% (buy and hold "
                         f"{m.buy_and_hold_return_pct:.2f}%), sharpe {sharpe}, {m.trades} trades")
        return lines

    def result_rows(self, flow_run_id: str) -> list[dict[str, object]]:
        """This run as backtest_results rows, one per symbol."""
        r = self.request
        pinned = r.model_copy(update={"table_version": self.table_version}).model_dump_json()
        return [
            result_row(identity={
                "run_id": self.run_id, "flow_run_id": flow_run_id, "symbol": s.symbol, "strategy": r.strategy,
                "params": dataclasses.asdict(s.result.strategy), "bar_size": r.bar_size,
                "what_to_show": r.what_to_show, "use_rth": r.use_rth, "range_start": r.start, "range_end": r.end,
                "bars_version": self.table_version, "code_version": self.code_version, "cash": r.cash,
                "commission": s.commission, "slippage_bps": r.slippage_bps, "sizing": r.sizing, "mode": r.mode,
                "request": pinned, "adjust": r.adjust, "currency": s.result.currency,
            }, metrics=metric_values(s.result.metrics))
            for s in self.results
        ]


class MissingBarsError(NoBarsError):
    """No stored bars for a symbol in the range; the message carries the command that would fetch them (or, for
    a rolled continuous future, build them)."""

    def __init__(self, request: BacktestSettings, symbol: str, version: int | None) -> None:
        super().__init__(symbol, request.start, request.end, request.bar_size)
        self.version = version
        self.table = "continuous" if is_continuous(symbol) else "bars"
        self.series = request.series_key(symbol) if is_continuous(symbol) else None
        self.hint = request.ingest_hint(symbol)

    def __str__(self) -> str:
        at = "nothing stored yet" if self.version is None else f"version {self.version}"
        series = (f", series rule {self.series['rule']} adjustment {self.series['adjustment']}" if self.series
                  else "")
        verb = "build" if self.series and self.series["rule"] != IB_CONTFUT_RULE else "fetch"
        return f"{super().__str__()} ({self.table} table {at}{series}); {verb} them with:\n  {self.hint}"


def grid_config(location: TableLocation, request: GridRequest) -> BacktestConfig:
    """The grid's shared config with its symbol's terms from the instruments table, as a single run reads them,
    so a grid row equals `ibkr backtest run` with the same parameters (tick rounding, commission model)."""
    return request.config(terms=read_contract_terms(location, [request.symbol])[request.symbol])


def load_bars(location: TableLocation, request: BacktestSettings, symbol: str, version: int | None
              ) -> tuple[pl.DataFrame, int]:
    """The symbol's bars at `version` (None: the latest), with prices as `request.adjust` asks (`adjust`), its
    corporate actions dated on its instrument's sessions. A continuous future's come from the continuous table
    (`continuous_bars`), `version` being that table's."""
    if is_continuous(symbol):
        bars, at = read_continuous(location, request.series_key(symbol), request.start, request.end, version)
        if bars.is_empty() or at is None:
            raise MissingBarsError(request, symbol, at)
        return bars, at
    bars, read_version = read_bars(location, [symbol], columns=["ts", "open", "high", "low", "close", "volume"],
                                   bar_size=request.bar_size, start=request.start, end=request.end,
                                   what_to_show=request.what_to_show, use_rth=request.use_rth, version=version)
    if bars.is_empty():
        raise MissingBarsError(request, symbol, read_version)
    actions = read_actions(location, symbol)
    if actions.height:
        calendar = read_contract_terms(location, [symbol])[symbol].calendar
        bars = adjust_bars(bars, actions, request.adjust, bar_size=request.bar_size, read_version=read_version,
                           calendar=calendar)
    return bars, read_version


def run_request(request: BacktestRequest, location: TableLocation) -> BacktestRun:
    """Backtest every symbol on one table version (pinned by the first read, so all symbols see the same data),
    each with its instrument's terms and, for `commission="auto"`, its class's commission model."""
    started = time.perf_counter()
    version = request.table_version
    bars = {}
    for symbol in request.symbols:
        bars[symbol], version = load_bars(location, request, symbol, version)
    terms = read_contract_terms(location, request.symbols)  # after the bars: missing bars are the error to report
    read_s, engine_s = time.perf_counter() - started, 0.0
    results = []
    for symbol in request.symbols:
        started = time.perf_counter()
        config = request.config(terms=terms[symbol])
        result = run_backtest(bars[symbol], request.bar_size, config)
        results.append(SymbolBacktest(symbol, result, terms[symbol], commission_name(config.commission)))
        engine_s += time.perf_counter() - started
    assert version is not None
    return BacktestRun(run_id=uuid.uuid4().hex[:12], request=request, table_version=version,
                       code_version=code_version(), results=results, read_s=read_s, engine_s=engine_s)


def commission_name(model: object) -> str:
    """The name results rows record for a commission model: its `name`, or its class for a user's own model."""
    return str(getattr(model, "name", type(model).__name__))


def code_version() -> str:
    """The git commit of a checkout (with `+dirty` for local changes), else the installed package version."""
    return _code_version_lookup().result()


def prefetch() -> None:
    """Start now, on threads, what a one-run command would otherwise wait for later, so that it overlaps reading
    the bars (Delta and Parquet I/O release the GIL): the code version lookup (two git calls, ~10 ms), and
    numpy.ma, which numpy loads lazily and polars needs for every array it turns into a Series (~8 ms, the
    engine's first result frame)."""
    _code_version_lookup()
    if "numpy.ma" not in sys.modules:
        threading.Thread(target=importlib.import_module, args=("numpy.ma",), name="numpy.ma import",
                         daemon=True).start()


@cache
def _code_version_lookup() -> Future[str]:
    """One lookup per process, on a thread (git's processes run while Python works)."""
    found: Future[str] = Future()

    def look_up() -> None:
        try:
            found.set_result(_find_code_version())
        except BaseException as exc:  # handed to whoever waits for the result
            found.set_exception(exc)

    threading.Thread(target=look_up, name="code-version", daemon=True).start()
    return found


def _find_code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        git = {"cwd": root, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "text": True}
        head = subprocess.Popen(["git", "rev-parse", "--short=12", "HEAD"], **git)  # type: ignore[call-overload]
        status = subprocess.Popen(["git", "status", "--porcelain", "--untracked-files=no"], **git)  # type: ignore[call-overload]
        sha, _ = head.communicate(timeout=5)
        changes, _ = status.communicate(timeout=5)
        if head.returncode or status.returncode:
            raise subprocess.SubprocessError("not a git checkout")
        return f"{sha.strip()}+dirty" if changes.strip() else sha.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return f"ibkr-flows {version('ibkr-flows')}"
        except PackageNotFoundError:
            return "unknown"


def store_run(location: TableLocation, run: BacktestRun, flow_run_id: str, opened: RunTables | None = None) -> int:
    """The run's trades, then its rows (`storage.results_table.store_run`: a retried store never doubles a run; a
    results row implies its trades are stored). `opened`: the tables as `open_run_tables` began opening them."""
    return store_run_rows(location, run.run_id, {s.symbol: s.result.trades for s in run.results},
                          run.result_rows(flow_run_id), opened)
