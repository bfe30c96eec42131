"""Single-symbol bar backtests: strategies emit target positions on bar close, the engine fills them at the next
bar's open with IBKR-style costs and reports trades, an equity curve and annualized metrics.

Plain library code (no Prefect, no Delta I/O) so flows, the CLI and the parameter-grid kernel share one definition
of a fill, a cost and a metric.
"""
