"""Equity and drawdown as a PNG: what a reader looks at first, small enough to inline in a Prefect artifact.

matplotlib is imported inside the function (Agg backend, no display): the CLI's text path never pays for it.
"""

from __future__ import annotations

import io

from ibkr_flows.backtest.engine import BacktestResult

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 4.5, 90


def equity_chart_png(result: BacktestResult, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    equity = result.equity
    ts = equity["ts"].dt.replace_time_zone(None).to_numpy()
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI,
                                         gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot(ts, equity["equity"].to_numpy(), color="#1f6feb", linewidth=1.2, label="strategy")
        top.set_title(title, fontsize=10)
        top.set_ylabel("equity")
        top.axhline(equity["equity"][0], color="#999999", linewidth=0.6, linestyle="--")
        top.grid(alpha=0.3)
        drawdown = equity["drawdown_pct"].to_numpy()
        bottom.fill_between(ts, drawdown, 0, color="#d1242f", alpha=0.4, linewidth=0)
        bottom.set_ylabel("drawdown %")
        bottom.grid(alpha=0.3)
        figure.autofmt_xdate()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
