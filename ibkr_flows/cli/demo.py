"""`ibkr demo`: the main job, end to end, against the built-in simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ibkr_flows.cli.render import render_diagnosis
from ibkr_flows.doctor.diagnosis import Diagnosis, TWSConnectionError

if TYPE_CHECKING:
    from ibkr_flows.ingest.engine import IngestReport


def demo(
    client_id: Annotated[int, typer.Option(help="Client id the pipeline connects with.")] = 10,
    symbols: Annotated[list[str] | None, typer.Option("--symbol", help="Symbols to ingest (repeatable).")] = None,
    days: Annotated[int, typer.Option(help="Days of 1-minute bars to ingest.")] = 5,
    data_dir: Annotated[str, typer.Option(help="Where the demo's Delta tables go.")] = "data/demo",
) -> None:
    """Run the main job end to end on the embedded TWS simulator (no TWS needed).

    Starts the simulator on a free loopback port, runs the `tws-health-check` Prefect flow against it (healthy),
    injects a fault (the client id held by another program) and shows the doctor's verdict and fix, then clears
    it and runs the `ingest-bars` flow: a few symbols x days of 1-minute bars into a Delta table, with quality
    checks; then the `backtest` flow and a small `backtest-grid` on those bars. Prefect runs in ephemeral mode
    unless PREFECT_API_URL points at a server.
    """
    from flows.health import tws_health_check
    from ibkr_flows.cli.errors import prefect_api
    from ibkr_flows.cli.ingest import ingest_progress, run_ingest_flow
    from ibkr_flows.ingest.engine import IngestReport
    from ibkr_flows.ingest.report import report_markdown
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import TWSEndpoint
    from ibkr_flows.sim.embedded import EmbeddedSimulator

    console = Console()
    failures: list[str] = []
    with prefect_api(Console(stderr=True)), EmbeddedSimulator() as sim:
        console.rule(f"[bold]1/5 TWS preflight, healthy simulator on {sim.host}:{sim.port}")
        diagnosis = _run_health_check(tws_health_check, sim.host, sim.port, client_id)
        render_diagnosis(diagnosis, console)
        if not diagnosis.ok:
            failures.append("the healthy simulator was not diagnosed healthy")

        console.rule(f"[bold]2/5 Injected fault: client id {client_id} held by another program")
        sim.update_faults(busy_client_ids={client_id})
        with _quiet_expected_failure():
            diagnosis = _run_health_check(tws_health_check, sim.host, sim.port, client_id)
        render_diagnosis(diagnosis, console)
        if diagnosis.ok or diagnosis.failure_class != "client-id-in-use":
            failures.append("the injected client-id fault was not diagnosed")

        sim.clear_faults()
        chosen = symbols or ["AAPL", "MSFT", "SPY"]
        console.rule(f"[bold]3/5 Ingest {days} days of 1-minute bars for {', '.join(chosen)} into {data_dir}")
        with ingest_progress(console, enabled=True, warnings=[]) as on_progress:
            outcome, _ = run_ingest_flow(IngestRequest(symbols=tuple(chosen), lookback_days=days),
                                         TWSEndpoint(host=sim.host, port=sim.port, client_id=client_id), data_dir,
                                         on_progress)
        if not isinstance(outcome, IngestReport):
            failures.append(f"ingestion failed: {outcome}")
        else:
            from rich.markdown import Markdown  # markdown-it costs 30 ms to import: only the demo pays it

            console.print(Markdown(report_markdown(outcome)))
            failures += [f"{s.symbol} failed: {s.error}" for s in outcome.failed]
            failures += _backtest(console, chosen, outcome, data_dir)
            failures += _grid(console, chosen[0], outcome, data_dir)

    if failures:
        console.print(f"[bold red]demo failed: {'; '.join(failures)}")
        raise typer.Exit(1)
    console.print("[bold green]demo complete: healthy verdict, the injected fault named with its fix, bars "
                  f"ingested into {data_dir}, a backtest and a parameter grid on them.")


def _backtest(console: Console, symbols: list[str], report: IngestReport, data_dir: str) -> list[str]:
    """Step 4: the `backtest` flow on what step 3 stored; returns what went wrong, if anything."""
    from rich.table import Table

    from flows.backtest import backtest_flow
    from ibkr_flows.backtest.report import metric_rows
    from ibkr_flows.backtest.request import BacktestRequest

    console.rule(f"[bold]4/5 Backtest sma_crossover 5/10 on {', '.join(symbols)} (the bars just ingested)")
    end = report.started_at
    request = BacktestRequest(strategy="sma_crossover", params={"fast_period": 5, "slow_period": 10},
                              symbols=tuple(symbols), start=end - timedelta(days=14), end=end)
    state = backtest_flow(request=request, data_dir=data_dir, return_state=True)
    run = state.result(raise_on_failure=False)
    if isinstance(run, BaseException):
        return [f"backtest failed: {run}"]
    table = Table("metric", *(s.symbol for s in run.results))
    for row in metric_rows(run):
        table.add_row(*row.values())
    console.print(table)
    console.print(f"bars table version {run.table_version}; artifacts 'backtest-summary' (with the equity chart) "
                  "and 'backtest-trades'; one row per symbol in the backtest_results table.")
    return []


@contextmanager
def _quiet_expected_failure() -> Iterator[None]:
    """The injected fault makes the flow fail on purpose: show the verdict, not Prefect's traceback of it."""
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run_health_check(flow, host: str, port: int, client_id: int) -> Diagnosis:  # type: ignore[no-untyped-def]
    state = flow(host=host, port=port, client_id=client_id, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, TWSConnectionError):
        return outcome.diagnosis
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _grid(console: Console, symbol: str, report: IngestReport, data_dir: str) -> list[str]:
    """Step 5: a small SMA grid through the `backtest-grid` flow, with holdout and walk-forward."""
    from flows.grid import backtest_grid
    from ibkr_flows.backtest.request import GridRequest

    console.rule(f"[bold]5/5 Parameter grid: SMA fast 5..25 x slow 30..90 on {symbol}, 30% holdout, 2 folds")
    end = report.started_at
    request = GridRequest(grid={"fast_period": {"start": 5, "stop": 25, "step": 5},
                                "slow_period": {"start": 30, "stop": 90, "step": 10}},
                          symbol=symbol, start=end - timedelta(days=14), end=end, folds=2, chunks=4)
    state = backtest_grid(request=request, data_dir=data_dir, return_state=True)
    grid_report = state.result(raise_on_failure=False)
    if isinstance(grid_report, BaseException):
        return [f"grid failed: {grid_report}"]
    from ibkr_flows.backtest.report import format_value

    best, oos = grid_report.best_metrics, grid_report.out_of_sample
    console.print(f"{grid_report.combinations_tried} combinations in {grid_report.elapsed_s:.2f} s; best "
                  f"{grid_report.best_params}: in-sample sharpe {format_value('sharpe', best.sharpe)}, "
                  f"out-of-sample {format_value('sharpe', oos.sharpe if oos else None)}; deflated Sharpe "
                  f"{format_value('sharpe', grid_report.deflated_sharpe)}; artifacts 'grid-summary' (with the "
                  "heatmap) and 'grid-top'; every combination in grid_results.")
    return []
