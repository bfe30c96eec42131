"""Reviewing what is stored against the quality rules: quarantined rows re-checked before release, and each
stored series' sessions compared with its instrument's session calendar (`ib.calendars`, from the instruments
table; NYSE's for a series stored before it).

Storage holds the rows and records the decisions; the rules and the calendar live here, above it. A release
re-runs today's blocking checks (`validate_bars`) on the quarantined bars and, because a quarantined bar must
never silently replace a stored one (the unique_key rule's promise), also refuses a bar whose key is stored with
other values. Bars that pass are merged into the bars table through its ordinary MERGE, then marked released.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from ibkr_flows.ib.calendars import NYSE, calendar_named, day_shift, planning_calendar, session_dates
from ibkr_flows.ib.historical import BAR_SIZES, is_intraday
from ibkr_flows.quality.validate import Engine, validate_bars
from storage.bars_catalog import list_series, stored_bars_like
from storage.bars_table import merge_bars
from storage.instruments_table import read_instruments
from storage.location import TableLocation
from storage.quarantine_table import Review, mark_reviewed, pending_quarantine
from storage.schema import BAR_COLUMNS, BAR_KEY, PRICE_COLUMNS

STORED_DIFFERS = "stored_bar_differs"
"""Why a bar that passes every rule stays quarantined: the bars table holds another bar with its key."""
SERIES_RULE_KEY = ("con_id", "bar_size", "use_rth", "what_to_show")
"""What the rules depend on: the series, and the contract (its class decides which size columns may be empty)."""
DAILY_SIZES = [size for size in BAR_SIZES if not is_intraday(size)]
US_PER_DAY = 86_400_000_000


class NothingToReviewError(LookupError):
    """No pending quarantined row matches the filters of a release or drop."""


@dataclass(frozen=True)
class ReleaseReport:
    examined: int
    """Pending rows matching the filters."""
    released: int
    """Rows marked released (their bars merged into the bars table)."""
    still_failing: dict[str, int]
    """Rows left in quarantine, by the check they fail now (or `STORED_DIFFERS`)."""
    bars_version: int | None
    """The bars table version after the merge (None when nothing was merged)."""


def release_quarantined(location: TableLocation, review: Review, *, symbol: str | None = None,
                        check: str | None = None, engine: Engine = "polars") -> ReleaseReport:
    """Re-check the pending rows matching the filters and release those that pass today's rules (the rules of
    each bar's contract: its class and its session calendar, from the instruments table)."""
    pending = _pending(location, symbol, check).with_row_index("_row")
    contracts = instrument_contracts(location)
    verdicts = pl.concat([_recheck(location, group, engine, contracts) for _, group in
                          pending.group_by(SERIES_RULE_KEY, maintain_order=True)])
    passed = pending.join(verdicts.filter(pl.col("now_failing").is_null()), on="_row", how="semi")
    version = None
    if passed.height:
        bars = passed.unique(list(BAR_KEY), keep="first").with_columns(ingested_at=pl.lit(review.at))
        version = merge_bars(location, bars).version
    released = mark_reviewed(location, passed, review)
    failing = verdicts.filter(pl.col("now_failing").is_not_null())["now_failing"].value_counts(sort=True)
    return ReleaseReport(examined=pending.height, released=released,
                         still_failing=dict(failing.iter_rows()), bars_version=version)


def drop_quarantined(location: TableLocation, review: Review, *, symbol: str | None = None,
                     check: str | None = None) -> int:
    """Mark the pending rows matching the filters dropped (kept as the audit record); returns how many."""
    return mark_reviewed(location, _pending(location, symbol, check), review)


def _pending(location: TableLocation, symbol: str | None, check: str | None) -> pl.DataFrame:
    pending = pending_quarantine(location, symbol=symbol, check=check)
    if pending.is_empty():
        filters = " ".join(f"--{name} {value}" for name, value in (("symbol", symbol), ("check", check)) if value)
        raise NothingToReviewError(f"no pending quarantined rows{' match ' + filters if filters else ''} "
                                   "(`ibkr data quarantine` counts them)")
    return pending


def _recheck(location: TableLocation, group: pl.DataFrame, engine: Engine,
             contracts: Mapping[int, tuple[str, str]]) -> pl.DataFrame:
    """`_row` and `now_failing` (null: passes) for every row of one series' pending rows. Identical copies of a
    bar (quarantined by several runs) are judged once, so they do not fail unique_key against each other."""
    series = group.row(0, named=True)
    if any(series[k] is None for k in SERIES_RULE_KEY):
        return group.select("_row", now_failing=pl.lit("not_null"))
    candidates = group.group_by(list(BAR_COLUMNS), maintain_order=True).agg("_row")
    # the rules for volume depend on the class, the sessions on the calendar
    sec_type, calendar = contracts.get(series["con_id"], ("STK", NYSE))
    result = validate_bars(candidates, bar_size=series["bar_size"], use_rth=series["use_rth"],
                           what_to_show=series["what_to_show"], sec_type=sec_type, calendar=calendar, engine=engine)
    clean = result.clean.with_columns(now_failing=_stored_differs(location, result.clean))
    judged = pl.concat([clean.select("_row", "now_failing"),
                        result.quarantined.select("_row", now_failing=pl.col("failed_check"))])
    return judged.explode("_row")


