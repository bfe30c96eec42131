"""How a grid run reads: a markdown summary with the overfitting checks, and a heatmap of two parameters."""

from __future__ import annotations

import base64
import io
import json

import polars as pl

from ibkr_flows.backtest.grid.report import GridReport
from ibkr_flows.backtest.metrics import Metrics
from ibkr_flows.backtest.report import format_value


def heatmap_png(results: pl.DataFrame, x: str, y: str, metric: str) -> bytes:
    """`metric` over the (x, y) plane; other parameters, if any, at the value of the best cell."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    best = results.row(0, named=True)
    others = [c for c in results.columns if c not in (x, y) and c in best and c not in _METRICS]
    plane = results.filter(*[pl.col(c) == best[c] for c in others]) if others else results
    pivot = plane.pivot(on=x, index=y, values=metric, aggregate_function="first").sort(y)
    grid = pivot.select([str(v) for v in sorted(plane[x].unique().to_list())])
    figure, axis = plt.subplots(figsize=(7.5, 5.0), dpi=90)
    try:
        image = axis.imshow(grid.to_numpy().astype(float), origin="lower", aspect="auto", cmap="viridis")
        axis.set_xticks(range(len(grid.columns)), grid.columns, rotation=90, fontsize=7)
        axis.set_yticks(range(pivot.height), [str(v) for v in pivot[y]], fontsize=7)
        axis.set_xlabel(x)
        axis.set_ylabel(y)
        axis.set_title(f"{metric} by {x} x {y}", fontsize=10)
        figure.colorbar(image, ax=axis)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


_METRICS = {f for f in Metrics.__dataclass_fields__}


def _metric_line(label: str, metrics: Metrics | None) -> str:
    if metrics is None:
        return f"| {label} | n/a | n/a | n/a | n/a | n/a |"
    return (f"| {label} | {format_value('total_return_pct', metrics.total_return_pct)} | "
            f"{format_value('sharpe', metrics.sharpe)} | {format_value('max_drawdown_pct', metrics.max_drawdown_pct)} "
            f"| {metrics.trades} | {metrics.bars} |")


def grid_symbols_markdown(reports: dict[str, GridReport], sections: dict[str, str]) -> str:
    """A grid run on several symbols: first each symbol's best cell side by side (the question a multi-symbol grid
    asks: does one parameter region win everywhere?), then each symbol's own summary (`sections`, from
    `grid_markdown` with `heading="##"`)."""
    first = next(iter(reports.values()))
    metric = first.rank_by
    lines = [f"# Grid `{first.strategy}` on {len(reports)} symbols: best cell of each", "",
             f"| symbol | best parameters | in-sample {metric} | holdout sharpe | deflated Sharpe | plateau |",
             "|---|---|---|---|---|---|"]
    for symbol, report in reports.items():
        oos = report.out_of_sample
        lines.append(f"| {symbol} | `{json.dumps(report.best_params, sort_keys=True)}` | "
                     f"{format_value(metric, report.results[metric][0])} | "
                     f"{format_value('sharpe', oos.sharpe if oos else None)} | "
                     f"{format_value('sharpe', report.deflated_sharpe)} | "
                     f"{format_value('sharpe', report.plateau_score)} |")
    return "\n".join([*lines, *["\n" + sections[symbol] for symbol in reports]])


def grid_markdown(report: GridReport, *, symbol: str, data: str, code_version: str, run_id: str,
                  heatmap: bytes | None = None, heatmap_axes: tuple[str, str] = ("", ""), heading: str = "#") -> str:
    """`data`: what the grid read (`BacktestSettings.data_text`). `heatmap_axes` (x, y) name the heatmap in its
    alt text, which is what a screen reader or a broken image shows; `heading` is the title's markdown level (`##`
    as a section of a multi-symbol summary)."""
    wf = report.walk_forward
    lines = [
        f"{heading} Grid `{report.strategy}` on {symbol}",
        "",
        f"- **Combinations**: {report.combinations_tried} backtested ({report.combinations_dropped} rejected by the "
        f"strategy's rules) in {report.elapsed_s:.2f} s, ranked by `{report.rank_by}`",
        f"- **Best parameters**: `{json.dumps(report.best_params, sort_keys=True)}`",
        f"- **Deflated Sharpe ratio**: {format_value('sharpe', report.deflated_sharpe)} (probability the best Sharpe "
        f"beats the luck of {report.combinations_tried} trials; Bailey & López de Prado 2014)",
        f"- **Plateau score**: {format_value('sharpe', report.plateau_score)} (neighbours' {report.rank_by} over the "
        "best cell's; near 1 = a plateau, near 0 or negative = an isolated peak)",
        f"- **Data**: {data} · **code**: {code_version} · run `{run_id}`",
        "",
        "| sample | return | sharpe | max drawdown | trades | bars |",
        "|---|---|---|---|---|---|",
        _metric_line("in-sample (best cell)", report.best_metrics),
        _metric_line("out-of-sample holdout", report.out_of_sample),
    ]
    if wf is not None:
        lines += ["", f"**Walk-forward** ({wf.folds.height} folds): mean in-sample {report.rank_by} "
                      f"{format_value('sharpe', wf.mean_in_sample)}, out-of-sample "
                      f"{format_value('sharpe', wf.mean_out_of_sample)}, efficiency "
                      f"{format_value('sharpe', wf.efficiency)}, compounded out-of-sample return "
                      f"{format_value('total_return_pct', wf.out_of_sample_return_pct)}"]
    if heatmap is not None:
        x, y = heatmap_axes
        alt = f"{report.rank_by} heatmap by {x} x {y}" if x and y else f"{report.rank_by} heatmap"
        lines += ["", f"![{alt}](data:image/png;base64,{base64.b64encode(heatmap).decode()})"]
    return "\n".join(lines)
