"""`ibkr data roll ROOT --rule days:5 --adjust ratio`: build a continuous futures series from the stored dated
contracts of ROOT (`ibkr_flows.continuous`), store it in the continuous table and its rolls in the rolls table,
and show the rolls. Exit codes: 0, 2 bad arguments (rule, adjustment, a roll gap that cannot be measured), 3 no
stored contracts of that series, 4 a damaged table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ibkr_flows.cli.data_catalog import (
    BarSizeOption,
    DataDirOption,
    JsonOption,
    RthOption,
    VersionOption,
    WhatToShowOption,
    print_rows,
)
from ibkr_flows.cli.json_output import strict_json

if TYPE_CHECKING:
    from ibkr_flows.continuous.build import ContinuousBuild

ROLLS_VIEW = ["roll_session", "from_instrument", "to_instrument", "gap_ts", "from_close", "to_close", "price_gap",
              "price_ratio", "reason"]


def roll_command(
    root: Annotated[str, typer.Argument(help="Futures root, e.g. ES (its dated contracts must be ingested).")],
    rule: Annotated[str, typer.Option(help="days:N (roll N sessions before expiry) or volume (roll the session "
                                           "after the next contract first trades more).")] = "days:5",
    adjust: Annotated[str, typer.Option(help="Back-adjustment of prices before each roll: none, difference or "
                                             "ratio.")] = "none",
    exchange: Annotated[str, typer.Option(help="The futures' exchange, as IB names it.")] = "CME",
    bar_size: BarSizeOption = "1 hour",
    what_to_show: WhatToShowOption = "TRADES",
    rth: RthOption = True,
    version: VersionOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Roll ROOT's stored dated contracts into one continuous series under a declared rule, back-adjusted, and
    store it (continuous table, with the rule, adjustment and bars-table version it was built from) and its rolls
    (rolls table). Building again with --version <the stored bars version> gives the same series."""
    from ibkr_flows.cli.errors import EXIT_NO_DATA, exit_on_error
    from ibkr_flows.continuous.build import build_continuous, store_build
    from ibkr_flows.continuous.contracts import ContinuousSpec
    from ibkr_flows.continuous.errors import NoContractsError
    from ibkr_flows.continuous.rules import Adjustment, RollRule
    from storage.location import TableLocation

    console = Console(stderr=as_json)
    started = time.perf_counter()
    with exit_on_error(console):
        spec = ContinuousSpec(root.strip().upper(), exchange.strip().upper(), bar_size, what_to_show.upper(), rth,
                              RollRule.parse(rule), Adjustment.parse(adjust))
        location = TableLocation.at(data_dir)
        try:
            build = build_continuous(location, spec, version=version)
        except NoContractsError as exc:
            console.print(f"[red]no data:[/red] {exc}")
            raise typer.Exit(EXIT_NO_DATA) from None
        built_s = time.perf_counter() - started
        series_version, rolls_version = store_build(location, build)
    summary = _summary(build, built_s, series_version, rolls_version)
    if as_json:
        typer.echo(strict_json(summary))
        return
    print_rows(console, [{k: r[k] for k in ROLLS_VIEW} for r in summary["rolls"]],
               f"{len(summary['rolls'])} roll(s) of {spec.describe()}, rule {spec.rule}, adjustment {spec.adjustment}")
    console.print(f"{summary['bars']} bars {summary['first_bar']:%Y-%m-%d %H:%M} → {summary['last_bar']:%Y-%m-%d %H:%M}"
                  f" UTC from {len(summary['contracts'])} contract(s), bars table version {build.bars_version}; "
                  f"stored as continuous table version {series_version}; built in {built_s:.2f} s")


def _summary(build: ContinuousBuild, built_s: float, series_version: int, rolls_version: int) -> dict[str, Any]:
    import polars as pl  # imported here, as every command does: `ibkr --help` stays fast

    series = build.series
    contracts = series.group_by("contract", "instrument_id", maintain_order=True).agg(
        pl.col("session").min().alias("first_session"), pl.col("session").max().alias("last_session"),
        pl.len().alias("bars"))
    return {
        "ok": True, "root": build.spec.root, "exchange": build.spec.exchange, "bar_size": build.spec.bar_size,
        "what_to_show": build.spec.what_to_show, "use_rth": build.spec.use_rth, "rule": str(build.spec.rule),
        "adjustment": str(build.spec.adjustment), "bars_version": build.bars_version, "bars": series.height,
        "first_bar": series["ts"].min(), "last_bar": series["ts"].max(), "contracts": contracts.to_dicts(),
        "rolls": build.rolls.to_dicts(), "continuous_version": series_version,
        "rolls_version": rolls_version if rolls_version >= 0 else None, "build_s": round(built_s, 3),
    }
