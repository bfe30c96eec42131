"""The quality gate the ingestion calls: split a batch into clean and quarantined rows and report session gaps.

Both engines apply the rules of `quality.checks` in the same precedence and give identical clean and quarantined
frames: "polars" evaluates the expressions directly; "great_expectations" lets the GX suite of `quality.gx_suite`
decide pass/fail per check and name the failing rows (GX's own COMPLETE results, fetched only for failed checks).
Completeness is a warning computed in polars for both engines: it needs the exchange calendar, not a row rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import polars as pl

from ibkr_flows.quality.checks import (
    BLOCKING_CHECKS,
    REQUIRED_COLUMNS,
    RULE_TEXT,
    BarSeries,
    CheckOutcome,
    Sessions,
    details,
    rules,
)
from ibkr_flows.quality.completeness import GAPS_SCHEMA, completeness_outcome, is_judged, judged_sessions, session_gaps

__all__ = ["CheckOutcome", "Engine", "QualityResult", "validate_bars"]

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


def validate_bars(frame: pl.DataFrame, *, bar_size: str, use_rth: bool, what_to_show: str,
                  window: tuple[datetime, datetime] | None = None, calendar: str = "XNYS",
                  engine: Engine = "great_expectations") -> QualityResult:
    """Gate one batch of one bar series. `window` is the span the batch was fetched for: only sessions fully
    inside it are judged for completeness (without it, the sessions the batch has bars in)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown quality engine {engine!r}; expected one of {', '.join(ENGINES)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"bars frame lacks column(s) {', '.join(missing)}")
    series = BarSeries(bar_size, use_rth, what_to_show, calendar)
    sessions = Sessions.for_frame(frame, series)
    failing, passed = _failures(frame, series, sessions, engine)

    first_failure = pl.coalesce([pl.when(pl.col(c)).then(pl.lit(c)) for c in BLOCKING_CHECKS])
    failed_check = failing.select(first_failure.alias("failed_check")).to_series()
    why = details(series, sessions)
    quarantined = (frame.with_columns(failed_check)
                   .filter(pl.col("failed_check").is_not_null())
                   .with_columns(check_detail=pl.coalesce([pl.when(pl.col("failed_check") == c).then(why[c])
                                                           for c in BLOCKING_CHECKS]).cast(pl.String())))
    clean = frame.filter(failed_check.is_null())
    outcomes = [_blocking_outcome(c, passed[c], int(failing[c].sum()), quarantined) for c in BLOCKING_CHECKS]

    gaps = pl.DataFrame(schema=GAPS_SCHEMA)
    if is_judged(series):
        judged = judged_sessions(series, window, sessions)
        gaps = session_gaps(clean, series, judged)
        outcomes.append(completeness_outcome(gaps, judged.days.len()))
    return QualityResult(clean=clean, quarantined=quarantined, gaps=gaps, engine=engine, outcomes=outcomes)


def _failures(frame: pl.DataFrame, series: BarSeries, sessions: Sessions,
              engine: Engine) -> tuple[pl.DataFrame, dict[str, bool]]:
    """One boolean column per blocking check (True where a row fails it) and each check's verdict."""
    if frame.is_empty() or engine == "polars":
        failing = frame.select(~expr for expr in rules(series, sessions).values())
        return failing, {c: not failing[c].any() for c in BLOCKING_CHECKS}
    from ibkr_flows.quality.gx_suite import run_suite

    verdicts = run_suite(frame, series, sessions)
    index = pl.int_range(frame.height, dtype=pl.Int64(), eager=True)
    failing = pl.DataFrame([index.is_in(pl.Series(v.rows, dtype=pl.Int64()).implode()).alias(c)
                            for c, v in verdicts.items()])
    return failing, {c: v.passed for c, v in verdicts.items()}


def _blocking_outcome(check: str, passed: bool, failed_rows: int, quarantined: pl.DataFrame) -> CheckOutcome:
    if passed:
        return CheckOutcome(check, "blocking", passed=True, failed_rows=0, detail=RULE_TEXT[check])
    labelled = quarantined.filter(pl.col("failed_check") == check).height
    return CheckOutcome(check, "blocking", passed=False, failed_rows=failed_rows,
                        detail=f"{failed_rows} row(s) fail, {labelled} quarantined for it")
