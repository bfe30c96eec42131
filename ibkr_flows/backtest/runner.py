"""A backtest as users ask for it: symbols and a date range of stored bars, a strategy and its costs.

`BacktestRequest` holds plain, serialisable values (what the CLI flags and the Prefect form carry) and is validated
before any data is read; `run_request` reads one pinned version of the bars table and backtests each symbol.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal, get_args

import polars as pl

from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed, IBKRTiered, NoCommission, PercentCommission
from ibkr_flows.backtest.engine import BacktestConfig, BacktestResult, Mode, run_backtest
from ibkr_flows.backtest.errors import BacktestError, NoBarsError
from ibkr_flows.backtest.metrics import metric_values
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, Sizing
from ibkr_flows.ib.historical import bar_step
from storage.bars_table import read_bars
from storage.location import TableLocation
from storage.results_table import result_row

CommissionName = Literal["ibkr_fixed", "ibkr_tiered", "percent", "none"]
SizingName = Literal["all_in", "fixed_shares", "fixed_fraction"]


@dataclass(frozen=True)
class BacktestRequest:
    strategy: str
    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    params: Mapping[str, object] = field(default_factory=dict)
    bar_size: str = "1 min"
    what_to_show: str = "TRADES"
    use_rth: bool = True
    cash: float = 100_000.0
    commission: CommissionName = "ibkr_fixed"
    commission_rate: float = 0.0
    """Only for `commission="percent"`: a fraction of trade value (0.001 = 0.1%)."""
    slippage_bps: float = 0.0
    sizing: SizingName = "all_in"
    size: float = 0.0
    """Shares for `fixed_shares`, a fraction of equity for `fixed_fraction`."""
    mode: Mode = "long_only"
    table_version: int | None = None
    """Read this version of the bars table (time travel); default the latest."""

    def __post_init__(self) -> None:
        bar_step(self.bar_size)
        if not self.symbols:
            raise BacktestError("no symbols given")
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is None:
                raise BacktestError(f"{name} must be timezone-aware (UTC)")
        if self.start >= self.end:
            raise BacktestError(f"start {self.start:%Y-%m-%d %H:%M} is not before end {self.end:%Y-%m-%d %H:%M}")
        if self.start > datetime.now(UTC):
            raise BacktestError(f"start {self.start:%Y-%m-%d %H:%M} is in the future: no bars can exist yet")
        if self.commission not in get_args(CommissionName):
            raise BacktestError(f"commission must be one of {', '.join(get_args(CommissionName))}, "
                                f"got {self.commission!r}")
        if self.sizing not in get_args(SizingName):
            raise BacktestError(f"sizing must be one of {', '.join(get_args(SizingName))}, got {self.sizing!r}")
        self.config()  # strategy name, parameters, cash, mode, costs: all checked before any data is read

    def commission_model(self) -> CommissionModel:
        if self.commission == "percent":
            return PercentCommission(self.commission_rate)
        return {"ibkr_fixed": IBKRFixed, "ibkr_tiered": IBKRTiered, "none": NoCommission}[self.commission]()

    def sizing_model(self) -> Sizing:
        if self.sizing == "fixed_shares":
            return FixedShares(int(self.size))
        if self.sizing == "fixed_fraction":
            return FixedFraction(self.size)
        return AllIn()

    def config(self) -> BacktestConfig:
        return BacktestConfig(strategy=self.strategy, params=dict(self.params), cash=self.cash,
                              commission=self.commission_model(), slippage_bps=self.slippage_bps,
                              sizing=self.sizing_model(), mode=self.mode)

    def ingest_hint(self, symbol: str) -> str:
        """The command that would fetch the missing bars."""
        session = "--rth" if self.use_rth else "--eth"
        return (f"ibkr data ingest {symbol} --bar-size '{self.bar_size}' --what-to-show {self.what_to_show} "
                f"{session} --start '{self.start:%Y-%m-%d %H:%M:%S}' --end '{self.end:%Y-%m-%d %H:%M:%S}'")


@dataclass(frozen=True)
class SymbolBacktest:
    symbol: str
    result: BacktestResult


@dataclass(frozen=True)
class BacktestRun:
    run_id: str
    request: BacktestRequest
    table_version: int
    code_version: str
    results: list[SymbolBacktest]
    elapsed_s: float
    """Reading the bars plus the engine, per the whole run."""

    def result_rows(self, flow_run_id: str) -> list[dict[str, object]]:
        """This run as backtest_results rows, one per symbol."""
        r = self.request
        return [
            result_row(identity={
                "run_id": self.run_id, "flow_run_id": flow_run_id, "symbol": s.symbol, "strategy": r.strategy,
                "params": dataclasses.asdict(s.result.strategy), "bar_size": r.bar_size,
                "what_to_show": r.what_to_show, "use_rth": r.use_rth, "range_start": r.start, "range_end": r.end,
                "bars_version": self.table_version, "code_version": self.code_version, "cash": r.cash,
                "commission": r.commission, "slippage_bps": r.slippage_bps, "sizing": r.sizing, "mode": r.mode,
            }, metrics=metric_values(s.result.metrics))
            for s in self.results
        ]


class MissingBarsError(NoBarsError):
    """No stored bars for a symbol in the range; the message carries the ingest command that would fetch them."""

    def __init__(self, request: BacktestRequest, symbol: str, version: int) -> None:
        super().__init__(symbol, request.start, request.end, request.bar_size)
        self.version = version
        self.hint = request.ingest_hint(symbol)

    def __str__(self) -> str:
        return f"{super().__str__()} (bars table version {self.version}); fetch them with:\n  {self.hint}"


def load_bars(location: TableLocation, request: BacktestRequest, symbol: str, version: int | None
              ) -> tuple[pl.DataFrame, int]:
    bars, read_version = read_bars(location, [symbol], columns=["ts", "open", "high", "low", "close", "volume"],
                                   bar_size=request.bar_size, start=request.start, end=request.end,
                                   what_to_show=request.what_to_show, use_rth=request.use_rth, version=version)
    if bars.is_empty():
        raise MissingBarsError(request, symbol, read_version)
    return bars, read_version


def run_request(request: BacktestRequest, location: TableLocation) -> BacktestRun:
    """Backtest every symbol on one table version (pinned by the first read, so all symbols see the same data)."""
    started = time.perf_counter()
    config = request.config()
    version = request.table_version
    results = []
    for symbol in request.symbols:
        bars, version = load_bars(location, request, symbol, version)
        results.append(SymbolBacktest(symbol, run_backtest(bars, request.bar_size, config)))
    assert version is not None
    return BacktestRun(run_id=uuid.uuid4().hex[:12], request=request, table_version=version,
                       code_version=code_version(), results=results, elapsed_s=time.perf_counter() - started)


@cache
def code_version() -> str:
    """The git commit of a checkout (with `+dirty` for local changes), else the installed package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=5).stdout.strip()
        return f"{sha}+dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        try:
            return f"ibkr-flows {version('ibkr-flows')}"
        except PackageNotFoundError:
            return "unknown"

