"""How a backtest run reads: a metrics table per symbol and a markdown summary with its provenance."""

from __future__ import annotations

import base64
import json
from typing import Any

from ibkr_flows.backtest.metrics import metric_values
from ibkr_flows.backtest.runner import BacktestRun

HEADLINE = ("total_return_pct", "buy_and_hold_return_pct", "annualized_return_pct", "annualized_volatility_pct",
            "sharpe", "sortino", "calmar", "max_drawdown_pct", "max_drawdown_duration", "exposure_pct", "trades",
            "win_rate_pct", "best_trade_pct", "worst_trade_pct", "avg_trade_pct", "profit_factor", "expectancy",
            "commissions", "final_equity")
"""Metrics in the order a reader scans them; the rest (start, end, bars, annualization) go in the header."""




def format_value(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if name == "max_drawdown_duration":
        return _duration(float(value))
    if isinstance(value, float):
        if name.endswith("_pct"):
            return f"{value:.2f}%"
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m" if days else f"{hours}h {rest // 60}m"


def metric_rows(run: BacktestRun) -> list[dict[str, str]]:
    """One row per metric, one column per symbol (what both the CLI table and the artifact show), then the
    currency the money metrics are in: an ES run's final equity is USD, a SAP run's EUR."""
    values = {s.symbol: metric_values(s.result.metrics) for s in run.results}
    rows = [{"metric": name, **{symbol: format_value(name, v[name]) for symbol, v in values.items()}}
            for name in HEADLINE]
    return [*rows, {"metric": "currency", **{s.symbol: s.result.currency for s in run.results}}]


def instrument_lines(run: BacktestRun) -> list[str]:
    """Per symbol: the terms its money was computed with and the commission model charged."""
    return [f"- **{s.symbol}**: {s.terms.describe()}; commission {s.commission}" for s in run.results]


def trade_rows(run: BacktestRun, limit: int = 500) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in run.results:
        for trade in s.result.trades.head(limit).iter_rows(named=True):
            rows.append({"symbol": s.symbol, **{k: _plain(v) for k, v in trade.items()}})
    return rows


def _plain(value: Any) -> Any:
    """A table cell a person reads: floats to 6 decimals (not `-87.00000000001137`), times as text."""
    if isinstance(value, float):
        return round(value, 6)
    return value if isinstance(value, (int, str)) or value is None else str(value)


def run_markdown(run: BacktestRun, charts: dict[str, bytes] | None = None) -> str:
    r = run.request
    first = run.results[0].result.metrics
    lines = [
        f"# Backtest `{r.strategy}` {json.dumps(dict(r.params), sort_keys=True)}",
        "",
        f"- **Symbols**: {', '.join(r.symbols)} · {r.bar_size} {r.what_to_show} "
        f"{'regular hours' if r.use_rth else 'extended hours'}",
        f"- **Range asked**: {r.start:%Y-%m-%d %H:%M} → {r.end:%Y-%m-%d %H:%M} UTC; "
        f"**bars read**: {first.bars} ({first.start:%Y-%m-%d %H:%M} → {first.end:%Y-%m-%d %H:%M})",
        f"- **Data**: {r.data_text(r.symbols[0], run.table_version)} · **code**: {run.code_version} · run "
        f"`{run.run_id}`",
        f"- **Costs**: {r.commission}{f' {r.commission_rate:.4%}' if r.commission == 'percent' else ''}, "
        f"slippage {r.slippage_bps:g} bps · sizing {r.sizing} · {r.mode} · cash {r.cash:,.0f}",
        f"- **Fills**: signal on bar close, fill at the next bar's open; entry on the {r.entry}; a position open at "
        f"the end is {'closed at the last open' if r.finalize == 'close' else 'left open, marked at the last close'}"
        f"; {first.annualization}",
        *instrument_lines(run),
        "",
    ]
    rows = metric_rows(run)
    symbols = [s.symbol for s in run.results]
    lines += ["| metric | " + " | ".join(symbols) + " |", "|---" * (len(symbols) + 1) + "|"]
    lines += ["| " + " | ".join([row["metric"], *(row[s] for s in symbols)]) + " |" for row in rows]
    for symbol, png in (charts or {}).items():
        lines += ["", f"![{symbol} equity and drawdown](data:image/png;base64,{base64.b64encode(png).decode()})"]
    return "\n".join(lines)
