"""A grid run's rows in the grid_results table, with what ran on which data: the CLI and the flow store alike."""

from __future__ import annotations

import polars as pl

from ibkr_flows.backtest.grid.report import GridReport
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import code_version
from storage.grid_results_table import append_grid_results, grid_rows
from storage.location import TableLocation


def store_grid_reports(location: TableLocation, reports: dict[str, GridReport], request: GridRequest, *,
                       table_version: int, run_id: str, flow_run_id: str) -> int:
    """Every combination of every symbol in one commit under one run id (insert-if-absent on the run: a retried
    store never doubles them), ranked within its symbol; each row's request names its own symbol and the table
    version it read, so it re-runs like a one-symbol grid."""
    rows = []
    for symbol, report in reports.items():
        one = request.for_symbol(symbol).model_copy(update={"table_version": table_version})
        rows.append(grid_rows(report.results, list(request.grid), {
            "run_id": run_id, "flow_run_id": flow_run_id, "symbol": symbol, "strategy": request.strategy,
            "rank_by": request.rank_by, "bar_size": request.bar_size, "range_start": request.start,
            "range_end": request.end, "bars_version": table_version, "code_version": code_version(),
            "request": one.model_dump_json()}))
    return append_grid_results(location, run_id, pl.concat(rows))
