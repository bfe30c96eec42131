"""Keeping stored history on IB's current scale as batches arrive.

Every batch after the first of a series starts a few bars before the series' last stored bar (`plan.resume_start`),
so its first bars are IB's answer today for bars already stored: the overlap. Before the batch is written, the
stored overlap is compared with the fresh one (`adjustments.compare_overlap`):

- same scale: nothing to do (the usual case);
- a split (TRADES, quotes) the stored bars predate: the series' stored history is re-scaled in one commit
  (`storage.bars_rescale`) before the batch is merged, and the action is recorded in `corporate_actions`;
- a split or dividend in a series IB re-adjusts as a whole (ADJUSTED_LAST): the batch replaces the series anyway,
  so the action is only recorded, naming the table versions around the replace;
- anything else: reported, stored history left alone (never guessed at).

The last stored bar is left out of the comparison: it may have been a partial bar, which IB completes later and
which would otherwise read as a price change. Every stored bar was fetched before IB applied the event, so the
effective date is the first session after the last stored bar: the event's own date when ingestion runs each
session, the first session this run can place it in otherwise. Sessions are the instrument's (`ib.calendars`: a
Tokyo bar's session is its Tokyo date, a Globex evening bar's the next trade date).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from ibkr_flows.ib.calendars import NYSE, calendar_named
from ibkr_flows.ingest.adjustments import (
    AdjustmentEvent,
    OverlapVerdict,
    UnexplainedDifference,
    compare_overlap,
    session_of,
)
from storage.bars_rescale import RescaleResult, SeriesFilter, rescale_history
from storage.bars_table import stored_overlap
from storage.corporate_actions_table import CorporateActionRow, append_action
from storage.location import TableLocation


@dataclass(frozen=True)
class ScaleCheck:
    """The verdict on one batch's overlap with the stored bars of its series (None: nothing stored overlaps)."""

    verdict: OverlapVerdict | None
    series: dict[str, object]
    """The batch's series key (symbol, con_id, bar_size, what_to_show, use_rth)."""
    calendar: str = NYSE
    """The instrument's session calendar (`ib.calendars`), which dates the event and bounds its session."""

    @property
    def event(self) -> AdjustmentEvent | None:
        return self.verdict if isinstance(self.verdict, AdjustmentEvent) else None

    def describe(self) -> str | None:
        """One line for the report, or None when there is nothing to say."""
        symbol, verdict = self.series["symbol"], self.verdict
        if isinstance(verdict, AdjustmentEvent):
            return (f"{symbol}: {verdict.kind} effective {verdict.effective_date} detected over "
                    f"{verdict.bars_compared} re-fetched bars (stored / fresh = {verdict.measured_ratio:.6g}); "
                    f"stored {self.series['what_to_show']} prices divided by {verdict.factor:g}")
        if isinstance(verdict, UnexplainedDifference):
            return (f"{symbol}: stored {self.series['what_to_show']} bars differ from IB's fresh ones over "
                    f"{verdict.bars_compared} re-fetched bars ({verdict.reason}); stored history left as it is")
        return None


def check_scale(location: TableLocation, clean: pl.DataFrame, *, dividend_adjusted: bool, calendar: str = NYSE
                ) -> ScaleCheck | None:
    """Compare the batch `clean` (one series, of an instrument trading on `calendar`) with the stored bars it
    overlaps; None for an empty batch."""
    if clean.is_empty():
        return None
    series = clean.select("symbol", "con_id", "bar_size", "what_to_show", "use_rth").row(0, named=True)
    stored = stored_overlap(location, clean).sort("ts")
    comparable = stored.head(stored.height - 1)  # without the last stored bar, possibly partial
    if comparable.is_empty():
        return ScaleCheck(None, series, calendar)
    bar_size = str(series["bar_size"])
    verdict = compare_overlap(comparable, clean, bar_size=bar_size, dividend_adjusted=dividend_adjusted,
                              calendar=calendar)
    if isinstance(verdict, AdjustmentEvent):
        last_stored = session_of(stored["ts"].max(), bar_size, calendar)
        verdict = dataclasses.replace(verdict, effective_date=_session_after(last_stored, calendar))
    return ScaleCheck(verdict, series, calendar)


def _session_after(day: date, calendar: str) -> date:
    return calendar_named(calendar).sessions(day + timedelta(days=1), day + timedelta(days=31))[0]


def rescale_before_merge(location: TableLocation, check: ScaleCheck) -> RescaleResult:
    """Put the series' stored bars before the event on the fresh scale, so the batch merges onto one scale: the
    intraday bars before the effective session's day starts on the instrument's clock (a Tokyo session's morning
    is before midnight New York)."""
    event, s = check.event, check.series
    assert event is not None and event.effective_date is not None
    cal = calendar_named(check.calendar)
    return rescale_history(location, symbol=str(s["symbol"]), con_id=int(s["con_id"]),  # type: ignore[arg-type]
                           kind=event.kind, factor=event.factor, effective=event.effective_date,
                           series=SeriesFilter(bar_size=str(s["bar_size"]), what_to_show=[str(s["what_to_show"])],
                                               use_rth=bool(s["use_rth"])),
                           session_start=cal.midnight(event.effective_date) - cal.evening_open)


def record_replaced(location: TableLocation, check: ScaleCheck, version_before: int | None,
                    version_after: int | None) -> None:
    """Record an event a whole-series replace already put into the stored bars."""
    event, s = check.event, check.series
    assert event is not None and event.effective_date is not None
    append_action(location, CorporateActionRow(
        symbol=str(s["symbol"]), con_id=int(s["con_id"]), effective_date=event.effective_date,  # type: ignore[arg-type]
        kind=event.kind, factor=event.factor, detected_at=datetime.now(UTC), bars_version_before=version_before,
        bars_version_after=version_after))

