"""Ad-hoc backtests from the Prefect UI (or a schedule): stored bars in, metrics, trades and a chart out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from flows.ingest import BarSize, WhatToShow
from ibkr_flows.alerts.hooks import alert_on_tws_failure
from ibkr_flows.backtest.engine import Mode
from ibkr_flows.backtest.runner import BacktestRequest, BacktestRun, CommissionName, SizingName
from tasks.backtest import publish_backtest, run_backtest_task, store_backtest_results
from tasks.ingest import table_location


@flow(name="backtest", log_prints=True, on_failure=[alert_on_tws_failure])
def backtest_flow(
    strategy: str = "sma_crossover",
    params: dict[str, Any] = {"fast_period": 5, "slow_period": 10},  # noqa: B006 - literal default for the UI form
    symbols: list[str] = ["AAPL"],  # noqa: B006
    start: datetime = datetime.fromisoformat("2024-07-01T00:00:00+00:00"),  # noqa: B008
    end: datetime = datetime.fromisoformat("2024-07-13T00:00:00+00:00"),  # noqa: B008
    bar_size: BarSize = "1 min",
    what_to_show: WhatToShow = "TRADES",
    use_rth: bool = True,
    cash: float = 100_000.0,
    commission: CommissionName = "ibkr_fixed",
    commission_rate: float = 0.0,
    slippage_bps: float = 0.0,
    sizing: SizingName = "all_in",
    size: float = 0.0,
    mode: Mode = "long_only",
    table_version: int | None = None,
    data_dir: str | None = None,
) -> BacktestRun:
    """Backtest a registered strategy on stored bars; artifacts: summary with metrics and an equity/drawdown
    chart, the trades table; one row per symbol in the backtest_results table.

    Strategies: sma_crossover, ema_crossover (fast_period, slow_period), rsi_reversion (period, lower, upper),
    donchian_breakout (lookback), buy_and_hold. Signals on bar close, fills at the next bar's open. Commission:
    ibkr_fixed (USD 0.005/share, min 1, max 1%), ibkr_tiered, percent (commission_rate), none. Sizing: all_in,
    fixed_shares (size = shares), fixed_fraction (size = fraction of equity). `table_version` pins the bars
    table (time travel); empty = latest.
    """
    request = BacktestRequest(
        strategy=strategy, params=params, symbols=tuple(s.strip().upper() for s in symbols), start=start, end=end,
        bar_size=bar_size, what_to_show=what_to_show, use_rth=use_rth, cash=cash, commission=commission,
        commission_rate=commission_rate, slippage_bps=slippage_bps, sizing=sizing, size=size, mode=mode,
        table_version=table_version,
    )
    location = table_location(data_dir)
    run = run_backtest_task(request, location)
    publish_backtest(run)
    store_backtest_results(run, location)
    for s in run.results:
        m = s.result.metrics
        print(f"{s.symbol}: return {m.total_return_pct:.2f}% (buy and hold {m.buy_and_hold_return_pct:.2f}%), "
              f"sharpe {m.sharpe if m.sharpe is None else round(m.sharpe, 3)}, {m.trades} trades")
    return run
