"""`ibkr backtest ...`: backtests on stored bars, from the terminal.

`backtest run` keeps the user's old flags and meaning and runs the engine in-process (no Prefect, no Great
Expectations on this path: it answers in well under a second), appending its result to the backtest_results
table like the Prefect flow does. `--flow` runs the same request as the `backtest` Prefect flow instead, with
artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ibkr_flows.cli.results import rerun as rerun_command
from ibkr_flows.cli.results import results as results_command
from ibkr_flows.cli.results import show as show_command
from ibkr_flows.cli.times import as_utc

backtest_app = typer.Typer(help="Backtest strategies on bars stored by `ibkr data ingest`.", no_args_is_help=True)


def _params(assignments: list[str], fast: int | None, slow: int | None) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--param")
        params[key.strip().replace("-", "_")] = json.loads(raw) if raw.strip().lstrip("-").replace(".", "").isdigit() \
            else raw.strip()
    if fast is not None:
        params["fast_period"] = fast
    if slow is not None:
        params["slow_period"] = slow
    return params


EntryOption = Annotated[str, typer.Option(help="state (a position whenever the condition holds, e.g. fast > slow) or "
                                               "cross (only on the bar it starts to hold; crossovers, rsi_reversion)")]
FinalizeOption = Annotated[str, typer.Option(help="close (a position open at the end closes at the last open) or "
                                                  "open (left open, marked at the last close, not counted as a trade)")]
CommissionOption = Annotated[str, typer.Option(help="auto (IBKR Fixed for the instrument's class: US stocks per "
                                                    "share, futures per contract + exchange fees, FX a fraction of "
                                                    "value with a minimum, non-US stocks per their exchange), "
                                                    "ibkr_fixed, ibkr_tiered, percent, none")]
StopLossOption = Annotated[float | None, typer.Option(help="Stop-loss, percent below the entry fill (above, short).")]
TakeProfitOption = Annotated[float | None, typer.Option(help="Take-profit, percent beyond the entry fill.")]
TrailingStopOption = Annotated[float | None, typer.Option(help="Trailing stop, percent from the best price since "
                                                                "entry.")]
FlattenOption = Annotated[bool, typer.Option(help="Close positions at each session's last bar (US/Eastern dates): no "
                                                  "overnight holding.")]
BorrowFeeOption = Annotated[float, typer.Option(help="Annual short-borrow fee, percent, charged daily on the short's "
                                                     "value.")]
AdjustOption = Annotated[str, typer.Option(help="Prices as traded (none), split-adjusted (splits) or also "
                                                "dividend-adjusted (total, TRADES only), from recorded corporate "
                                                "actions.")]
RollOption = Annotated[str | None, typer.Option(help="For continuous futures (CONTFUT:ES@CME): read the project's "
                                                   "own roll built by `ibkr data roll` with this rule (days:N or "
                                                   "volume), charging each roll [default: IB's own CONTFUT "
                                                   "series]")]
RollAdjustOption = Annotated[str, typer.Option(help="With --roll: the back-adjustment the series was built with "
                                                    "(none, difference, ratio).")]


@backtest_app.command("run")
def run(
    strategy: Annotated[str, typer.Option(help="sma_crossover, ema_crossover, rsi_reversion, donchian_breakout, "
                                               "buy_and_hold")] = "sma_crossover",
    symbol: Annotated[list[str], typer.Option(help="Symbol (repeatable).")] = ["AAPL"],  # noqa: B006
    start: Annotated[datetime, typer.Option(help="Range start, UTC unless a zone is given, "
                                                 "e.g. '2023-12-29 20:01:00'.")] = datetime(2024, 7, 1),
    end: Annotated[datetime, typer.Option(help="Range end (exclusive), UTC unless zoned.")
                   ] = datetime(2024, 7, 13),
    fast_period: Annotated[int | None, typer.Option(help="Fast average (crossover strategies).")] = None,
    slow_period: Annotated[int | None, typer.Option(help="Slow average (crossover strategies).")] = None,
    param: Annotated[list[str], typer.Option(help="Other strategy parameter as key=value, e.g. period=14 "
                                                  "(repeatable).")] = [],  # noqa: B006
    bar_size: Annotated[str | None, typer.Option(help="IB bar size of the stored bars [default: the one stored for "
                                                      "the symbols; several stored: name one]")] = None,
    what_to_show: Annotated[str, typer.Option(help="TRADES, MIDPOINT, BID_ASK, ...")] = "TRADES",
    rth: Annotated[bool, typer.Option("--rth/--eth", help="Regular-hours or extended-hours bars.")] = True,
    cash: Annotated[float, typer.Option(help="Starting cash.")] = 100_000.0,
    commission: CommissionOption = "auto",
    commission_rate: Annotated[float, typer.Option(help="For --commission percent: fraction of value.")] = 0.0,
    slippage_bps: Annotated[float, typer.Option(help="Slippage against the trader, basis points.")] = 0.0,
    sizing: Annotated[str, typer.Option(help="all_in, fixed_shares, fixed_fraction")] = "all_in",
    size: Annotated[float, typer.Option(help="Shares (fixed_shares) or fraction of equity (fixed_fraction).")
                    ] = 0.0,
    mode: Annotated[str, typer.Option(help="long_only or long_short")] = "long_only",
    entry: EntryOption = "state",
    finalize: FinalizeOption = "close",
    stop_loss: StopLossOption = None,
    take_profit: TakeProfitOption = None,
    trailing_stop: TrailingStopOption = None,
    flatten_at_close: FlattenOption = False,
    borrow_fee: BorrowFeeOption = 0.0,
    table_version: Annotated[int | None, typer.Option(help="Read this version of the bars table (of the continuous "
                                                           "table for continuous futures): time travel.")] = None,
    adjust: AdjustOption = "splits",
    roll: RollOption = None,
    roll_adjust: RollAdjustOption = "none",
    data_dir: Annotated[str | None, typer.Option(help="Data directory [env IBKR_DATA_DIR, ./data]")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write the equity/drawdown chart(s) as PNG here.")] = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Append to the backtest_results table.")
                     ] = True,
    as_flow: Annotated[bool, typer.Option("--flow", help="Run as the `backtest` Prefect flow (artifacts).")
                       ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Backtest a strategy on stored bars and print its metrics and the execution time.

    Signals on bar close, fills at the next bar's open (no look-ahead). Without --bar-size it reads the one bar
    size stored for the symbols (and says so). Exit codes: 0 done, 2 bad arguments (or several stored bar sizes and
    no --bar-size: the message lists them), 3 no stored bars for the range (the message gives the `ibkr data
    ingest` command that fetches them), 4 a damaged bars table. --stop-loss, --take-profit, --trailing-stop,
    --flatten-at-close and --borrow-fee follow the fill rules in `ibkr_flows.backtest.exits`.
    """
    from storage.location import TableLocation, is_remote
    from storage.results_table import open_run_tables
    from storage.tables import warm_up

    location = TableLocation.at(data_dir)
    # delta-rs and polars set themselves up, and the tables the run is stored into open, while the engine's modules
    # are imported and the run reads and backtests (local tables: see `warm_up`)
    warm_up(location.bars)
    run_tables = open_run_tables(location) if store and not as_flow and not is_remote(location.bars) else None
    from ibkr_flows.backtest.runner import prefetch

    prefetch()
    from ibkr_flows.backtest.request import BacktestRequest
    from ibkr_flows.backtest.runner import run_request, store_run
    from ibkr_flows.backtest.stored_bar_size import choose_bar_size
    from ibkr_flows.cli.errors import exit_on_error

    started = time.perf_counter()
    store_s = 0.0
    console = Console(stderr=as_json)
    with exit_on_error(console):
        request = BacktestRequest(
            strategy=strategy, symbols=tuple(symbol), start=as_utc(start), end=as_utc(end),
            params=_params(param, fast_period, slow_period), what_to_show=what_to_show,
            use_rth=rth, cash=cash, commission=commission, commission_rate=commission_rate,
            slippage_bps=slippage_bps, sizing=sizing, size=size, mode=mode, entry=entry, finalize=finalize,
            stop_loss_pct=stop_loss, take_profit_pct=take_profit, trailing_stop_pct=trailing_stop,
            flatten_at_close=flatten_at_close, borrow_fee_pct=borrow_fee, table_version=table_version,
            adjust=adjust, roll=roll, roll_adjust=roll_adjust, **({} if bar_size is None else {"bar_size": bar_size}))
        choice = choose_bar_size(location, bar_size, request.symbols, request.what_to_show, request.use_rth,
                                 request.roll, request.roll_adjust)
        if choice.bar_size is not None:  # none stored: the request's default, whose missing bars say how to ingest
            request = request.model_copy(update={"bar_size": choice.bar_size})
        if as_flow:
            from flows.backtest import backtest_flow
            from ibkr_flows.cli.errors import prefect_api

            with prefect_api(Console(stderr=True)):
                run_ = backtest_flow(request=request, data_dir=data_dir)
        else:
            run_ = run_request(request, location)
            if store:
                stored = time.perf_counter()
                store_run(location, run_, "cli", run_tables)
                store_s = time.perf_counter() - stored
    elapsed = time.perf_counter() - started
    if plot is not None:
        _write_plots(run_, plot, console)
    _print(run_, choice, Timings(elapsed, run_.read_s, run_.engine_s, store_s), as_json, console)


