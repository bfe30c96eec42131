"""Prefect tasks around `backtest.runner`: run on a pinned table version, publish artifacts, store results.

The store and the publish retry what is transient for them (`tasks.retry`: commit conflicts, I/O, the Prefect API);
the run itself never retries (a failure there is in the data or the parameters) and is not cached: a single run
takes milliseconds to a second, and its result (equity curves included) would be pickled on every run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ibkr_flows.backtest.charts import equity_chart_png
from ibkr_flows.backtest.report import run_markdown, trade_rows
from ibkr_flows.backtest.request import BacktestRequest
from ibkr_flows.backtest.runner import BacktestRun, run_request, store_run
from storage.location import TableLocation
from tasks.retry import PUBLISH_POLICY, STORE_POLICY


@task(name="run-backtest", task_run_name="backtest {request.strategy} {request.symbols}", cache_policy=NO_CACHE)
def run_backtest_task(request: BacktestRequest, location: TableLocation) -> BacktestRun:
    return run_request(request, location)


@task(name="publish-backtest", cache_policy=NO_CACHE, **PUBLISH_POLICY)
def publish_backtest(run: BacktestRun) -> None:
    """Summary with metrics and an inline equity/drawdown chart per symbol, and the trades as a table."""
    charts = {s.symbol: equity_chart_png(s.result, f"{s.symbol} · {run.request.strategy} {dict(run.request.params)}")
              for s in run.results}
    create_markdown_artifact(key="backtest-summary", markdown=run_markdown(run, charts),
                             description=f"{run.request.strategy} on {', '.join(run.request.symbols)}")
    create_table_artifact(key="backtest-trades", table=trade_rows(run),
                          description="trades (first 500 per symbol)")


@task(name="store-backtest-results", cache_policy=NO_CACHE, **STORE_POLICY)
def store_backtest_results(run: BacktestRun, location: TableLocation) -> int:
    return store_run(location, run, str(flow_run.id or "local"))
