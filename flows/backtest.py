"""Ad-hoc backtests from the Prefect UI (or a schedule): stored bars in, metrics, trades and a chart out."""

from __future__ import annotations

from prefect import flow

from ibkr_flows.alerts.hooks import alert_on_tws_failure
from ibkr_flows.backtest.request import BacktestRequest
from ibkr_flows.backtest.runner import BacktestRun
from storage.location import TableLocation
from tasks.backtest import publish_backtest, run_backtest_task, store_backtest_results


@flow(name="backtest", log_prints=True, on_failure=[alert_on_tws_failure])
def backtest_flow(
    request: BacktestRequest = BacktestRequest(),  # noqa: B008 - Prefect shows the default in the UI form
    data_dir: str | None = None,
) -> BacktestRun:
    """Backtest a registered strategy on stored bars; artifacts: summary with metrics and an equity/drawdown
    chart, the trades table; one row per symbol in the backtest_results table.

    Signals on bar close, fills at the next bar's open. `request.table_version` pins the bars table (time
    travel); empty = latest. Empty `data_dir` = IBKR_DATA_DIR.
    """
    location = TableLocation.at(data_dir)
    run = run_backtest_task(request, location)
    publish_backtest(run)
    store_backtest_results(run, location)
    for line in run.summary_lines():
        print(line)
    return run