def _stored_differs(location: TableLocation, clean: pl.DataFrame) -> pl.Series:
    """`STORED_DIFFERS` where the bars table holds the bar's key with other values, else null. A stored bar with
    the same values (an earlier release that merged but was not marked) lets the row pass: releases repeat."""
    stored = stored_bars_like(location, clean).rename({c: f"stored_{c}" for c in PRICE_COLUMNS})
    joined = clean.select(*BAR_KEY, *PRICE_COLUMNS).join(stored, on=list(BAR_KEY), how="left",
                                                         maintain_order="left")
    has_stored = pl.col("stored_close").is_not_null() | pl.col("stored_open").is_not_null()
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"stored_{c}")) for c in PRICE_COLUMNS])
    return joined.select(pl.when(has_stored & differs).then(pl.lit(STORED_DIFFERS))).to_series()


def instrument_contracts(location: TableLocation) -> dict[int, tuple[str, str]]:
    """Each stored contract's class and session calendar by conId (`listing_calendar`)."""
    return {row["con_id"]: (row["sec_type"] or "STK", listing_calendar(row))
            for row in read_instruments(location).iter_rows(named=True)}


def symbol_calendar(location: TableLocation, symbol: str) -> str:
    """The session calendar of the instrument stored under `symbol` (its latest instruments row; NYSE's without
    one, as for bars stored before the table)."""
    rows = read_instruments(location).filter(pl.col("instrument_id") == symbol)
    return listing_calendar(rows.sort("last_updated").row(-1, named=True)) if rows.height else NYSE


def listing_calendar(row: dict[str, object]) -> str:
    """An instruments row's session calendar: the one ingestion planned its bars on (`planning_calendar`)."""
    return planning_calendar(*(str(row[k] or "") for k in ("sec_type", "exchange", "primary_exchange",
                                                           "time_zone_id")))


def session_day(calendars: Mapping[int, str] | None = None, fallback: str = NYSE) -> pl.Expr:
    """The session a stored bar belongs to, as a date: a daily stamp's UTC date; an intraday bar's session on its
    contract's calendar (`calendars` by conId, `fallback` for the others). In integer arithmetic where the calendar
    has a `day_shift` (a per-row time-zone conversion costs most of a second per 10M rows); converted where it has
    none (FX 24/5), so only tables holding such series pay for it."""
    calendars = dict(calendars or {})
    shifts = {name: day_shift(name) for name in {*calendars.values(), fallback}}

    def rows_on(name: str) -> pl.Expr:
        if name == fallback:
            return ~pl.col("con_id").is_in([c for c, n in calendars.items() if n != fallback])
        return pl.col("con_id").is_in([c for c, n in calendars.items() if n == name])

    shifted = {c: shifts[n] // timedelta(microseconds=1) for c, n in calendars.items() if shifts[n] is not None}
    default = (shifts[fallback] or timedelta(0)) // timedelta(microseconds=1)
    shift_us = pl.col("con_id").replace_strict(list(shifted), list(shifted.values()), default=default,
                                               return_dtype=pl.Int64()) if shifted else pl.lit(default)
    day = ((pl.col("ts").dt.epoch("us") + shift_us) // US_PER_DAY).cast(pl.Int32).cast(pl.Date)
    for name in sorted(n for n, shift in shifts.items() if shift is None):
        day = pl.when(rows_on(name)).then(session_dates(pl.col("ts"), name)).otherwise(day)
    return pl.when(pl.col("bar_size").is_in(DAILY_SIZES)).then(pl.col("ts").dt.date()).otherwise(day)


def catalog_series(location: TableLocation, calendar: str = NYSE) -> tuple[pl.DataFrame, int | None]:
    """Every stored series (`storage.bars_catalog.list_series`) with `sessions_missing` and `missing_sessions`:
    the sessions of its instrument's calendar (`calendar` for a contract without an instruments row) between its
    first and last bar that have no bar. Judged for intraday and daily bars; null for weekly and monthly bars,
    which do not have one bar per session."""
    calendars = {con_id: name for con_id, (_, name) in instrument_contracts(location).items()}
    listing = list_series(location, session_day=session_day(calendars, calendar))
    missing = [_missing_sessions(row, calendars.get(row["con_id"], calendar))  # type: ignore[call-overload]
               for row in listing.series.iter_rows(named=True)]
    series = listing.series.drop("bar_days").with_columns(
        pl.Series("sessions_missing", [None if m is None else len(m) for m in missing], pl.Int64()),
        pl.Series("missing_sessions", missing, pl.List(pl.Date())))
    return series, listing.version


def _missing_sessions(row: dict[str, object], calendar: str) -> list[date] | None:
    """The calendar's sessions from the first bar's session to the last one's that have no bar."""
    first, last, size = row["first_bar"], row["last_bar"], row["bar_size"]
    if not isinstance(first, datetime) or not isinstance(last, datetime) or size not in BAR_SIZES:
        return None
    cal = calendar_named(calendar)
    if is_intraday(str(size)):
        first_day, last_day = cal.session_day(first), cal.session_day(last)
    elif size == "1 day":
        first_day, last_day = first.astimezone(UTC).date(), last.astimezone(UTC).date()
    else:
        return None
    expected = pl.Series(cal.sessions(first_day, last_day), dtype=pl.Date())
    seen = pl.Series(row["bar_days"] or [], dtype=pl.Date())
    return expected.filter(~expected.is_in(seen.implode())).to_list()