def _write_plots(run_, plot: Path, console: Console) -> None:  # type: ignore[no-untyped-def]
    from ibkr_flows.backtest.charts import equity_chart_png

    for s in run_.results:
        path = plot if len(run_.results) == 1 else plot.with_name(f"{plot.stem}-{s.symbol}{plot.suffix}")
        path.write_bytes(equity_chart_png(s.result, f"{s.symbol} · {run_.request.strategy}"))
        console.print(f"chart: {path}")


@dataclass(frozen=True)
class Timings:
    """Where a command's time went after its imports: reading the bars, the engine, storing the result."""

    total_s: float
    read_s: float
    engine_s: float
    store_s: float


def _print(run_, choice, timings: Timings, as_json: bool, console: Console) -> None:  # type: ignore[no-untyped-def]
    from ibkr_flows.backtest.continuous_bars import is_continuous
    from ibkr_flows.backtest.metrics import metric_values
    from ibkr_flows.backtest.report import metric_rows
    from ibkr_flows.backtest.stored_bar_size import series_text
    from ibkr_flows.cli.json_output import strict_json

    request = run_.request
    source = "continuous" if is_continuous(request.symbols[0]) else "bars"
    if as_json:
        payload = {
            "run_id": run_.run_id, "bars_version": run_.table_version, "table": source,
            "code_version": run_.code_version, "roll": request.roll, "roll_adjust": request.roll_adjust,
            "bar_size": request.bar_size, "adjust": request.adjust, "bar_size_source": choice.source,
            "execution_time_s": round(timings.total_s, 4),
            "timings_s": {"read": round(timings.read_s, 4), "engine": round(timings.engine_s, 4),
                          "store": round(timings.store_s, 4)},
            "results": {s.symbol: metric_values(s.result.metrics) for s in run_.results},
        }
        typer.echo(strict_json(payload))
        return
    from rich.table import Table

    first = run_.results[0].result.metrics
    params = dataclasses.asdict(run_.results[0].result.strategy)
    table = Table("metric", *(s.symbol for s in run_.results),
                  title=" ".join([run_.request.strategy, *(f"{k}={v}" for k, v in params.items())]))
    for row in metric_rows(run_):
        table.add_row(*row.values())
    console.print(table)
    console.print(choice.describe(series_text(request.symbols, request.what_to_show, request.use_rth)))
    series = (f"continuous series rolled {request.roll}, adjustment {request.roll_adjust}" if request.roll
              else "IB's continuous series" if source == "continuous" else f"prices adjusted: {request.adjust}")
    console.print(f"{first.bars} bars {first.start:%Y-%m-%d %H:%M} → {first.end:%Y-%m-%d %H:%M} UTC, {source} table "
                  f"version {run_.table_version}, {series}; {first.annualization}", soft_wrap=True)
    console.print(f"execution time: {timings.total_s:.3f} s (read {timings.read_s:.3f} s, engine "
                  f"{timings.engine_s:.3f} s, store {timings.store_s:.3f} s)")


