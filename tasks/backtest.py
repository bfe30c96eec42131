"""Prefect tasks around `backtest.runner`: run on a pinned table version, publish artifacts, store results."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from ibkr_flows.backtest.charts import equity_chart_png
from ibkr_flows.backtest.report import run_markdown, trade_rows
from ibkr_flows.backtest.runner import BacktestRequest, BacktestRun, run_request
from storage.location import TableLocation
from storage.results_table import append_backtest_results


@task(name="run-backtest", task_run_name="backtest {request.strategy} {request.symbols}")
def run_backtest_task(request: BacktestRequest, location: TableLocation) -> BacktestRun:
    return run_request(request, location)


@task(name="publish-backtest")
def publish_backtest(run: BacktestRun) -> None:
    """Summary with metrics and an inline equity/drawdown chart per symbol, and the trades as a table."""
    charts = {s.symbol: equity_chart_png(s.result, f"{s.symbol} · {run.request.strategy} {dict(run.request.params)}")
              for s in run.results}
    create_markdown_artifact(key="backtest-summary", markdown=run_markdown(run, charts),
                             description=f"{run.request.strategy} on {', '.join(run.request.symbols)}")
    create_table_artifact(key="backtest-trades", table=trade_rows(run),
                          description="trades (first 500 per symbol)")


@task(name="store-backtest-results")
def store_backtest_results(run: BacktestRun, location: TableLocation) -> int:
    return append_backtest_results(location, run.result_rows(str(flow_run.id or "local")))

