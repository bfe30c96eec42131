"""The `table-maintenance` flow on a real (ephemeral) Prefect API and a real bars table of many small MERGEs:
compaction, vacuum by retention, time travel, and its artifact."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.bars_table import merge_bars, table_version
from storage.location import TableLocation
from storage.tables import open_table
from tests.test_storage import JULY, make_bars, read_all

pytestmark = pytest.mark.usefixtures("prefect_harness")
MERGES = 6


@pytest.fixture
def location(tmp_path: Path) -> TableLocation:
    """A bars table as nightly ingestion leaves it: one small file (at least) per MERGE."""
    location = TableLocation(tmp_path)
    for k in range(MERGES):
        merge_bars(location, make_bars("AAPL", JULY + timedelta(minutes=10 * k), 10))
    return location


def _files_on_disk(location: TableLocation) -> set[Path]:
    return {p.resolve() for p in Path(location.bars).rglob("*.parquet")}


def _files_referenced(location: TableLocation, version: int | None = None) -> set[Path]:
    return {Path(uri.removeprefix("file://")).resolve() for uri in open_table(location.bars, version).file_uris()}


def _run(location: TableLocation, **parameters: Any) -> str:
    """Run the flow; returns its `table-maintenance` artifact's markdown."""
    from prefect.artifacts import Artifact

    from flows.maintenance import table_maintenance

    state = table_maintenance(**parameters, data_dir=str(location.root), return_state=True)
    assert state.is_completed(), state.message
    artifact = Artifact.get("table-maintenance")
    assert artifact is not None and artifact.flow_run_id == state.state_details.flow_run_id
    return str(artifact.data)


def _row(markdown: str, table: str) -> list[int]:
    """The artifact's numbers for a table: files removed, files added, version, vacuumed files."""
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {table} |")]
    return [int(cell) for cell in line.strip("|").split("|")[1:]]


def test_default_retention_compacts_and_keeps_time_travel(location: TableLocation) -> None:
    before, version, files = read_all(location), table_version(location), _files_referenced(location)
    assert version is not None and len(files) >= MERGES

    removed, added, compacted_version, vacuumed = _row(_run(location, tables=["bars"]), "bars")

    assert compacted_version == version + 1 and table_version(location) >= compacted_version  # vacuum may commit
    compacted = _files_referenced(location)
    assert (removed, added) == (len(files), len(compacted)) and removed > added >= 1
    assert not compacted & files
    assert read_all(location).equals(before)
    assert vacuumed == 0 and files <= _files_on_disk(location)  # all younger than the 7-day window: none deleted
    assert read_all(location, version=0).height == 10  # time travel to the first MERGE still works
    assert read_all(location, version=version).equals(before)


def test_zero_retention_vacuums_every_unreferenced_file(location: TableLocation) -> None:
    """Below 168 h the code turns Delta's retention check off rather than refusing: the vacuum deletes every file
    the current version does not reference, and versions before the compaction stop reading."""
    before, version, on_disk = read_all(location), table_version(location), _files_on_disk(location)

    removed, added, compacted_version, vacuumed = _row(_run(location, tables=["bars"], retention_hours=0), "bars")

    assert compacted_version == version + 1 and removed > added >= 1
    remaining = _files_referenced(location)
    assert _files_on_disk(location) == remaining == _files_referenced(location, compacted_version)
    assert vacuumed == len(on_disk) + added - len(remaining) >= removed
    assert read_all(location).equals(before)
    assert read_all(location, version=compacted_version).equals(before)  # time travel to the last version reads
    with pytest.raises(FileNotFoundError):  # its small files are gone
        read_all(location, version=version)


def test_deployment_defaults_skip_a_table_never_created(location: TableLocation) -> None:
    """weekly-table-maintenance names [bars, quarantine]; no quarantine table exists until a bar is quarantined."""
    markdown = _run(location, tables=["bars", "quarantine"], retention_hours=168)
    assert "| quarantine | not created yet |" in markdown
    assert _row(markdown, "bars")[0] >= MERGES
    assert not Path(location.quarantine).exists()
