"""Past backtest runs as stored: list them, find one, and run it again from the bars-table version and the request
it recorded, to show whether its result is reproducible bit for bit.

A run id names either a single run (backtest_results, one row per symbol, trades in backtest_trades) or a grid run
(grid_results, one row per combination); the catalog looks in both, so every command takes any run id.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import polars as pl

from ibkr_flows.backtest.errors import BacktestError
from storage.grid_results_table import read_grid_results
from storage.location import TableLocation
from storage.results_table import METRIC_COLUMNS, NUMERIC_METRIC_COLUMNS, read_backtest_results
from storage.trades_table import TRADE_COLUMNS, TRADES_SCHEMA, read_trades

RunKind = Literal["backtest", "grid"]
LISTED_COLUMNS = ["run_id", "created_at", "symbol", "strategy", "params", "bar_size", "range_start", "range_end",
                  "bars_version", "total_return_pct", "sharpe", "max_drawdown_pct", "trades", "code_version"]
"""What `ibkr backtest results` shows per row; `--json` and `load_results` carry every column."""


class UnknownRunError(BacktestError):
    """A run id found in neither results table; names the latest ids so a typo is easy to spot."""

    def __init__(self, run_id: str, recent: list[str], *, ambiguous: bool = False) -> None:
        self.run_id = run_id
        self.recent = recent
        what = "matches several runs" if ambiguous else "is not a stored run"
        listed = ", ".join(recent) if recent else "none stored yet"
        super().__init__(f"run id {run_id!r} {what} ({'candidates' if ambiguous else 'latest'}: {listed}); "
                         "list runs with `ibkr backtest results`")


class NotRerunnableError(BacktestError):
    """A run stored before requests were recorded with it: its parameters are known, its costs are not."""


class UnknownColumnError(BacktestError):
    def __init__(self, column: str, known: list[str]) -> None:
        super().__init__(f"cannot sort by {column!r}; columns: {', '.join(known)}")


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    kind: RunKind
    rows: pl.DataFrame
    """One row per symbol (a single run) or per combination, best first (a grid run)."""
    trades: pl.DataFrame
    """A single run's trades; empty for a grid run (its combinations' trades are never stored)."""

    @property
    def first(self) -> dict[str, Any]:
        return self.rows.row(0, named=True)


def list_runs(location: TableLocation, *, kind: RunKind = "backtest", strategy: str | None = None,
              symbol: str | None = None, since: datetime | None = None, sort_by: str = "created_at",
              descending: bool = True, limit: int | None = None) -> pl.DataFrame:
    """Stored runs, newest first unless `sort_by` names another column (a metric, say). A grid run is listed as
    its best combination with the number of combinations tried."""
    if kind == "grid":
        table = read_grid_results(location)
        counts = table.group_by("run_id").len("combinations")
        table = table.filter(pl.col("rank") == 1).join(counts, on="run_id", how="left")
    else:
        table = read_backtest_results(location)
    if sort_by not in table.columns:
        raise UnknownColumnError(sort_by, table.columns)
    filters = [pl.col("strategy") == strategy] if strategy else []
    filters += [pl.col("symbol") == symbol.strip().upper()] if symbol else []
    filters += [pl.col("created_at") >= since] if since else []
    table = table.filter(*filters) if filters else table
    table = table.sort(sort_by, descending=descending, nulls_last=True)
    return table.head(limit) if limit is not None else table


def find_run(location: TableLocation, run_id: str) -> StoredRun:
    """The run `run_id` names; a unique prefix is enough (as with git commits)."""
    singles, grids = read_backtest_results(location), read_grid_results(location)
    ids = {**dict.fromkeys(singles["run_id"].unique().to_list(), "backtest"),
           **dict.fromkeys(grids["run_id"].unique().to_list(), "grid")}
    matches = [known for known in ids if known.startswith(run_id)] if run_id else []
    if len(matches) != 1:
        if matches:
            raise UnknownRunError(run_id, sorted(matches)[:10], ambiguous=True)
        latest = pl.concat([singles.select("run_id", "created_at"), grids.select("run_id", "created_at")])
        recent = latest.sort("created_at", descending=True)["run_id"].unique(maintain_order=True).head(5).to_list()
        raise UnknownRunError(run_id, recent)
    found = matches[0]
    if ids[found] == "grid":
        return StoredRun(found, "grid", grids.filter(pl.col("run_id") == found).sort("rank"),
                         pl.DataFrame(schema=TRADES_SCHEMA))
    return StoredRun(found, "backtest", singles.filter(pl.col("run_id") == found).sort("symbol"),
                     read_trades(location, found))


@dataclass(frozen=True)
class Difference:
    """One value the re-run computed differently: which row (symbol or grid parameters), which metric."""

    row: str
    metric: str
    stored: Any
    rerun: Any


@dataclass(frozen=True)
class RerunReport:
    run_id: str
    kind: RunKind
    bars_version: int
    code_version_stored: str
    code_version_now: str
    rows_compared: int
    values_compared: int
    differences: list[Difference] = field(default_factory=list)
    trades_equal: bool | None = None
    """None for a grid run (its trades are never stored)."""

    @property
    def identical(self) -> bool:
        return not self.differences and self.trades_equal is not False

    @property
    def code_changed(self) -> bool:
        return self.code_version_stored != self.code_version_now

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "kind": self.kind, "identical": self.identical, "bars_version": self.bars_version,
            "code_version_stored": self.code_version_stored, "code_version_now": self.code_version_now,
            "code_changed": self.code_changed, "rows_compared": self.rows_compared,
            "values_compared": self.values_compared, "trades_equal": self.trades_equal,
            "differences": [{"row": d.row, "metric": d.metric, "stored": _plain(d.stored), "rerun": _plain(d.rerun)}
                            for d in self.differences],
        }


def rerun(location: TableLocation, run_id: str) -> RerunReport:
    """Run a stored run again on the bars-table version it read, with the request it recorded, and compare every
    metric bit for bit (and, for a single run, every trade). Nothing is stored: a re-run is a check."""
    from ibkr_flows.backtest.runner import code_version

    stored = find_run(location, run_id)
    request_json = stored.first.get("request")
    if not request_json:
        raise NotRerunnableError(f"run {stored.run_id} was stored before runs recorded their request; its costs "
                                 "and sizing are unknown, so it cannot be re-run exactly")
    compare = _rerun_grid if stored.kind == "grid" else _rerun_single
    rows, differences, trades_equal = compare(location, stored, request_json)
    return RerunReport(
        run_id=stored.run_id, kind=stored.kind, bars_version=int(stored.first["bars_version"]),
        code_version_stored=str(stored.first["code_version"]), code_version_now=code_version(),
        rows_compared=rows, values_compared=rows * len(_compared_metrics(stored.kind)), differences=differences,
        trades_equal=trades_equal)


def _compared_metrics(kind: RunKind) -> list[str]:
    return list(NUMERIC_METRIC_COLUMNS if kind == "grid" else METRIC_COLUMNS)


def _rerun_single(location: TableLocation, stored: StoredRun, request_json: str
                  ) -> tuple[int, list[Difference], bool]:
    from ibkr_flows.backtest.metrics import metric_values
    from ibkr_flows.backtest.request import BacktestRequest
    from ibkr_flows.backtest.runner import run_request

    run = run_request(BacktestRequest.model_validate_json(request_json), location)
    fresh = {s.symbol: metric_values(s.result.metrics) for s in run.results}
    differences = []
    for row in stored.rows.iter_rows(named=True):
        again = fresh.get(row["symbol"], {})
        differences += [Difference(row["symbol"], m, row[m], again.get(m)) for m in _compared_metrics("backtest")
                        if not _same_bits(row[m], again.get(m))]
    fresh_trades = pl.concat([s.result.trades.select(list(TRADE_COLUMNS)).with_columns(symbol=pl.lit(s.symbol))
                              for s in run.results]).sort("symbol", "entry_time")
    stored_trades = stored.trades.select(*TRADE_COLUMNS, "symbol")
    return stored.rows.height, differences, _frames_same_bits(stored_trades, fresh_trades.cast(stored_trades.schema))


def _rerun_grid(location: TableLocation, stored: StoredRun, request_json: str
                ) -> tuple[int, list[Difference], None]:
    """Each symbol of the run again (a grid on several symbols stores, per symbol, a request naming that one
    symbol); a difference names its symbol when the run had several."""
    from ibkr_flows.backtest.grid import run_grid
    from ibkr_flows.backtest.request import GridRequest
    from ibkr_flows.backtest.runner import grid_config, load_bars

    symbols = stored.rows["symbol"].unique(maintain_order=True).to_list()
    differences = []
    for symbol in symbols:
        rows = stored.rows.filter(pl.col("symbol") == symbol)
        request = GridRequest.model_validate_json(rows["request"][0] or request_json)
        bars, _ = load_bars(location, request, symbol, request.table_version)
        report = run_grid(bars, request.bar_size, request.spec(), grid_config(location, request),
                          holdout=request.holdout, folds=request.folds)
        axes = list(request.grid)
        fresh = {json.dumps({a: row[a] for a in axes}, sort_keys=True): row
                 for row in report.results.select(*axes, *NUMERIC_METRIC_COLUMNS).iter_rows(named=True)}
        for row in rows.iter_rows(named=True):
            again = fresh.get(row["params"], {})
            label = row["params"] if len(symbols) == 1 else f"{symbol} {row['params']}"
            differences += [Difference(label, m, row[m], again.get(m)) for m in NUMERIC_METRIC_COLUMNS
                            if not _same_bits(row[m], again.get(m))]
    return stored.rows.height, differences, None


def _same_bits(a: Any, b: Any) -> bool:
    """Equal as stored: floats by their IEEE bits (so 0.0 differs from -0.0 and NaN equals NaN), ints as floats
    would lose nothing, other values by ==."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return struct.pack("<d", float(a)) == struct.pack("<d", float(b))
    return a == b


def _frames_same_bits(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    if a.shape != b.shape:
        return False
    return all(_same_bits(x, y) for left, right in zip(a.iter_rows(), b.iter_rows(), strict=True)
               for x, y in zip(left, right, strict=True))


def _plain(value: Any) -> Any:
    """A value strict JSON can carry: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.isoformat() if isinstance(value, datetime) else value
