"""Prefect tasks for table upkeep: thin wrappers over `storage.maintenance`."""

from __future__ import annotations

from deltalake.exceptions import CommitFailedError
from prefect import task

from storage.location import TableLocation
from storage.maintenance import CompactionResult, compact, vacuum
from storage.tables import exists
from tasks.retry import retry_on

MAINTENANCE_TIMEOUT_S = 3600
"""Compaction rewrites a table's small files: seconds per million rows; an hour means a hung store."""
MAINTENANCE_RETRY = retry_on(CommitFailedError, OSError)
"""A compaction loses its commit to a concurrent ingest now and then; running it again is safe (it re-reads)."""


@task(name="compact-table", task_run_name="compact {table}", timeout_seconds=MAINTENANCE_TIMEOUT_S,
      retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=MAINTENANCE_RETRY)
def compact_table(location: TableLocation, table: str) -> CompactionResult | None:
    """None when the table was never created (no bar quarantined yet, say): nothing to compact."""
    path = getattr(location, table)
    return compact(path) if exists(path) else None


@task(name="vacuum-table", task_run_name="vacuum {table}", timeout_seconds=MAINTENANCE_TIMEOUT_S,
      retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=MAINTENANCE_RETRY)
def vacuum_table(location: TableLocation, table: str, retention_hours: int) -> int:
    """Returns how many files were deleted."""
    path = getattr(location, table)
    return len(vacuum(path, retention_hours=retention_hours)) if exists(path) else 0
