"""`scan_table` reads a small local table as its Parquet files (no pyarrow import) and anything else through
`pl.scan_delta`: both must give the same rows and schema, whatever the table went through."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake

from storage import tables
from storage.tables import scan_table, write


def both_ways(table: DeltaTable) -> tuple[pl.DataFrame, pl.DataFrame]:
    mine = scan_table(table).collect()
    reference = pl.scan_delta(table).collect()
    return mine.sort(mine.columns), reference.sort(reference.columns)


def frame(first: int, rows: int, month: str) -> pl.DataFrame:
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    return pl.DataFrame({"symbol": [f"S{i % 3}" for i in range(first, first + rows)],
                         "ts": [start + timedelta(minutes=i) for i in range(first, first + rows)],
                         "close": [100.0 + i for i in range(first, first + rows)], "month": month},
                        schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "close": pl.Float64,
                                "month": pl.String})


def test_partitioned_table_with_a_column_added_later_reads_as_scan_delta(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    write(path, frame(0, 50, "2024-01"), mode="error", partition_by=["month"])
    write_deltalake(path, frame(50, 50, "2024-02"), mode="append", partition_by=["month"])
    wider = frame(100, 20, "2024-02").with_columns(volume=pl.lit(7.0))
    write_deltalake(path, wider, mode="append", partition_by=["month"], schema_mode="merge")
    table = DeltaTable(path)
    assert len(table.file_uris()) <= tables.SMALL_TABLE_FILES  # the Parquet-file path
    mine, reference = both_ways(table)
    assert mine.schema == reference.schema and mine.equals(reference)
    assert mine.height == 120 and mine["volume"].null_count() == 100
    assert mine.filter(pl.col("month") == "2024-01").height == 50
    old = DeltaTable(path, version=1)  # time travel: the files of that version only
    mine, reference = both_ways(old)
    assert "volume" not in mine.columns and mine.equals(reference) and mine.height == 100


def test_a_table_of_many_files_goes_through_scan_delta_with_the_same_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "many")
    write(path, frame(0, 2, "2024-01"), mode="error")
    for k in range(1, tables.SMALL_TABLE_FILES + 1):
        write_deltalake(path, frame(2 * k, 2, "2024-01"), mode="append")
    table = DeltaTable(path)
    assert len(table.file_uris()) > tables.SMALL_TABLE_FILES
    mine, reference = both_ways(table)
    assert mine.equals(reference) and mine.height == 2 * (tables.SMALL_TABLE_FILES + 1)


def test_an_emptied_table_reads_as_no_rows_with_its_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "emptied")
    write(path, frame(0, 5, "2024-01"), mode="error")
    DeltaTable(path).delete()
    mine, reference = both_ways(DeltaTable(path))
    assert mine.height == reference.height == 0 and mine.schema == reference.schema


def test_reading_a_small_table_imports_no_pyarrow(tmp_path: Path) -> None:
    """The point of the Parquet-file path: polars' Delta scan imports pyarrow (60-70 ms in every CLI process)."""
    path = str(tmp_path / "t")
    write(path, frame(0, 10, "2024-01"), mode="error", partition_by=["month"])
    probe = (f"import sys; from storage.tables import scan; n = scan({path!r}).collect().height; "
             "print(n, 'pyarrow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["10", "False"]
