"""The blocking rules as a Great Expectations 1.x suite, run as the quality gate of the "great_expectations" engine.

GX decides: its verdict is each check's pass/fail, and the failing rows are GX's own `unexpected_index_list`.
The suite first runs with BOOLEAN_ONLY (cheap); only the expectations that failed are re-run with COMPLETE to get
their rows, so a clean batch pays for one pass. Two rules have no natural expectation: `aligned_ts` and
`in_session` need the exchange calendar, so `quality.checks` evaluates them and GX gates the resulting boolean
columns with `ExpectColumnValuesToBeInSet([True])`. `ExpectCompoundColumnsToBeUnique` names every copy of a
duplicated key; keeping the first copy is our policy, applied to the rows GX named.

GX takes 2-14 s to import, so it is imported inside functions only, and one ephemeral context serves the process.
GX reads pandas only, and treats NaN in pyarrow-backed columns as a value: float NaN becomes null before handing
over, as in the polars rules.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import polars as pl
import polars.selectors as cs

from ibkr_flows.quality.checks import (
    BLOCKING_CHECKS,
    NOT_NULL_COLUMNS,
    PRICE_COLUMNS,
    SIZE_COLUMNS,
    BarSeries,
    Sessions,
    aligned_ts,
    in_session,
)
from storage.schema import BAR_KEY

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context import AbstractDataContext

CALENDAR_COLUMNS = {"aligned_ts": "aligned_ts_ok", "in_session": "in_session_ok"}
"""Boolean columns computed in polars for the rules that need the exchange calendar."""
COMPLETE: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
_lock = threading.Lock()
"""One GX context per process, and GX contexts are not thread-safe: one validation at a time."""


@dataclass(frozen=True)
class GxVerdict:
    passed: bool
    rows: list[int]
    """Failing row positions in the validated frame."""


@cache
def _context() -> AbstractDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types import base
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger(base.__name__).setLevel(logging.WARNING)  # GX pins this one to INFO: a line per context
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@cache
def _batch_definition() -> BatchDefinition:
    asset = _context().data_sources.add_pandas("bars").add_dataframe_asset("bars")
    return asset.add_batch_definition_whole_dataframe("batch")


@cache
def suite(allows_missing_volume: bool) -> ExpectationSuite:
    """The blocking rules as expectations, each tagged with its check in `meta`. Missing values are skipped by
    every expectation but the null checks, as in `quality.checks`."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    def tagged(check: str, *expectations: gxe.Expectation) -> list[gxe.Expectation]:
        for expectation in expectations:
            expectation.meta = {"check": check}
        return list(expectations)

    def non_negative(column: str) -> gxe.Expectation:
        if allows_missing_volume:  # -1 is IB's "no trades to count"
            return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, row_condition=Column(column) != -1)
        return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0)

    either_missing = "either_value_is_missing"
    expectations = [
        *tagged("not_null", *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in NOT_NULL_COLUMNS)),
        *tagged("positive_prices", *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
                                     for c in PRICE_COLUMNS)),
        *tagged("high_ge_open_close", *(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B=c, or_equal=True, ignore_row_if=either_missing) for c in ("open", "close"))),
        *tagged("low_le_open_close", *(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=c, column_B="low", or_equal=True, ignore_row_if=either_missing) for c in ("open", "close"))),
        *tagged("volume_non_negative", *(non_negative(c) for c in SIZE_COLUMNS)),
        *tagged("unique_key", gxe.ExpectCompoundColumnsToBeUnique(column_list=list(BAR_KEY),
                                                                  ignore_row_if="any_value_is_missing")),
        *tagged("aligned_ts", gxe.ExpectColumnValuesToBeInSet(column=CALENDAR_COLUMNS["aligned_ts"],
                                                              value_set=[True])),
        *tagged("in_session", gxe.ExpectColumnValuesToBeInSet(column=CALENDAR_COLUMNS["in_session"],
                                                              value_set=[True])),
    ]
    name = "bars-no-volume-data" if allows_missing_volume else "bars"
    built = gx.ExpectationSuite(name=name, expectations=expectations)
    return _context().suites.add(built)


def _handover(frame: pl.DataFrame, series: BarSeries, sessions: Sessions) -> Any:
    """The columns the suite reads, as the pandas frame GX needs (NaN as null, calendar rules as booleans)."""
    columns = list(dict.fromkeys([*NOT_NULL_COLUMNS, *SIZE_COLUMNS, *BAR_KEY]))
    prepared = frame.select(
        *columns,
        aligned_ts(series, sessions).alias(CALENDAR_COLUMNS["aligned_ts"]),
        in_session(series, sessions).alias(CALENDAR_COLUMNS["in_session"]),
    ).with_columns(cs.float().fill_nan(None))
    pdf = prepared.to_pandas(use_pyarrow_extension_array=True)
    pdf["ts"] = prepared["ts"].to_pandas()  # numpy datetime64: GX hashes every batch, pyarrow timestamps 1000x slower
    return pdf


def _raise_on_error(result: Any) -> None:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        raise RuntimeError(f"GX {result.expectation_config.type} failed to run: {info.get('exception_message')}")


def _later_copies(frame: pl.DataFrame, rows: list[int]) -> list[int]:
    """Of the rows GX named as copies of a key, all but the first copy of each key (input order)."""
    copies = frame.select(BAR_KEY).with_row_index("row").filter(pl.col("row").is_in(rows))
    return copies.filter(~pl.struct(BAR_KEY).is_first_distinct())["row"].to_list()


def run_suite(frame: pl.DataFrame, series: BarSeries, sessions: Sessions) -> dict[str, GxVerdict]:
    """GX's verdict and failing rows for every blocking check on `frame` (non-empty)."""
    pdf = _handover(frame, series, sessions)
    rows: dict[str, set[int]] = {check: set() for check in BLOCKING_CHECKS}
    passed = dict.fromkeys(BLOCKING_CHECKS, True)
    with _lock:
        rules = suite(series.allows_missing_volume)
        by_id = {e.id: e for e in rules.expectations}
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": pdf})
        gate = batch.validate(rules, result_format="BOOLEAN_ONLY")
        for result in gate.results:
            _raise_on_error(result)
            if result.success:
                continue
            check = result.expectation_config.meta["check"]
            passed[check] = False
            complete = batch.validate(by_id[result.expectation_config.id], result_format=COMPLETE)
            _raise_on_error(complete)
            rows[check].update(int(i) for i in complete.result["unexpected_index_list"])
    rows["unique_key"] = set(_later_copies(frame, sorted(rows["unique_key"])))
    return {check: GxVerdict(passed[check], sorted(rows[check])) for check in BLOCKING_CHECKS}
