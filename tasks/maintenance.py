"""Prefect tasks for table upkeep: thin wrappers over `storage.maintenance`."""

from __future__ import annotations

from prefect import task

from storage.location import TableLocation
from storage.maintenance import CompactionResult, compact, vacuum


@task(name="compact-table", task_run_name="compact {table}")
def compact_table(location: TableLocation, table: str) -> CompactionResult:
    return compact(getattr(location, table))


@task(name="vacuum-table", task_run_name="vacuum {table}")
def vacuum_table(location: TableLocation, table: str, retention_hours: int) -> int:
    """Returns how many files were deleted."""
    return len(vacuum(getattr(location, table), retention_hours=retention_hours))
