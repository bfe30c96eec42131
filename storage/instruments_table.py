"""The instruments table: each IB contract an ingestion resolved, one row per conId, so bars (which carry the
conId) can be read with their contract's multiplier, tick, currency and time zone without asking TWS again.

Each ingestion upserts the contracts it resolved (a MERGE on con_id): a new conId is inserted with `first_seen`,
a known one gets TWS's latest description and `last_updated`, keeping its `first_seen`.
"""

from __future__ import annotations

import polars as pl
from deltalake import CommitProperties
from deltalake.exceptions import DeltaError

from storage.commits import with_commit_retries
from storage.location import TableLocation
from storage.schema import INSTRUMENT_KEY, INSTRUMENTS_SCHEMA
from storage.tables import conform, delta_table, scan, try_open, write

TABLE_NAME = "instruments"


def instruments_path(location: TableLocation) -> str:
    return location.table(TABLE_NAME)


def upsert_instruments(location: TableLocation, rows: pl.DataFrame) -> int:
    """Insert or refresh `rows` (one per conId); returns the table version written, or -1 when `rows` is empty
    and nothing was written."""
    if rows.is_empty():
        return -1
    instruments = conform(rows.unique(INSTRUMENT_KEY, keep="last", maintain_order=True), INSTRUMENTS_SCHEMA,
                          what="instruments")
    path = instruments_path(location)
    refreshed = {column: f"s.{column}" for column in INSTRUMENTS_SCHEMA if column not in (INSTRUMENT_KEY, "first_seen")}

    def upsert() -> int:
        table = try_open(path)
        if table is None:
            try:  # no commit retry: delta-rs would commit the loser of two creations as a second copy (bars_table)
                write(path, instruments, mode="error", commit_properties=CommitProperties(max_commit_retries=0))
                return 0
            except DeltaError as exc:  # created meanwhile (seen before writing): merge into it instead
                if "already exists" not in str(exc):
                    raise
            table = delta_table(path)
        (table.merge(instruments, f"t.{INSTRUMENT_KEY} = s.{INSTRUMENT_KEY}", source_alias="s", target_alias="t")
         .when_matched_update(refreshed)
         .when_not_matched_insert_all()
         .execute())
        return table.version()

    version, _ = with_commit_retries(upsert, what="instruments upsert")
    return version


def read_instruments(location: TableLocation) -> pl.DataFrame:
    """Every stored contract, by instrument id; empty (in the table's schema) before the first ingestion."""
    path = instruments_path(location)
    if try_open(path) is None:
        return pl.DataFrame(schema=INSTRUMENTS_SCHEMA)
    return scan(path).collect().sort("instrument_id", "con_id")

