"""The GX engine: its gate is a real GX validation whose verdict and record match the polars rules, and the polars
rules mean what GX's own expectations on the raw columns mean (the suite the engine used to run, kept here as the
reference), on batches with every kind of bad bar, including seeded random corruptions."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import polars as pl
import polars.selectors as cs
import pytest
from great_expectations.expectations.row_conditions import Column

from ibkr_flows.ib.sessions import sessions_between
from ibkr_flows.quality.checks import (
    BLOCKING_CHECKS,
    NOT_NULL_COLUMNS,
    PRICE_COLUMNS,
    RULE_TEXT,
    SIZE_COLUMNS,
    BarSeries,
    Sessions,
    rules,
)
from ibkr_flows.quality.gx_suite import GxDisagreementError, check_agreement, gate, suite
from ibkr_flows.quality.validate import warm_up
from storage.schema import BAR_KEY
from tests.test_quality import BAD_ROWS, DAY, bars, validate, with_every_bad_kind

NATIVE_CHECKS = ("not_null", "positive_prices", "high_ge_open_close", "low_le_open_close", "volume_non_negative",
                 "unique_key")
"""The row rules GX has expectations for; aligned_ts and in_session are exchange-calendar lookups."""
COMPLETE: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}


def native_expectations(allows_missing_volume: bool) -> list[gxe.Expectation]:
    """GX's own expectations for the row rules, each tagged with its check; missing values skipped but by the null
    checks, as in `quality.checks`."""
    def tagged(check: str, *expectations: gxe.Expectation) -> list[gxe.Expectation]:
        for expectation in expectations:
            expectation.meta = {"check": check}
        return list(expectations)

    def non_negative(column: str) -> gxe.Expectation:
        if allows_missing_volume:
            return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, row_condition=Column(column) != -1)
        return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0)

    either = "either_value_is_missing"
    return [
        *tagged("not_null", *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in NOT_NULL_COLUMNS)),
        *tagged("positive_prices", *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
                                     for c in PRICE_COLUMNS)),
        *tagged("high_ge_open_close", *(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B=c, or_equal=True, ignore_row_if=either) for c in ("open", "close"))),
        *tagged("low_le_open_close", *(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=c, column_B="low", or_equal=True, ignore_row_if=either) for c in ("open", "close"))),
        *tagged("volume_non_negative", *(non_negative(c) for c in SIZE_COLUMNS)),
        *tagged("unique_key", gxe.ExpectCompoundColumnsToBeUnique(column_list=list(BAR_KEY),
                                                                  ignore_row_if="any_value_is_missing")),
    ]


@pytest.fixture(scope="module")
def native() -> Any:
    """A context of its own with the native suites and a pandas batch definition."""
    context = gx.get_context(mode="ephemeral")
    suites = {flag: context.suites.add(gx.ExpectationSuite(name=f"native-{flag}",
                                                           expectations=native_expectations(flag)))
              for flag in (False, True)}
    batches = context.data_sources.add_pandas("raw").add_dataframe_asset("raw").add_batch_definition_whole_dataframe(
        "raw")
    return suites, batches


def native_failing_rows(native: Any, frame: pl.DataFrame, series: BarSeries) -> dict[str, list[int]]:
    """Row positions GX's native expectations name per check (unique_key: all copies but the first)."""
    suites, batches = native
    prepared = frame.select(*dict.fromkeys([*NOT_NULL_COLUMNS, *SIZE_COLUMNS, *BAR_KEY])).with_columns(
        cs.float().fill_nan(None))
    pdf = prepared.to_pandas(use_pyarrow_extension_array=True)
    pdf["ts"] = prepared["ts"].to_pandas()
    batch = batches.get_batch(batch_parameters={"dataframe": pdf})
    validation = batch.validate(suites[series.allows_missing_volume], result_format=COMPLETE)
    rows: dict[str, set[int]] = {check: set() for check in NATIVE_CHECKS}
    for result in validation.results:
        assert not (result.exception_info or {}).get("raised_exception"), result.exception_info
        rows[result.expectation_config.meta["check"]].update(int(i) for i in result.result["unexpected_index_list"])
    copies = frame.select(BAR_KEY).with_row_index("row").filter(pl.col("row").is_in(sorted(rows["unique_key"])))
    rows["unique_key"] = set(copies.filter(~pl.struct(BAR_KEY).is_first_distinct())["row"].to_list())
    return {check: sorted(found) for check, found in rows.items()}


def polars_failing_rows(frame: pl.DataFrame, series: BarSeries) -> dict[str, list[int]]:
    failing = frame.select(~e for e in rules(series, Sessions.for_frame(frame, series)).values())
    return {check: failing.with_row_index("row").filter(check)["row"].to_list() for check in NATIVE_CHECKS}


