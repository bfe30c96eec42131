"""The Great Expectations gate of the "great_expectations" engine: one batch-level expectation, one validation per
batch, and its result as the documented record of what the gate decided.

The blocking rules are defined once, as polars expressions (`quality.checks`), and evaluated once, in polars, into
`failed_check` (the first blocking check a row fails, null for a clean row). GX validates the batch: the sum of its
`quarantined` flags (`failed_check` is not null) must be 0 (`ExpectColumnSumToBeBetween`). GX's count must equal the
rules' count, and its result (verdict, the count as `observed_value`, the batch's fingerprint, the suite whose meta
states every rule) is what GX adds; the rows and their checks are the polars frame's.

Why not each rule as its own GX expectation (the suite this replaces: 24 row-level expectations): GX spends ~3 ms
of planning per expectation per validation (metric graphs rebuilt each time), which made the gate 10-40x the polars
rules on 1k-10k-row batches, and naming failing rows took a second, COMPLETE pass. One row-level expectation over
`failed_check` still costs 4-5 ms on 1,000 rows (7-10 ms once it lists failing rows); this aggregate one costs
2.5-3 ms on 1,000 rows and ~10 ms on 100,000, with the count in every result format. That the polars rules mean
what GX's own expectations on the raw columns mean is asserted by `tests/test_quality_gx.py`, on batches with
every kind of bad bar.

GX takes 3-14 s to import, so it is imported inside functions only (`warm_up` does it on a thread, to overlap it with
fetching), and one ephemeral context serves the process. GX reads pandas only: the hand-over is one numpy column.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import TYPE_CHECKING

import polars as pl

from ibkr_flows.quality.checks import BLOCKING_CHECKS, RULE_TEXT

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.data_context import AbstractDataContext

QUARANTINED = "quarantined"
RESULT_FORMAT = "BASIC"
"""The verdict and the count (`observed_value`); an aggregate expectation costs the same in every format."""
_lock = threading.Lock()
"""One GX context per process, and GX contexts are not thread-safe: one validation (or build) at a time."""


class GxDisagreementError(RuntimeError):
    """GX's count of quarantined rows differs from the rules' own: a hand-over fault, never a data problem, so the
    batch is not gated at all."""


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
def suite() -> ExpectationSuite:
    """The gate's suite; its meta states every rule, so a stored validation result says what was checked."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectation = gxe.ExpectColumnSumToBeBetween(
        column=QUARANTINED, min_value=0, max_value=0, meta={"checks": list(BLOCKING_CHECKS)},
        notes="quarantined is true for a bar failing any blocking check (meta.checks, in precedence order; the "
              "quarantine records the first one it fails): the sum is the number of bars quarantined.")
    built = gx.ExpectationSuite(name="bars", expectations=[expectation],
                                meta={"rules": {check: RULE_TEXT[check] for check in BLOCKING_CHECKS}})
    return _context().suites.add(built)


def _build() -> None:
    gate(pl.Series("failed_check", [], pl.String()))  # the first validation also imports and registers GX's parts


def warm_up() -> threading.Thread:
    """Import GX and build its context and suite on a daemon thread: a run that starts this before fetching pays
    the import while it waits on IB, not before its first quality check (which waits for the build if needed)."""
    thread = threading.Thread(target=_build, name="gx-warm-up", daemon=True)
    thread.start()
    return thread


def gate(failed_check: pl.Series) -> ExpectationSuiteValidationResult:
    """GX's validation of one batch, given its `failed_check` column (any length, empty included)."""
    failing = failed_check.len() - failed_check.null_count()
    pdf = failed_check.is_not_null().alias(QUARANTINED).to_frame().to_pandas()
    with _lock:
        rules = suite()
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": pdf})
        validation = batch.validate(rules, result_format=RESULT_FORMAT)
    check_agreement(validation, failing)
    return validation


def check_agreement(validation: ExpectationSuiteValidationResult, failing: int) -> None:
    """Raise unless GX ran, and counted exactly the `failing` rows the rules found."""
    (result,) = validation.results
    info = result.exception_info or {}
    if info.get("raised_exception"):
        raise GxDisagreementError(f"GX {result.expectation_config.type} failed to run: "
                                  f"{info.get('exception_message')}")
    counted = int(result.result["observed_value"])
    if validation.success != (failing == 0) or counted != failing:
        raise GxDisagreementError(f"GX counted {counted} quarantined row(s) (success={validation.success}), "
                                  f"the rules {failing}")
