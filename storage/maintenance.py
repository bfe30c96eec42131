"""Table upkeep: compaction of the small files daily MERGEs leave, and vacuum of files no version needs.

Retention default: 7 days (Delta's own minimum), so a backtest pinned to last week's version still reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.commits import with_commit_retries
from storage.tables import open_table

DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class CompactionResult:
    version: int
    files_removed: int
    files_added: int


def compact(path: str, *, target_size: int | None = None) -> CompactionResult:
    """Rewrite small files into larger ones (bin-packing); readers keep seeing the same rows."""

    def write() -> dict[str, Any]:
        return open_table(path).optimize.compact(target_size=target_size)

    metrics, _ = with_commit_retries(write, what="compaction")
    return CompactionResult(open_table(path).version(), int(metrics.get("numFilesRemoved", 0)),
                            int(metrics.get("numFilesAdded", 0)))


def vacuum(path: str, *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False) -> list[str]:
    """Delete files unreferenced for `retention_hours`; time travel to versions older than that stops working."""
    table = open_table(path)
    enforce = retention_hours >= DEFAULT_RETENTION_HOURS
    return table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=enforce)
