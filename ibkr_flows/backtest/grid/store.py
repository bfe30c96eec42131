"""A grid run's rows in the grid_results table, with what ran on which data: the CLI and the flow store alike."""

from __future__ import annotations

from ibkr_flows.backtest.grid.report import GridReport
from ibkr_flows.backtest.request import GridRequest
from ibkr_flows.backtest.runner import code_version
from storage.grid_results_table import append_grid_results, grid_rows
from storage.location import TableLocation


def store_grid_report(location: TableLocation, report: GridReport, request: GridRequest, *, table_version: int,
                      run_id: str, flow_run_id: str) -> int:
    """Append every combination (insert-if-absent on run and parameters: a retried store never doubles them)."""
    return append_grid_results(location, run_id, grid_rows(report.results, list(request.grid), {
        "run_id": run_id, "flow_run_id": flow_run_id, "symbol": request.symbol, "strategy": request.strategy,
        "rank_by": request.rank_by, "bar_size": request.bar_size, "range_start": request.start,
        "range_end": request.end, "bars_version": table_version, "code_version": code_version(),
        "request": request.model_copy(update={"table_version": table_version}).model_dump_json()}))
