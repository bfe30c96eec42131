"""`ibkr backtest results | show | rerun`: the catalog of stored runs, from the terminal.

Every run id works with every command, single runs and grid runs alike (a unique prefix is enough). `--json`
prints strict JSON (no NaN or Infinity: a metric that has no value, such as the Sharpe ratio of a flat equity
curve, is null).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from ibkr_flows.cli.json_output import strict_json
from ibkr_flows.cli.times import as_utc

EXIT_NOT_IDENTICAL = 1
DataDirOption = Annotated[str | None, typer.Option(help="Data directory [env IBKR_DATA_DIR, ./data]")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print strict JSON instead of tables.")]


def results(
    grid: Annotated[bool, typer.Option("--grid", help="List grid runs (their best combination) instead of single "
                                                      "runs.")] = False,
    strategy: Annotated[str | None, typer.Option(help="Only this strategy.")] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only runs stored at or after this time (UTC unless "
                                                        "zoned).")] = None,
    sort_by: Annotated[str, typer.Option(help="Column to sort by: created_at, sharpe, total_return_pct, "
                                              "max_drawdown_pct, ...")] = "created_at",
    ascending: Annotated[bool, typer.Option("--ascending", help="Smallest first (default: largest or newest "
                                                               "first).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """List stored backtest runs, newest first, or sorted by a metric.

    Each row is one symbol of a single run, or a grid run's best combination (with --grid). Exit codes: 0, 2 bad
    arguments (an unknown sort column lists the columns), 4 a damaged table.
    """
    from ibkr_flows.backtest.catalog import LISTED_COLUMNS, list_runs
    from ibkr_flows.cli.errors import exit_on_error
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with exit_on_error(console):
        table = list_runs(TableLocation.at(data_dir), kind="grid" if grid else "backtest", strategy=strategy,
                          symbol=symbol, since=as_utc(since) if since else None, sort_by=sort_by,
                          descending=not ascending, limit=limit)
    if as_json:
        typer.echo(strict_json(table.to_dicts()))
        return
    columns = [c for c in [*LISTED_COLUMNS, "combinations"] if c in table.columns]
    _print_rows(console, table.select(columns).to_dicts(), f"{table.height} {'grid' if grid else 'backtest'} "
                f"run row(s), by {sort_by}")


def show(
    run_id: Annotated[str, typer.Argument(help="A run id (or a unique prefix of one).")],
    trades: Annotated[int, typer.Option(min=0, help="Trades to list (single runs).")] = 20,
    top: Annotated[int, typer.Option(min=1, help="Combinations to list (grid runs).")] = 10,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one stored run: what ran on which data, every metric, and its trades (or a grid's top combinations).

    Exit codes: 0, 2 an unknown or ambiguous run id (the message lists candidates), 4 a damaged table.
    """
    from ibkr_flows.backtest.catalog import find_run
    from ibkr_flows.cli.errors import exit_on_error
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with exit_on_error(console):
        run = find_run(TableLocation.at(data_dir), run_id)
    rows = run.rows.drop("request").to_dicts()
    trade_rows = run.trades.with_columns(run.trades["duration"].dt.total_seconds().alias("duration_s")) \
        .drop("duration").to_dicts() if "duration" in run.trades.columns else []
    if as_json:
        typer.echo(strict_json({"run_id": run.run_id, "kind": run.kind, "request": _request(run.first),
                                "rows": rows, "trades": trade_rows}))
        return
    console.print(f"[bold]{run.kind} run {run.run_id}[/bold]: {run.first['strategy']} on {run.first['symbol']}, "
                  f"{run.first['bar_size']} bars {run.first['range_start']:%Y-%m-%d %H:%M} → "
                  f"{run.first['range_end']:%Y-%m-%d %H:%M} UTC, bars table version {run.first['bars_version']}, "
                  f"code {run.first['code_version']}", soft_wrap=True)
    if run.kind == "grid":
        _print_rows(console, rows[:top], f"top {min(top, len(rows))} of {len(rows)} combinations by "
                                         f"{run.first['rank_by']}")
        return
    from ibkr_flows.backtest.report import format_value

    for row in rows:
        _print_rows(console, [{"metric": k, "value": format_value(k, v)} for k, v in row.items()], row["symbol"])
    _print_rows(console, trade_rows[:trades], f"{len(trade_rows)} trade(s)" + (
        f", first {trades}" if len(trade_rows) > trades else ""))


def rerun(
    run_id: Annotated[str, typer.Argument(help="A run id (or a unique prefix of one).")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a stored run again from its bars-table version and request: is it identical, bit for bit?

    Compares every metric (and every trade of a single run) and says whether the code version differs from the
    one recorded. Nothing is stored. Exit codes: 0 identical, 1 not identical (the differences are listed), 2 an
    unknown run or one stored before requests were recorded, 3 no bars at the recorded version, 4 a table that
    cannot be read at that version (damaged, or vacuumed past it).
    """
    from ibkr_flows.backtest.catalog import rerun as rerun_stored
    from ibkr_flows.cli.errors import exit_on_error
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with exit_on_error(console):
        report = rerun_stored(TableLocation.at(data_dir), run_id)
    if as_json:
        typer.echo(strict_json(report.as_dict()))
    else:
        verdict = "[green]identical, bit for bit[/green]" if report.identical else "[red]NOT identical[/red]"
        code = (f"code changed: {report.code_version_stored} → {report.code_version_now}" if report.code_changed
                else f"same code version {report.code_version_now}")
        trades = "" if report.trades_equal is None else f", trades {'equal' if report.trades_equal else 'differ'}"
        console.print(f"{report.kind} run {report.run_id} on bars table version {report.bars_version}: {verdict} "
                      f"({report.values_compared} values in {report.rows_compared} row(s){trades}); {code}",
                      soft_wrap=True)
        if report.differences:
            _print_rows(console, [vars(d) for d in report.differences[:50]], "differences (first 50)")
    if not report.identical:
        raise typer.Exit(EXIT_NOT_IDENTICAL)


def _request(row: dict[str, Any]) -> Any:
    return json.loads(row["request"]) if row.get("request") else None


def _print_rows(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    from ibkr_flows.backtest.report import format_value

    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(*(HEADERS.get(k, k) for k in rows[0]), title=title)
    for row in rows:
        table.add_row(*(format_value(k, v) if isinstance(v, float) else _cell(k, v) for k, v in row.items()))
    console.print(table)


HEADERS = {"created_at": "stored", "range_start": "from", "range_end": "to", "bars_version": "bars v",
           "total_return_pct": "return", "max_drawdown_pct": "max dd", "code_version": "code"}
"""Short headers where the column name is long and its values short, so a listing fits a terminal."""
SHORT_ID = 12
"""Characters of a run id or code version shown in a table: unique in practice, and `show`/`rerun` take a prefix."""


def _cell(key: str, value: object) -> str:
    """A value as a terminal table shows it: minutes not microseconds, parameters as key=value, ids shortened
    (`--json` carries them whole)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if key in ("run_id", "code_version"):
        return str(value)[:SHORT_ID]
    if key == "params" and isinstance(value, str) and value.startswith("{"):
        return " ".join(f"{k}={v}" for k, v in json.loads(value).items())
    return str(value)
