"""The quarantine table: bars that failed a blocking quality check, kept with the check and the run.

Never silently dropped: a user can inspect, fix upstream and re-ingest. Appends are insert-if-absent on
(run, bar key, check), so a retried batch does not quarantine the same row twice.

Review (`ibkr data quarantine --release | --drop`) marks rows instead of deleting them: `review_action`
(released / dropped), `review_reason`, `reviewed_by`, `reviewed_at`. A row with no action is pending; a reviewed
row stays in the table as its own audit record (who, when, why), next to the Delta log of the commit that marked
it. The columns are added to the table by its first review; tables never reviewed do not have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import polars as pl
from deltalake import DeltaTable, Field
from deltalake.schema import PrimitiveType

from storage.commits import with_commit_retries
from storage.location import TableLocation
from storage.schema import BAR_KEY, QUARANTINE_SCHEMA, UTC_US
from storage.tables import conform, delta_table, exists, insert_new_rows, scan, stats_only_on

QUARANTINE_KEY = ("flow_run_id", *BAR_KEY, "failed_check")
QUARANTINE_CONFIGURATION = stats_only_on("symbol", *QUARANTINE_KEY)
"""Per-file statistics on what readers and the insert's MERGE select files by: the symbol and the key (see
`stats_only_on`), not all of its 21-25 columns (Delta's default: the first 32), the prices and the check's
detail text among them."""
ReviewAction = Literal["released", "dropped"]
REVIEW_COLUMNS: dict[str, pl.DataType] = {"review_action": pl.String(), "review_reason": pl.String(),
                                          "reviewed_by": pl.String(), "reviewed_at": UTC_US}
REVIEWED_SCHEMA = pl.Schema({**QUARANTINE_SCHEMA, **REVIEW_COLUMNS})
_DELTA_TYPES = {"review_action": "string", "review_reason": "string", "reviewed_by": "string",
                "reviewed_at": "timestamp"}


@dataclass(frozen=True)
class Review:
    """One decision on quarantined rows, recorded on each row it applies to."""

    action: ReviewAction
    reason: str
    user: str
    at: datetime

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("a review needs a reason (--reason TEXT): it is recorded with the rows")


def append_quarantine(location: TableLocation, frame: pl.DataFrame) -> int:
    """Store failing rows (bar columns, lineage, failed_check, check_detail); returns rows newly stored."""
    if frame.is_empty():
        return 0
    if "quarantined_at" not in frame.columns:
        frame = frame.with_columns(quarantined_at=pl.lit(datetime.now(UTC)))
    rows = conform(frame, QUARANTINE_SCHEMA, what="quarantine").unique(QUARANTINE_KEY, keep="first",
                                                                      maintain_order=True)
    return insert_new_rows(location.quarantine, rows, QUARANTINE_KEY, what="quarantine append",
                           configuration=QUARANTINE_CONFIGURATION)


def read_quarantine(location: TableLocation, flow_run_id: str | None = None) -> pl.DataFrame:
    """Quarantined rows (of one run, or all; reviewed ones too), oldest first; empty when nothing was ever
    quarantined."""
    if not exists(location.quarantine):
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    lazy = scan(location.quarantine)
    if flow_run_id is not None:
        lazy = lazy.filter(pl.col("flow_run_id") == flow_run_id)
    return lazy.sort("quarantined_at", "ts").collect()


def scan_reviewed(location: TableLocation, *, symbol: str | None = None, check: str | None = None
                  ) -> pl.LazyFrame:
    """Every quarantined row with the review columns (null where never reviewed, or on a table never reviewed),
    filtered by symbol and failed check."""
    if not exists(location.quarantine):
        return pl.DataFrame(schema=REVIEWED_SCHEMA).lazy()
    lazy = scan(location.quarantine)
    missing = [c for c in REVIEW_COLUMNS if c not in lazy.collect_schema()]
    lazy = lazy.with_columns(pl.lit(None, REVIEW_COLUMNS[c]).alias(c) for c in missing)
    if symbol is not None:
        lazy = lazy.filter(pl.col("symbol") == symbol)
    if check is not None:
        lazy = lazy.filter(pl.col("failed_check") == check)
    return lazy.select(REVIEWED_SCHEMA.names())


def pending_quarantine(location: TableLocation, *, symbol: str | None = None, check: str | None = None
                       ) -> pl.DataFrame:
    """Rows still in quarantine (never released or dropped), oldest first."""
    return (scan_reviewed(location, symbol=symbol, check=check).filter(pl.col("review_action").is_null())
            .sort("quarantined_at", "ts", nulls_last=True).collect())


def quarantine_counts(location: TableLocation, *, symbol: str | None = None, check: str | None = None
                      ) -> pl.DataFrame:
    """Rows per failed check and symbol: pending, released and dropped."""
    action = pl.col("review_action")
    return (scan_reviewed(location, symbol=symbol, check=check)
            .group_by("failed_check", "symbol")
            .agg(pending=action.is_null().sum(), released=(action == "released").sum(),
                 dropped=(action == "dropped").sum())
            .sort("failed_check", "symbol", nulls_last=True).collect())


def pending_by_series(location: TableLocation, key: tuple[str, ...]) -> pl.DataFrame:
    """Pending rows per series (`key` columns) and a `quarantined` count: the catalog's column."""
    return (scan_reviewed(location).filter(pl.col("review_action").is_null())
            .group_by(key).agg(pl.len().alias("quarantined")).collect())


def mark_reviewed(location: TableLocation, rows: pl.DataFrame, review: Review) -> int:
    """Record `review` on the pending rows matching `rows` on the quarantine key (nulls match nulls: a row that
    failed not_null has one); returns how many rows it marked. A row reviewed meanwhile is left as it is."""
    if rows.is_empty():
        return 0
    source = rows.select(QUARANTINE_KEY).unique().with_columns(
        review_action=pl.lit(review.action), review_reason=pl.lit(review.reason),
        reviewed_by=pl.lit(review.user), reviewed_at=pl.lit(review.at, UTC_US))
    predicate = " AND ".join(f"(t.{k} IS NOT DISTINCT FROM s.{k})" for k in QUARANTINE_KEY)

    def write() -> int:
        table = _with_review_columns(location.quarantine)
        metrics = (table.merge(source, predicate, source_alias="s", target_alias="t")
                   .when_matched_update(updates={c: f"s.{c}" for c in REVIEW_COLUMNS},
                                        predicate="t.review_action IS NULL")
                   .execute())
        return int(metrics.get("num_target_rows_updated", 0))

    marked, _ = with_commit_retries(write, what="quarantine review")
    return marked


def _with_review_columns(path: str) -> DeltaTable:
    """The table, given the review columns first if it has never been reviewed (one schema commit)."""
    table = delta_table(path)
    present = {field.name for field in table.schema().fields}
    missing = [Field(name, PrimitiveType(kind), nullable=True) for name, kind in _DELTA_TYPES.items()
               if name not in present]
    if missing:
        table.alter.add_columns(missing)
        table = delta_table(path)
    return table
