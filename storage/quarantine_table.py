"""The quarantine table: bars that failed a blocking quality check, kept with the check and the run.

Never silently dropped: a user can inspect, fix upstream and re-ingest. Appends are insert-if-absent on
(run, bar key, check), so a retried batch does not quarantine the same row twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from storage.location import TableLocation
from storage.schema import BAR_KEY, QUARANTINE_SCHEMA
from storage.tables import conform, exists, insert_new_rows

QUARANTINE_KEY = ("flow_run_id", *BAR_KEY, "failed_check")


def append_quarantine(location: TableLocation, frame: pl.DataFrame) -> int:
    """Store failing rows (bar columns, lineage, failed_check, check_detail); returns rows newly stored."""
    if frame.is_empty():
        return 0
    if "quarantined_at" not in frame.columns:
        frame = frame.with_columns(quarantined_at=pl.lit(datetime.now(UTC)))
    rows = conform(frame, QUARANTINE_SCHEMA, what="quarantine").unique(QUARANTINE_KEY, keep="first",
                                                                      maintain_order=True)
    return insert_new_rows(location.quarantine, rows, QUARANTINE_KEY, what="quarantine append")


def read_quarantine(location: TableLocation, flow_run_id: str | None = None) -> pl.DataFrame:
    """Quarantined rows (of one run, or all), oldest first; empty when nothing was ever quarantined."""
    if not exists(location.quarantine):
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    lazy = pl.scan_delta(location.quarantine)
    if flow_run_id is not None:
        lazy = lazy.filter(pl.col("flow_run_id") == flow_run_id)
    return lazy.sort("quarantined_at", "ts").collect()
