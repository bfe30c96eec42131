"""Putting one instrument's stored history on the scale after a split or dividend, in one Delta commit.

Bars stored before a split are on the old scale; IB serves every later request on the new one. Dividing the
stored prices before the effective date by the factor (and multiplying volumes, for a split) in a single UPDATE
means no reader ever sees the table half re-scaled, and the previous version stays readable by time travel. The
commit carries the action's own app transaction, so a repair retried after a crash between the re-scale and the
corporate_actions row re-scales nothing twice: it finds its commit and only records the action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from deltalake import CommitProperties, Transaction

from storage.bars_table import OPERATION_KEY, SYMBOLS_KEY
from storage.commits import with_commit_retries
from storage.corporate_actions_table import ActionKind, CorporateActionRow, append_action
from storage.location import TableLocation
from storage.tables import delta_table, open_table

DATED_BAR_SIZES = ("1 day", "1 week", "1 month")
"""Bars stamped 00:00 UTC of their (first) session date; every other size is stamped with its start instant."""
EXCHANGE_ZONE = ZoneInfo("America/New_York")
"""The clock of the sessions whose intraday bars this re-scales unless told otherwise (US listings: an evening bar
of the session before a split can start after midnight UTC, never after midnight New York)."""
RESCALE_OPERATION = "rescale"


@dataclass(frozen=True)
class SeriesFilter:
    """Which of the instrument's series to re-scale (None: any value)."""

    bar_size: str | None = None
    what_to_show: Sequence[str] | None = None
    use_rth: bool | None = None


@dataclass(frozen=True)
class RescaleResult:
    action: CorporateActionRow
    rows_rescaled: int
    already_applied: bool
    """True when an earlier attempt's commit had re-scaled the bars: only the action row was (re-)recorded."""


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def rescale_predicate(con_id: int, effective: date, series: SeriesFilter, session_start: datetime | None = None
                      ) -> str:
    """SQL for the bars before `effective` of the instrument's selected series (see `DATED_BAR_SIZES`); intraday
    bars before `session_start`, where the effective session's day starts on the instrument's clock (Tokyo's
    midnight; for a session opening the evening before, that evening), default midnight New York."""
    dated_cut = datetime.combine(effective, time(0), tzinfo=UTC)
    intraday_cut = (session_start or datetime.combine(effective, time(0), tzinfo=EXCHANGE_ZONE)).astimezone(UTC)
    dated = ", ".join(_literal(size) for size in DATED_BAR_SIZES)
    parts = [
        f"con_id = {con_id}",
        f"((bar_size IN ({dated}) AND ts < '{dated_cut.isoformat()}') OR "
        f"(bar_size NOT IN ({dated}) AND ts < '{intraday_cut.isoformat()}'))",
    ]
    if series.bar_size is not None:
        parts.append(f"bar_size = {_literal(series.bar_size)}")
    if series.what_to_show is not None:
        parts.append(f"what_to_show IN ({', '.join(_literal(w) for w in series.what_to_show)})")
    if series.use_rth is not None:
        parts.append(f"use_rth = {_literal(series.use_rth)}")
    return " AND ".join(parts)


def rescale_updates(kind: ActionKind, factor: float) -> dict[str, str]:
    """Prices divided by `factor`; a split's volume multiplied by it. IB's -1 (no volume / WAP) stays -1."""
    updates = {column: f"{column} / {factor!r}" for column in ("open", "high", "low", "close")}
    updates["wap"] = f"CASE WHEN wap > 0 THEN wap / {factor!r} ELSE wap END"
    if kind is ActionKind.SPLIT:
        updates["volume"] = f"CASE WHEN volume > 0 THEN volume * {factor!r} ELSE volume END"
    return updates


def _rescale_app_id(con_id: int, kind: ActionKind, effective: date, series: SeriesFilter) -> str:
    """One per action and series choice: each series of an instrument is re-scaled once, when its own overlap
    shows the event (a series fetched after the event for dates before it is on the new scale already)."""
    what = ",".join(series.what_to_show) if series.what_to_show is not None else "*"
    return (f"ibkr.rescale/{con_id}/{kind}/{effective.isoformat()}/{series.bar_size or '*'}/{what}/"
            f"{'*' if series.use_rth is None else series.use_rth}")


def rescale_history(location: TableLocation, *, symbol: str, con_id: int, kind: ActionKind, factor: float,
                    effective: date, series: SeriesFilter = SeriesFilter(),
                    detected_at: datetime | None = None, session_start: datetime | None = None) -> RescaleResult:
    """Divide the instrument's stored prices before `effective` by `factor` in one commit of the bars table, then
    append the corporate_actions row naming the versions before and after. `session_start`: where the effective
    session's day starts, for intraday bars (`rescale_predicate`)."""
    app_id = _rescale_app_id(con_id, kind, effective, series)
    predicate = rescale_predicate(con_id, effective, series, session_start)

    def update() -> tuple[int, int, int | None, bool]:
        table = open_table(location.bars)
        before = table.version()
        if table.transaction_version(app_id) is not None:  # an earlier attempt committed the re-scale
            return 0, before, before, True
        properties = CommitProperties(custom_metadata={OPERATION_KEY: RESCALE_OPERATION, SYMBOLS_KEY: symbol},
                                      app_transactions=[Transaction(app_id, 1)])
        metrics = table.update(updates=rescale_updates(kind, factor), predicate=predicate,
                               commit_properties=properties)
        rows = int(metrics["num_updated_rows"])
        return rows, before, table.version() if rows else None, False  # no matching bar: no commit

    (rows, before, after, applied), _ = with_commit_retries(update, what=f"re-scale of {symbol}")
    if applied:  # the recorded "before" is the version preceding that commit
        before = _version_before_commit(location, app_id)
        after = before + 1
    action = CorporateActionRow(symbol=symbol, con_id=con_id, effective_date=effective, kind=kind, factor=factor,
                                detected_at=detected_at or datetime.now(UTC), bars_version_before=before,
                                bars_version_after=after)
    append_action(location, action)
    return RescaleResult(action, rows, applied)


def _version_before_commit(location: TableLocation, app_id: str) -> int:
    """The version just before the commit that first carried `app_id` (a bisection over time travel)."""
    low, high = 0, open_table(location.bars).version()
    while low < high:
        middle = (low + high) // 2
        if delta_table(location.bars, middle).transaction_version(app_id) is None:
            low = middle + 1
        else:
            high = middle
    return low - 1

