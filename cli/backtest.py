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
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

backtest_app = typer.Typer(help="Backtest strategies on bars stored by `ibkr data ingest`.", no_args_is_help=True)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
    bar_size: Annotated[str, typer.Option(help="IB bar size of the stored bars.")] = "1 min",
    what_to_show: Annotated[str, typer.Option(help="TRADES, MIDPOINT, BID_ASK, ...")] = "TRADES",
    rth: Annotated[bool, typer.Option("--rth/--eth", help="Regular-hours or extended-hours bars.")] = True,
    cash: Annotated[float, typer.Option(help="Starting cash.")] = 100_000.0,
    commission: Annotated[str, typer.Option(help="ibkr_fixed, ibkr_tiered, percent, none")] = "ibkr_fixed",
    commission_rate: Annotated[float, typer.Option(help="For --commission percent: fraction of value.")] = 0.0,
    slippage_bps: Annotated[float, typer.Option(help="Slippage against the trader, basis points.")] = 0.0,
    sizing: Annotated[str, typer.Option(help="all_in, fixed_shares, fixed_fraction")] = "all_in",
    size: Annotated[float, typer.Option(help="Shares (fixed_shares) or fraction of equity (fixed_fraction).")
                    ] = 0.0,
    mode: Annotated[str, typer.Option(help="long_only or long_short")] = "long_only",
    table_version: Annotated[int | None, typer.Option(help="Read this bars-table version (time travel).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Data directory [env IBKR_DATA_DIR, ./data]")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write the equity/drawdown chart(s) as PNG here.")] = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Append to the backtest_results table.")
                     ] = True,
    as_flow: Annotated[bool, typer.Option("--flow", help="Run as the `backtest` Prefect flow (artifacts).")
                       ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Backtest a strategy on stored bars and print its metrics and the execution time.

    Signals on bar close, fills at the next bar's open (no look-ahead). Exit codes: 0 done, 2 bad arguments,
    3 no stored bars for the range (the message gives the `ibkr data ingest` command that fetches them),
    4 a damaged bars table.
    """
    started = time.perf_counter()
    from backtest.errors import BacktestError
    from backtest.runner import BacktestRequest, MissingBarsError, run_request
    from market.bar_sizes import UnknownBarSizeError
    from storage.errors import CorruptTableError, NotADeltaTableError
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    location = TableLocation(Path(data_dir)) if data_dir else TableLocation.default()
    try:
        request = BacktestRequest(
            strategy=strategy, symbols=tuple(s.strip().upper() for s in symbol), start=_utc(start), end=_utc(end),
            params=_params(param, fast_period, slow_period), bar_size=bar_size, what_to_show=what_to_show,
            use_rth=rth, cash=cash, commission=commission, commission_rate=commission_rate,  # type: ignore[arg-type]
            slippage_bps=slippage_bps, sizing=sizing, size=size, mode=mode,  # type: ignore[arg-type]
            table_version=table_version)
        run_ = _run_flow(request, data_dir) if as_flow else run_request(request, location)
    except (MissingBarsError, NotADeltaTableError) as exc:
        console.print(f"[red]no data:[/red] {exc}")
        raise typer.Exit(3) from None
    except CorruptTableError as exc:
        console.print(f"[red]damaged table:[/red] {exc}")
        raise typer.Exit(4) from None
    except (BacktestError, UnknownBarSizeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if store and not as_flow:
        from storage.results_table import append_backtest_results

        append_backtest_results(location, run_.result_rows("cli"))
    elapsed = time.perf_counter() - started
    if plot is not None:
        _write_plots(run_, plot, console)
    _print(run_, elapsed, as_json, console)


def _run_flow(request, data_dir: str | None):  # type: ignore[no-untyped-def]
    from flows.backtest import backtest_flow

    r = request
    return backtest_flow(
        strategy=r.strategy, params=dict(r.params), symbols=list(r.symbols), start=r.start, end=r.end,
        bar_size=r.bar_size, what_to_show=r.what_to_show, use_rth=r.use_rth, cash=r.cash, commission=r.commission,
        commission_rate=r.commission_rate, slippage_bps=r.slippage_bps, sizing=r.sizing, size=r.size, mode=r.mode,
        table_version=r.table_version, data_dir=data_dir)


def _write_plots(run_, plot: Path, console: Console) -> None:  # type: ignore[no-untyped-def]
    from backtest.charts import equity_chart_png

    for s in run_.results:
        path = plot if len(run_.results) == 1 else plot.with_name(f"{plot.stem}-{s.symbol}{plot.suffix}")
        path.write_bytes(equity_chart_png(s.result, f"{s.symbol} · {run_.request.strategy}"))
        console.print(f"chart: {path}")


def _print(run_, elapsed: float, as_json: bool, console: Console) -> None:  # type: ignore[no-untyped-def]
    from backtest.report import metric_rows
    from storage.results_table import metric_values

    if as_json:
        payload = {
            "run_id": run_.run_id, "bars_version": run_.table_version, "code_version": run_.code_version,
            "execution_time_s": round(elapsed, 4),
            "results": {s.symbol: metric_values(s.result.metrics) for s in run_.results},
        }
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    from rich.table import Table

    first = run_.results[0].result.metrics
    table = Table("metric", *(s.symbol for s in run_.results),
                  title=f"{run_.request.strategy} {dataclasses.asdict(run_.results[0].result.strategy)}")
    for row in metric_rows(run_):
        table.add_row(*row.values())
    console.print(table)
    console.print(f"{first.bars} bars {first.start:%Y-%m-%d %H:%M} → {first.end:%Y-%m-%d %H:%M} UTC, bars table "
                  f"version {run_.table_version}; {first.annualization}", soft_wrap=True)
    console.print(f"execution time: {elapsed:.3f} s (engine and data read {run_.elapsed_s:.3f} s)")