def corrupted(clean: pl.DataFrame, seed: int, share: float = 0.2) -> pl.DataFrame:
    """`clean` with a random `share` of rows broken in one to three random ways each, plus copies of keys."""
    rng = random.Random(seed)

    def nothing_number() -> float | None:
        return rng.choice([None, float("nan")])

    breakers = [
        lambda r: r | {rng.choice(["symbol", "con_id", "bar_size", "what_to_show", "use_rth", "ts"]): None},
        lambda r: r | {rng.choice(PRICE_COLUMNS): nothing_number()},
        lambda r: r | {rng.choice(PRICE_COLUMNS): rng.choice([0.0, -1.0, -0.01])},
        lambda r: r | {"high": min(r["open"] or 0, r["close"] or 0) - rng.choice([0.01, 1.0])},
        lambda r: r | {"low": max(r["open"] or 0, r["close"] or 0) + rng.choice([0.01, 1.0])},
        lambda r: r | {c: rng.choice([-1, -2]) if c == "bar_count" else rng.choice([-1.0, -2.0, -0.5])
                       for c in rng.sample(SIZE_COLUMNS, rng.randint(1, 3))},
        lambda r: r | {rng.choice(["volume", "wap"]): nothing_number()},
        lambda r: r if r["ts"] is None else r | {"ts": r["ts"] + rng.choice([timedelta(seconds=30),
                                                                             timedelta(hours=-12)])},
    ]
    rows = clean.to_dicts()
    for row in rows:
        if rng.random() < share:
            for breaker in rng.sample(breakers, rng.randint(1, 3)):
                row.update(breaker(row))
    copied = rng.sample(range(len(rows)), len(rows) // 20 + 2)
    copies = [rows[i] | {"close": (rows[i]["close"] or 1.0) + 0.1} for i in copied]
    return pl.DataFrame(rows + copies + copies[:5], schema=clean.schema)


BATCHES = {
    "every kind": lambda: with_every_bad_kind(bars([DAY])),
    "random ETH": lambda: corrupted(bars([date(2024, 7, 2)], use_rth=False), seed=1),
    "random RTH half day": lambda: corrupted(bars([date(2024, 7, 3)]), seed=2, share=0.5),
    "random MIDPOINT": lambda: corrupted(bars([DAY], what_to_show="MIDPOINT"), seed=3),
    "random 5 mins": lambda: corrupted(bars([DAY, date(2024, 3, 8)], bar_size="5 mins", use_rth=False), seed=4),
    "random daily": lambda: corrupted(bars(sessions_between(datetime(2024, 1, 1, tzinfo=UTC),
                                                            datetime(2024, 7, 1, tzinfo=UTC)), bar_size="1 day"),
                                      seed=5),
}


def kinds(frame: pl.DataFrame) -> dict[str, Any]:
    return {"bar_size": frame["bar_size"].drop_nulls()[0], "use_rth": frame["use_rth"].drop_nulls()[0],
            "what_to_show": frame["what_to_show"].drop_nulls()[0]}


@pytest.mark.parametrize("name", BATCHES)
def test_polars_rules_name_the_rows_gx_native_expectations_name(native: Any, name: str) -> None:
    frame = BATCHES[name]()
    series = BarSeries(**kinds(frame))
    by_gx, by_polars = native_failing_rows(native, frame, series), polars_failing_rows(frame, series)
    assert by_gx == by_polars
    assert all(by_polars[check] for check in NATIVE_CHECKS), "every rule must be broken somewhere in the batch"


@pytest.mark.parametrize("name", BATCHES)
def test_both_engines_quarantine_the_same_rows_under_the_same_check(name: str) -> None:
    frame = BATCHES[name]()
    by_polars, by_gx = validate(frame, "polars", **kinds(frame)), validate(frame, "great_expectations", **kinds(frame))
    assert not any(o.passed for o in by_gx.outcomes if o.severity == "blocking"), "every check must find rows"
    assert by_gx.clean.equals(by_polars.clean)
    assert by_gx.quarantined.equals(by_polars.quarantined)
    assert by_gx.outcomes == by_polars.outcomes
    assert by_gx.gaps.equals(by_polars.gaps)


def test_the_gx_validation_records_a_failing_batch() -> None:
    frame = with_every_bad_kind(bars([DAY]))
    result = validate(frame, "great_expectations")
    validation = result.validation
    assert validation is not None and not validation.success
    (record,) = validation.results
    assert record.expectation_config.type == "expect_column_sum_to_be_between"
    assert record.result["observed_value"] == result.quarantined.height == len(BAD_ROWS) + 1
    stored = validation.to_json_dict()
    assert stored["suite_name"] == "bars" and stored["results"][0]["result"]["observed_value"] == len(BAD_ROWS) + 1
    assert stored["meta"]["active_batch_definition"]["data_asset_name"] == "bars"
    assert stored["meta"]["batch_markers"]["pandas_data_fingerprint"]


def test_the_gx_validation_of_a_clean_batch_is_a_pass_and_polars_has_none() -> None:
    clean = bars([DAY])
    result = validate(clean, "great_expectations")
    assert result.validation is not None and result.validation.success
    assert result.validation.results[0].result["observed_value"] == 0
    assert validate(clean, "polars").validation is None
    empty = validate(clean.clear(), "great_expectations").validation
    assert empty is not None and empty.success


def test_the_gx_suite_documents_every_rule() -> None:
    assert suite().meta["rules"] == {check: RULE_TEXT[check] for check in BLOCKING_CHECKS}
    assert suite().expectations[0].meta["checks"] == list(BLOCKING_CHECKS)


def test_a_gx_verdict_that_disagrees_with_the_rules_is_refused() -> None:
    validation = gate(pl.Series("failed_check", [None, "not_null", None], pl.String()))
    check_agreement(validation, 1)
    with pytest.raises(GxDisagreementError, match="GX counted 1 quarantined row"):
        check_agreement(validation, 2)
    with pytest.raises(GxDisagreementError, match="the rules 0"):
        check_agreement(validation, 0)


def test_warm_up_builds_gx_on_a_thread_and_polars_needs_none() -> None:
    assert warm_up("polars") is None
    thread = warm_up("great_expectations")
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive()
    result = validate(bars([DAY]).head(30), "great_expectations")
    assert result.validation is not None and result.validation.success
