"""The quality gate the ingestion calls: split a batch into clean and quarantined rows and report session gaps.

Both engines evaluate the rules of `quality.checks` once, in polars, in the same precedence, and give identical
clean and quarantined frames. "great_expectations" also validates the batch's `failed_check` column with the GX
gate of `quality.gx_suite` (one expectation, one pass): its verdict must agree, and its validation result, GX's
documented record of the gate, comes back with the result. Completeness is a warning computed in polars for both
engines: it needs the exchange calendar, not a row rule.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import polars as pl

from ibkr_flows.quality.checks import (
    BLOCKING_CHECKS,
    REQUIRED_COLUMNS,
    RULE_TEXT,
    BarSeries,
    CheckOutcome,
    Sessions,
    details,
    first_failed,
    rules,
)
from ibkr_flows.quality.completeness import GAPS_SCHEMA, completeness_outcome, is_judged, judged_sessions, session_gaps

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult

__all__ = ["CheckOutcome", "Engine", "QualityResult", "validate_bars", "warm_up"]

Engine = Literal["great_expectations", "polars"]
ENGINES: tuple[Engine, ...] = ("great_expectations", "polars")


@dataclass(frozen=True)
class QualityResult:
    clean: pl.DataFrame
    """Input rows (all columns) that passed every blocking check, in input order."""
    quarantined: pl.DataFrame
    """Failing input rows plus `failed_check` (first failing check) and `check_detail` (why)."""
    gaps: pl.DataFrame
    """Judged sessions missing bars: session, expected, received, missing."""
    engine: Engine
    outcomes: list[CheckOutcome] = field(default_factory=list)
    """Every check run, blocking and warning."""
    validation: ExpectationSuiteValidationResult | None = None
    """GX's validation result of the gate (engine "great_expectations"): success, the batch's fingerprint and, when
    it fails, counts and the first failing rows; `.to_json_dict()` stores it. None for the polars engine."""

    @property
    def warnings(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if o.severity == "warning" and not o.passed]

    def summary_markdown(self) -> str:
        lines = [f"Quality ({self.engine}): {self.clean.height} clean, {self.quarantined.height} quarantined", "",
                 "| check | severity | result | rows | detail |", "|---|---|---|---:|---|"]
        lines += [f"| {o.name} | {o.severity} | {'pass' if o.passed else 'FAIL'} | {o.failed_rows} | {o.detail} |"
                  for o in self.outcomes]
        if self.gaps.height:
            lines += ["", "| session | expected | received | missing |", "|---|---:|---:|---:|"]
            lines += [f"| {s} | {e} | {r} | {m} |" for s, e, r, m in self.gaps.iter_rows()]
        return "\n".join(lines)


def validate_bars(frame: pl.DataFrame, *, bar_size: str, use_rth: bool, what_to_show: str, sec_type: str = "STK",
                  window: tuple[datetime, datetime] | None = None, calendar: str = "XNYS",
                  judge_completeness: bool = True, engine: Engine = "great_expectations") -> QualityResult:
    """Gate one batch of one bar series of a contract of `sec_type`. `window` is the span the batch was fetched
    for: only sessions fully inside it are judged for completeness (without it, the sessions the batch has bars
    in). `calendar` is the instrument's session calendar (`ib.calendars.calendar_for`: XNYS, XETR, CME_GLOBEX,
    FX_24_5, ...): sessions, regular hours and the bars' session dates come from it. `judge_completeness` False
    skips that warning, for an instrument whose calendar is not known (its count of bars per session would be a
    false gap)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown quality engine {engine!r}; expected one of {', '.join(ENGINES)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"bars frame lacks column(s) {', '.join(missing)}")
    series = BarSeries(bar_size, use_rth, what_to_show, calendar, sec_type)
    sessions = Sessions.for_frame(frame, series)
    failing = frame.select(~expr for expr in rules(series, sessions).values())
    failed_check = failing.select(first_failed()).to_series()
    validation = None
    if engine == "great_expectations":
        from ibkr_flows.quality.gx_suite import gate

        validation = gate(failed_check)

    why = details(series, sessions)
    quarantined = (frame.with_columns(failed_check)
                   .filter(pl.col("failed_check").is_not_null())
                   .with_columns(check_detail=pl.coalesce([pl.when(pl.col("failed_check") == c).then(why[c])
                                                           for c in BLOCKING_CHECKS]).cast(pl.String())))
    clean = frame.filter(failed_check.is_null())
    outcomes = [_blocking_outcome(c, int(failing[c].sum()), quarantined) for c in BLOCKING_CHECKS]

    gaps = pl.DataFrame(schema=GAPS_SCHEMA)
    if judge_completeness and is_judged(series):
        judged = judged_sessions(series, window, sessions)
        gaps = session_gaps(clean, series, judged)
        outcomes.append(completeness_outcome(gaps, judged.days.len()))
    return QualityResult(clean=clean, quarantined=quarantined, gaps=gaps, engine=engine, outcomes=outcomes,
                         validation=validation)


def warm_up(engine: Engine) -> threading.Thread | None:
    """Start building the engine's machinery on a thread (GX: a 3-14 s import), to overlap it with fetching."""
    if engine != "great_expectations":
        return None
    from ibkr_flows.quality.gx_suite import warm_up as gx_warm_up

    return gx_warm_up()


def _blocking_outcome(check: str, failed_rows: int, quarantined: pl.DataFrame) -> CheckOutcome:
    if not failed_rows:
        return CheckOutcome(check, "blocking", passed=True, failed_rows=0, detail=RULE_TEXT[check])
    labelled = quarantined.filter(pl.col("failed_check") == check).height
    return CheckOutcome(check, "blocking", passed=False, failed_rows=failed_rows,
                        detail=f"{failed_rows} row(s) fail, {labelled} quarantined for it")
