"""Weekly table upkeep: compact the small files nightly MERGEs leave behind, then vacuum what no version needs."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from storage.location import TableLocation
from storage.maintenance import DEFAULT_RETENTION_HOURS
from tasks.maintenance import compact_table, vacuum_table

Table = Literal["bars", "quarantine", "backtest_results", "backtest_trades", "grid_results"]


@flow(name="table-maintenance", log_prints=True)
def table_maintenance(
    tables: list[Table] = ["bars"],  # noqa: B006 - Prefect needs a literal default for the UI form
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    data_dir: str | None = None,
) -> None:
    """Compact and vacuum the given tables. Retention below 168 h (7 days) breaks time travel to older versions
    and races with writers that started before the vacuum; keep the default unless disk is short."""
    location = TableLocation.at(data_dir)
    lines = ["| table | files removed | files added | version | vacuumed files |", "|---|---|---|---|---|"]
    for table in tables:
        compacted = compact_table(location, table)
        deleted = vacuum_table(location, table, retention_hours)
        lines.append(f"| {table} | {compacted.files_removed} | {compacted.files_added} | {compacted.version} | "
                     f"{deleted} |" if compacted else f"| {table} | not created yet | | | |")
    create_markdown_artifact(key="table-maintenance", markdown="\n".join(lines),
                             description=f"{len(tables)} table(s) compacted and vacuumed")