def _axis(text: str) -> tuple[str, object]:
    """`fast_period=5:50:5` (start:stop:step, stop included) or `period=7,14,21`."""
    name, sep, values = text.partition("=")
    if not sep or not values:
        raise typer.BadParameter(f"expected name=start:stop:step or name=a,b,c; got {text!r}", param_hint="--range")
    number = float if any("." in v for v in values.replace(":", ",").split(",")) else int
    try:
        if ":" in values:
            start, stop, step = (number(v) for v in values.split(":"))
            return name.replace("-", "_"), {"start": start, "stop": stop, "step": step}
        return name.replace("-", "_"), [number(v) for v in values.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: values must be numbers", param_hint="--range") from None


@backtest_app.command("grid")
def grid(
    strategy: Annotated[str, typer.Option(help="Strategy to sweep.")] = "sma_crossover",
    symbol: Annotated[list[str], typer.Option(help="Symbol (repeatable: each searched on its own, one table "
                                                   "version for all).")] = ["AAPL"],  # noqa: B006
    start: Annotated[datetime, typer.Option(help="Range start (UTC unless zoned).")] = datetime(2024, 7, 1),
    end: Annotated[datetime, typer.Option(help="Range end, exclusive.")] = datetime(2024, 7, 13),
    ranges: Annotated[list[str], typer.Option(
        "--range", help="Parameter sweep: name=start:stop:step (stop included) or name=a,b,c (repeatable). "
                        "Default for crossovers: fast_period=5:50:5, slow_period=20:200:10.")] = [],  # noqa: B006
    rank_by: Annotated[str, typer.Option(help="Metric to rank by (sharpe, sortino, calmar, total_return_pct, ...).")
                       ] = "sharpe",
    holdout: Annotated[float, typer.Option(help="Share of the bars at the end kept out of the search (0 = none).")
                       ] = 0.3,
    folds: Annotated[int, typer.Option(help="Walk-forward folds over the in-sample bars (0 = none).")] = 0,
    top: Annotated[int, typer.Option(help="Rows of the ranking to print.")] = 10,
    bar_size: Annotated[str | None, typer.Option(help="IB bar size of the stored bars [default: the one stored]")
                        ] = None,
    rth: Annotated[bool, typer.Option("--rth/--eth")] = True,
    cash: Annotated[float, typer.Option(help="Starting cash.")] = 100_000.0,
    commission: CommissionOption = "auto",
    mode: Annotated[str, typer.Option(help="long_only or long_short")] = "long_only",
    entry: EntryOption = "state",
    finalize: FinalizeOption = "close",
    stop_loss: StopLossOption = None,
    take_profit: TakeProfitOption = None,
    trailing_stop: TrailingStopOption = None,
    flatten_at_close: FlattenOption = False,
    borrow_fee: BorrowFeeOption = 0.0,
    adjust: AdjustOption = "splits",
    roll: RollOption = None,
    roll_adjust: RollAdjustOption = "none",
    table_version: Annotated[int | None, typer.Option(help="Read this version of the bars table (of the "
                                                           "continuous table for continuous futures).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Data directory [env IBKR_DATA_DIR, ./data]")] = None,
    heatmap: Annotated[Path | None, typer.Option(
        help="Write the heatmap of the first two parameters here (PNG; several symbols: NAME-SYMBOL.png).")
                       ] = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Append every combination to grid_results.")
                     ] = True,
) -> None:
    """Backtest every combination of a parameter grid, rank it, and say how far to trust the best cell.

    Prints the top of the ranking, the best cell in-sample and on the held-out bars, the walk-forward result,
    the deflated Sharpe ratio (is the best Sharpe more than the luck of trying N combinations?) and a plateau
    score (do the neighbours agree?). Exit codes as `backtest run`.
    """
    import uuid

    from storage.location import TableLocation
    from storage.tables import warm_up

    location = TableLocation.at(data_dir)
    warm_up(location.bars)  # as `backtest run`: delta-rs and polars set themselves up while the grid's modules import
    import polars as pl
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ibkr_flows.backtest.grid import evaluate_grid, run_grid
    from ibkr_flows.backtest.grid.publish import heatmap_png
    from ibkr_flows.backtest.grid.store import store_grid_reports
    from ibkr_flows.backtest.request import DEFAULT_GRID, GridRequest
    from ibkr_flows.backtest.runner import grid_config, load_bars
    from ibkr_flows.backtest.stored_bar_size import choose_bar_size, series_text
    from ibkr_flows.cli.errors import exit_on_error

    console = Console()
    with exit_on_error(console):
        one = {"symbol": symbol[0]} if len(symbol) == 1 else {"symbols": symbol}
        request = GridRequest(strategy=strategy, **one, start=as_utc(start), end=as_utc(end),
                              grid=dict(_axis(r) for r in ranges) or DEFAULT_GRID, rank_by=rank_by,
                              holdout=holdout or None, folds=folds or None, use_rth=rth,
                              cash=cash, commission=commission, mode=mode, entry=entry, finalize=finalize,
                              stop_loss_pct=stop_loss, take_profit_pct=take_profit, trailing_stop_pct=trailing_stop,
                              flatten_at_close=flatten_at_close, borrow_fee_pct=borrow_fee, adjust=adjust,
                              roll=roll, roll_adjust=roll_adjust, table_version=table_version,
                              **({} if bar_size is None else {"bar_size": bar_size}))
        choice = choose_bar_size(location, bar_size, request.grid_symbols, request.what_to_show, request.use_rth,
                                 request.roll, request.roll_adjust)
        if choice.bar_size is not None:
            request = request.model_copy(update={"bar_size": choice.bar_size})
        symbols = request.grid_symbols
        if choice.source == "stored" and choice.bar_size is not None:
            console.print(choice.describe(series_text(list(symbols), request.what_to_show, request.use_rth)))
        spec, version = request.spec(), table_version
        bars = {}
        for s in symbols:  # the first read pins the table version for the others
            bars[s], version = load_bars(location, request, s, version)
        batches = spec.chunks(chunk_size=max(1, spec.size // 20))
        reports = {}
        with Progress(TextColumn("[bold]grid"), BarColumn(), MofNCompleteColumn(), TextColumn("combinations"),
                      TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                      transient=True) as bar:
            job = bar.add_task("grid", total=spec.size * (1 + folds) * len(symbols))
            for s in symbols:
                base = grid_config(location, request.for_symbol(s))

                def evaluate(train, base=base):  # type: ignore[no-untyped-def]
                    parts = []
                    for batch in batches:
                        parts.append(evaluate_grid(train, request.bar_size, spec, base, batch))
                        bar.advance(job, len(batch))
                    return pl.concat(parts)

                reports[s] = run_grid(bars[s], request.bar_size, spec, base, holdout=request.holdout,
                                      folds=request.folds, evaluate=evaluate)
    run_id = uuid.uuid4().hex[:12]
    if store:
        store_grid_reports(location, reports, request, table_version=version, run_id=run_id, flow_run_id="cli")
    for s, report in reports.items():
        if len(reports) > 1:
            console.rule(s)
        if heatmap is not None and len(spec.axes) >= 2:
            x, y = list(spec.axes)[:2]
            path = heatmap if len(reports) == 1 else heatmap.with_name(f"{heatmap.stem}-{s}{heatmap.suffix}")
            path.write_bytes(heatmap_png(report.results, x, y, rank_by))
            console.print(f"heatmap: {path}")
        _print_grid(report, console, top, run_id, f"{version}, prices {request.adjust}")


def _print_grid(report, console: Console, top: int, run_id: str, version: str) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from ibkr_flows.backtest.report import format_value

    shown = report.top(top)
    columns = [*[c for c in shown.columns if c not in report.best_metrics.__dataclass_fields__],
               "total_return_pct", "sharpe", "max_drawdown_pct", "trades"]
    table = Table(*columns, title=f"top {shown.height} of {report.combinations_tried} by {report.rank_by}")
    for row in shown.select(columns).iter_rows(named=True):
        table.add_row(*(format_value(k, v) for k, v in row.items()))
    console.print(table)
    oos = report.out_of_sample
    console.print(f"best {report.best_params}: in-sample {report.rank_by} "
                  f"{format_value('sharpe', getattr(report.best_metrics, report.rank_by, None))}; out-of-sample "
                  f"{format_value('sharpe', getattr(oos, report.rank_by, None)) if oos else 'n/a (no holdout)'}")
    if report.walk_forward is not None:
        wf = report.walk_forward
        console.print(f"walk-forward: {wf.folds.height} folds, efficiency {format_value('sharpe', wf.efficiency)}, "
                      f"out-of-sample return {format_value('total_return_pct', wf.out_of_sample_return_pct)}")
    console.print(f"deflated Sharpe ratio {format_value('sharpe', report.deflated_sharpe)}, plateau score "
                  f"{format_value('sharpe', report.plateau_score)}; {report.combinations_tried} combinations in "
                  f"{report.elapsed_s:.2f} s; bars table version {version}; run {run_id}")


backtest_app.command("results")(results_command)
backtest_app.command("show")(show_command)
backtest_app.command("rerun")(rerun_command)
