"""`ibkr data ls | instruments | show | export | quarantine | history`: know the stored data without opening a notebook.

Read-only except `quarantine --release | --drop`, which record a reason, the user and the time on every row they
touch. `--json` prints strict JSON (`cli.json_output`). Exit codes: 0, 2 bad arguments (a bars-table version that
does not exist, an action without --reason), 3 no matching data, 4 a damaged table.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ibkr_flows.cli.json_output import strict_json
from ibkr_flows.cli.times import as_utc

if TYPE_CHECKING:
    import polars as pl

    from storage.bars_catalog import SeriesSelection
    from storage.location import TableLocation

DataDirOption = Annotated[str | None, typer.Option(help="Data directory [env IBKR_DATA_DIR, ./data]")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print strict JSON instead of tables.")]
SymbolArgument = Annotated[str, typer.Argument(help="Ticker symbol, e.g. AAPL.")]
BarSizeOption = Annotated[str, typer.Option(help="IB bar size of the series: '1 min', '1 day', ...")]
WhatToShowOption = Annotated[str, typer.Option(help="TRADES, MIDPOINT, BID_ASK, ADJUSTED_LAST, BID, ASK")]
RthOption = Annotated[bool, typer.Option("--rth/--eth", help="The regular-hours series, or the extended-hours one.")]
StartOption = Annotated[datetime | None, typer.Option(help="First bar start (UTC unless zoned).")]
EndOption = Annotated[datetime | None, typer.Option(help="End, exclusive (UTC unless zoned).")]
VersionOption = Annotated[int | None, typer.Option("--version", help="Bars table version (time travel); default "
                                                                     "the latest. `ibkr data history` lists them.")]
QUARANTINE_VIEW = ["symbol", "bar_size", "ts", "open", "high", "low", "close", "volume", "failed_check",
                   "check_detail", "flow_run_id"]
"""The columns `quarantine --show` prints (--json gives every column)."""
REVIEW_VIEW = ["review_action", "review_reason", "reviewed_by", "reviewed_at"]
PLOT_POINTS = 1500
"""Spans a chart is drawn from (about its width in pixels): a longer series is aggregated first."""
MISSING_SHOWN = 3
"""Missing session dates a table row shows; --json lists them all."""


@contextmanager
def catalog_errors(console: Console) -> Iterator[None]:
    """`exit_on_error`, plus the catalog's own "nothing matches" errors as exit 3 with what to run instead."""
    from ibkr_flows.cli.errors import EXIT_NO_DATA, exit_on_error
    from ibkr_flows.quality.review import NothingToReviewError
    from storage.bars_catalog import NoSeriesError

    with exit_on_error(console):
        try:
            yield
        except (NoSeriesError, NothingToReviewError) as exc:
            console.print(f"[red]no data:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(EXIT_NO_DATA) from None


def ls_command(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List every stored series: instrument x bar size x what-to-show x RTH/ETH.

    Per series: first and last bar, rows, sessions missing (exchange sessions between the first and last bar with
    no bar; intraday and daily series), rows pending in quarantine, the bars table version, the last ingest.
    """
    from ibkr_flows.quality.review import catalog_series
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with catalog_errors(console):
        series, version = catalog_series(TableLocation.at(data_dir))
    if as_json:
        typer.echo(strict_json(series.to_dicts()))
        return
    rows = [{"symbol": r["symbol"], "con_id": r["con_id"], "bar_size": r["bar_size"],
             "what_to_show": r["what_to_show"], "hours": "RTH" if r["use_rth"] else "ETH",
             "first_bar": r["first_bar"], "last_bar": r["last_bar"], "rows": r["rows"],
             "sessions_missing": _missing_text(r["missing_sessions"]), "quarantined": r["quarantined"],
             "last_ingest": r["last_ingest"]} for r in series.iter_rows(named=True)]
    print_rows(console, rows, f"{len(rows)} series in bars table version {version}" if version is not None
               else "no bars table yet")


INSTRUMENTS_VIEW = ["instrument_id", "con_id", "sec_type", "local_symbol", "exchange", "primary_exchange", "currency",
                    "multiplier", "min_tick", "time_zone_id", "expiry", "last_updated"]
"""The columns `instruments` prints (--json gives every column, trading and liquid hours included)."""


def instruments_command(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List every contract an ingestion resolved: one row per IB conId, as TWS last described it (class, exchanges,
    currency, multiplier, tick, time zone, expiry; --json adds trading and liquid hours, first seen)."""
    from storage.instruments_table import read_instruments
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with catalog_errors(console):
        instruments = read_instruments(TableLocation.at(data_dir))
    if as_json:
        typer.echo(strict_json(instruments.to_dicts()))
        return
    print_rows(console, instruments.select(INSTRUMENTS_VIEW).to_dicts(),
               f"{instruments.height} instrument(s) in the instruments table")


def _missing_text(missing: list[Any] | None) -> str:
    if missing is None:
        return "n/a"
    shown = ", ".join(f"{day:%Y-%m-%d}" for day in missing[:MISSING_SHOWN])
    more = f", +{len(missing) - MISSING_SHOWN}" if len(missing) > MISSING_SHOWN else ""
    return f"{len(missing)}" + (f" ({shown}{more})" if missing else "")


def show_command(
    symbol: SymbolArgument,
    bar_size: BarSizeOption = "1 min",
    what_to_show: WhatToShowOption = "TRADES",
    rth: RthOption = True,
    start: StartOption = None,
    end: EndOption = None,
    version: VersionOption = None,
    rows: Annotated[int, typer.Option(min=0, help="Rows to show from the head and from the tail.")] = 5,
    plot: Annotated[Path | None, typer.Option(help="Also draw close and volume into this PNG file.")] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one stored series: a summary (rows, range, min/max close, total volume), its first and last rows, each
    with the date of its session (a daily bar's 00:00 UTC stamp is that day's session, not the evening before)."""
    from ibkr_flows.quality.bars_view import bars_view
    from ibkr_flows.quality.review import symbol_calendar
    from storage.bars_catalog import collect_series, downsample, scan_series
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    location = TableLocation.at(data_dir)
    selection = _selection(symbol, bar_size, what_to_show, rth, start, end)
    with catalog_errors(console):
        lazy, read_version = scan_series(location, selection, version)
        summary = _summary_or_hint(lazy, location, selection, read_version)
        calendar = symbol_calendar(location, selection.symbol)
        head = collect_series(bars_view(lazy.head(rows), bar_size, calendar), location)
        tail = collect_series(bars_view(lazy.tail(rows), bar_size, calendar), location)
        if plot is not None:
            points = downsample(lazy, location, summary["first_bar"], summary["last_bar"], PLOT_POINTS)
            _plot(points, plot, f"{selection.describe()}, bars table version {read_version}")
    if as_json:
        typer.echo(strict_json({"series": selection.describe(), "version": read_version, "summary": summary,
                                "head": head.to_dicts(), "tail": tail.to_dicts()}))
        return
    console.print(f"[bold]{selection.describe()}[/bold], bars table version {read_version}", soft_wrap=True)
    print_rows(console, [{"measure": k, "value": v} for k, v in summary.items()], "summary")
    print_rows(console, head.to_dicts(), f"first {head.height}")
    print_rows(console, tail.to_dicts(), f"last {tail.height}")
    if plot is not None:
        console.print(f"chart written to {plot}")


def export_command(
    symbol: SymbolArgument,
    bar_size: BarSizeOption = "1 min",
    what_to_show: WhatToShowOption = "TRADES",
    rth: RthOption = True,
    start: StartOption = None,
    end: EndOption = None,
    version: VersionOption = None,
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "csv",
    out: Annotated[str | None, typer.Option(help="Output file; '-' or none: CSV on stdout.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Export one stored series, as stored at a version, to Parquet or CSV: every column but the partition, after
    the `session` date of each bar."""
    import polars as pl

    from ibkr_flows.quality.bars_view import session_column
    from ibkr_flows.quality.review import symbol_calendar
    from storage.bars_catalog import scan_series
    from storage.location import TableLocation

    console = Console(stderr=True)
    location = TableLocation.at(data_dir)
    selection = _selection(symbol, bar_size, what_to_show, rth, start, end)
    to_stdout = out in (None, "-")
    with catalog_errors(console):
        if file_format not in ("parquet", "csv"):
            raise ValueError(f"--format must be parquet or csv, got {file_format!r}")
        if to_stdout and file_format == "parquet":
            raise ValueError("Parquet is binary: give --out FILE.parquet (CSV alone goes to stdout)")
        lazy, read_version = scan_series(location, selection, version)
        count = _summary_or_hint(lazy, location, selection, read_version)["rows"]
        lazy = lazy.select(session_column(bar_size, symbol_calendar(location, selection.symbol)), pl.all())
        if to_stdout:
            _write_stdout(lazy.collect().write_csv())
        elif file_format == "csv":
            lazy.sink_csv(str(out))
        else:
            lazy.sink_parquet(str(out))
    console.print(f"exported {count} rows of {selection.describe()} at bars table version {read_version}"
                  f"{'' if to_stdout else ' to ' + str(out)}", soft_wrap=True)


def _write_stdout(text: str) -> None:
    """Write to stdout; a reader that stops early (`| head`) ends the export quietly, as other CLI tools do."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes


def quarantine_command(
    show: Annotated[bool, typer.Option("--show", help="List the rows, not just the counts.")] = False,
    reviewed: Annotated[bool, typer.Option("--reviewed", help="With --show: list released and dropped rows (the "
                                                              "audit trail) instead of pending ones.")] = False,
    release: Annotated[bool, typer.Option("--release", help="Re-check the rows with today's rules; merge those "
                                                            "that pass into the bars table.")] = False,
    drop: Annotated[bool, typer.Option("--drop", help="Take the rows out of quarantine for good (kept as an "
                                                      "audit record).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --release and --drop; recorded).")] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    check: Annotated[str | None, typer.Option(help="Only rows that failed this check (e.g. high_ge_open_close).")
                     ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows --show lists.")] = 50,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Quarantined bars: counts by check and symbol; list, release or drop them.

    --release and --drop apply to the pending rows matching --symbol/--check and record --reason, the user and
    the time on each row (rows are marked, never deleted). Exit codes: 0, 2 bad arguments, 3 nothing matches.
    """
    from ibkr_flows.quality.review import drop_quarantined, release_quarantined
    from storage.location import TableLocation
    from storage.quarantine_table import Review, quarantine_counts, scan_reviewed

    console = Console(stderr=as_json)
    location = TableLocation.at(data_dir)
    with catalog_errors(console):
        action = _action(show, release, drop, reason)
        if action is not None:
            review = Review(action, reason or "", getpass.getuser(), datetime.now(UTC))
            if action == "released":
                report = release_quarantined(location, review, symbol=symbol, check=check)
                result: dict[str, Any] = {"action": action, **vars(report)}
                text = (f"released {report.released} of {report.examined} row(s)"
                        f"{'' if report.bars_version is None else f' into bars table version {report.bars_version}'}; "
                        f"still failing: {report.still_failing or 'none'}")
            else:
                dropped = drop_quarantined(location, review, symbol=symbol, check=check)
                result, text = {"action": action, "dropped": dropped}, f"dropped {dropped} row(s)"
            result.update(reason=review.reason, user=review.user, at=review.at)
            if as_json:
                typer.echo(strict_json(result))
            else:
                console.print(f"{text} (by {review.user}: {review.reason})", soft_wrap=True)
            return
        if show:
            from polars import col

            listed = (scan_reviewed(location, symbol=symbol, check=check)
                      .filter(col("review_action").is_not_null() == reviewed)
                      .sort("quarantined_at", "ts", nulls_last=True).collect())
            payload = listed.head(limit).to_dicts()
            shown = QUARANTINE_VIEW + (REVIEW_VIEW if reviewed else [])
            view = listed.head(limit).select(shown).to_dicts()
            title = f"{listed.height} {'reviewed' if reviewed else 'pending'} row(s), first {min(limit, listed.height)}"
        else:
            payload = view = quarantine_counts(location, symbol=symbol, check=check).to_dicts()
            title = "quarantined rows by check and symbol"
    if as_json:
        typer.echo(strict_json(payload))
    else:
        print_rows(console, view, title)


def _action(show: bool, release: bool, drop: bool, reason: str | None) -> str | None:
    if sum((show, release, drop)) > 1:
        raise ValueError("choose one of --show, --release and --drop")
    if (release or drop) and not (reason and reason.strip()):
        raise ValueError(f"--{'release' if release else 'drop'} needs --reason TEXT (recorded with the rows)")
    if reason is not None and not (release or drop):
        raise ValueError("--reason goes with --release or --drop")
    return "released" if release else "dropped" if drop else None


def history_command(
    limit: Annotated[int, typer.Option(min=1, help="Versions to list, newest first.")] = 20,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """The bars table's versions, newest first: time, operation, rows and files touched, and the flow run (with
    its operation and symbols) that wrote each, where the commit records them."""
    from storage.bars_catalog import history
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    with catalog_errors(console):
        versions = history(TableLocation.at(data_dir), limit)
    if as_json:
        typer.echo(strict_json(versions))
    else:
        print_rows(console, versions, f"bars table: {len(versions)} latest version(s)")


def _selection(symbol: str, bar_size: str, what_to_show: str, rth: bool, start: datetime | None,
               end: datetime | None) -> SeriesSelection:
    from storage.bars_catalog import SeriesSelection

    return SeriesSelection(symbol=symbol, bar_size=bar_size, what_to_show=what_to_show, use_rth=rth,
                           start=as_utc(start) if start else None, end=as_utc(end) if end else None)


def _summary_or_hint(lazy: pl.LazyFrame, location: TableLocation, selection: SeriesSelection, version: int
                     ) -> dict[str, Any]:
    """The series summary; an empty read names the series and where to look instead."""
    from storage.bars_catalog import NoSeriesError, series_summary

    try:
        return series_summary(lazy, location)
    except NoSeriesError:
        raise NoSeriesError(f"no bars for {selection.describe()} at bars table version {version}: `ibkr data ls` "
                            f"lists the stored series, `ibkr data ingest {selection.symbol} --bar-size "
                            f"'{selection.bar_size}'` fetches them") from None


def _plot(bars: pl.DataFrame, path: Path, title: str) -> None:
    """Close over volume (`downsample`d), in the house style of the backtest chart (`backtest.charts`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ibkr_flows.backtest.charts import DPI, HEIGHT_IN, WIDTH_IN

    ts = bars["ts"].dt.replace_time_zone(None).to_numpy()
    step = bars["ts"].diff().median()
    width_days = step.total_seconds() / 86400 * 0.8 if step else 0.0005  # matplotlib dates are in days
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI,
                                         gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot(ts, bars["close"].to_numpy(), color="#1f6feb", linewidth=1.2)
        top.set_title(title, fontsize=10)
        top.set_ylabel("close")
        top.grid(alpha=0.3)
        bottom.bar(ts, bars["volume"].to_numpy(), color="#6e7781", width=width_days)
        bottom.set_ylabel("volume")
        bottom.grid(alpha=0.3)
        figure.autofmt_xdate()
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def print_rows(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(*rows[0], title=title)
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return str(value)
