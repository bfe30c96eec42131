"""The three steps every batch of one series goes through: fetch (IB), check (quality gate), store (quarantine and
MERGE). Each is a plain function; the run (`ingest.engine`) chains them, and the Prefect tasks wrap the same
functions so each step shows in the UI with retries fitted to how it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl

from ibkr_flows.ingest.adjustments import split_like_jumps
from ibkr_flows.ingest.convert import bars_to_frame
from ibkr_flows.ingest.errors import SymbolError
from ibkr_flows.ingest.fetch import IBSession, fetch_chunk
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.plan import Chunk
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.ingest.scales import ScaleCheck, check_scale, record_replaced, rescale_before_merge
from ibkr_flows.ingest.series import ResolvedSeries
from ibkr_flows.quality.validate import validate_bars
from storage.bars_table import merge_bars, replace_series, table_version
from storage.location import TableLocation
from storage.quarantine_table import append_quarantine

BATCH_ROWS = 50_000
"""Rows fetched per symbol before a quality check + MERGE: fewer, larger Delta commits, bounded re-fetch after
a crash."""
LINEAGE = ("ingested_at", "flow_run_id", "request")


@dataclass(frozen=True)
class FetchContext:
    """What every fetch of one run shares: the connection, the pacing budget and the run's identity."""

    session: IBSession
    budget: PacingBudget
    request: IngestRequest
    flow_run_id: str
    on_chunk: Callable[[], None] = lambda: None
    """Called after each request, for progress."""


@dataclass
class FetchedBatch:
    """Bars of consecutive chunks of one series, oldest first, and what happened fetching them. `error` is set
    when the series failed part-way: the bars before the failure are still stored, so the next run resumes
    after them."""

    symbol: str
    window: tuple[datetime, datetime]
    frame: pl.DataFrame
    what_to_show: str = "TRADES"
    sec_type: str = "STK"
    """The contract's security type: which size columns IB leaves empty depends on it (`quality.checks`)."""
    judge_completeness: bool = True
    """False for an instrument without a known session calendar to count bars on."""
    calendar: str = "XNYS"
    """The instrument's session calendar (`ib.calendars`) the quality checks use."""
    chunks_fetched: int = 0
    chunks_empty: int = 0
    error: SymbolError | None = None
    replaces_series: bool = False
    """A whole-series snapshot (an up-to-now request, e.g. ADJUSTED_LAST): stored in place of the series."""


@dataclass(frozen=True, order=True)
class SessionGap:
    """A session of the exchange calendar that got fewer bars than it has (none at all: a missing session)."""

    session: date
    expected: int
    received: int

    def __str__(self) -> str:
        return f"{self.session} ({'no bars' if not self.received else f'{self.received} of {self.expected} bars'})"


@dataclass(frozen=True)
class CheckedBatch:
    symbol: str
    window: tuple[datetime, datetime]
    clean: pl.DataFrame
    """Rows that passed every blocking check, with their lineage columns."""
    quarantined: pl.DataFrame
    gaps: tuple[SessionGap, ...]
    warnings: list[str] = field(default_factory=list)
    replaces_series: bool = False
    calendar: str = "XNYS"
    """The instrument's session calendar (`ib.calendars`): which session a split found in the overlap dates to."""


@dataclass(frozen=True)
class StoredBatch:
    rows_inserted: int
    rows_updated: int
    rows_quarantined: int
    table_version: int | None
    last_ts: datetime | None
    scale: ScaleCheck | None = None
    """The batch's overlap with the stored bars: a split or dividend found there, or a difference left alone."""


async def fetch_batch(context: FetchContext, series: ResolvedSeries, chunks: Sequence[Chunk], end: datetime
                      ) -> FetchedBatch:
    """Fetch `chunks` in order until `BATCH_ROWS` rows have arrived (the caller passes the rest next time). The
    batch's window, which the completeness check judges sessions in, runs to the chunk that filled it, or to the
    run's `end` when the chunks ran out or the series failed."""
    r = context.request
    frames: list[pl.DataFrame] = []
    batch = FetchedBatch(series.symbol, (chunks[0].start, end), pl.DataFrame(), what_to_show=series.what_to_show,
                         sec_type=series.sec_type, judge_completeness=series.judges_completeness,
                         calendar=series.planning_calendar,
                         replaces_series=chunks[0].up_to_now)
    try:
        for chunk in chunks:
            bars = await fetch_chunk(context.session, context.budget, series.contract, chunk, bar_size=r.bar_size,
                                     what_to_show=series.what_to_show, use_rth=r.use_rth,
                                     timeout=r.request_timeout_s)
            batch.chunks_fetched += 1
            batch.chunks_empty += not bars
            context.on_chunk()
            frame = bars_to_frame(bars, symbol=series.symbol, details=series.details, chunk=chunk,
                                  bar_size=r.bar_size, what_to_show=series.what_to_show, use_rth=r.use_rth,
                                  flow_run_id=context.flow_run_id, ingested_at=datetime.now(UTC))
            if frame.height:
                frames.append(frame)
            if sum(f.height for f in frames) >= BATCH_ROWS:
                batch.window = (batch.window[0], chunk.end)
                break
    except SymbolError as exc:
        batch.error = exc
    if frames:
        batch.frame = pl.concat(frames)
    return batch


def check_batch(batch: FetchedBatch, request: IngestRequest) -> CheckedBatch:
    """The quality gate: failing rows are set aside for the quarantine, never dropped."""
    lineage = batch.frame.select("ts", *LINEAGE)
    result = validate_bars(batch.frame.drop(*LINEAGE), bar_size=request.bar_size, use_rth=request.use_rth,
                           what_to_show=batch.what_to_show, sec_type=batch.sec_type, window=batch.window,
                           calendar=batch.calendar, judge_completeness=batch.judge_completeness,
                           engine=request.quality_engine)
    quarantined = result.quarantined
    if quarantined.height:
        lo, hi = batch.window
        quarantined = quarantined.with_columns(
            ingested_at=pl.lit(datetime.now(UTC)), flow_run_id=pl.lit(batch.frame["flow_run_id"][0]),
            request=pl.lit(f"batch {lo:%Y-%m-%d %H:%M}..{hi:%Y-%m-%d %H:%M}"))
    return CheckedBatch(
        symbol=batch.symbol, window=batch.window,
        clean=result.clean.join(lineage.unique("ts", keep="first"), on="ts", how="left"),
        quarantined=quarantined,
        gaps=tuple(SessionGap(*row) for row in result.gaps.select("session", "expected", "received").iter_rows()),
        warnings=[f"{batch.symbol}: {w.detail}" for w in result.warnings]
        + [f"{batch.symbol}: {jump.describe()}"
           for jump in split_like_jumps(result.clean, bar_size=request.bar_size, calendar=batch.calendar)],
        replaces_series=batch.replaces_series, calendar=batch.calendar)


def store_batch(location: TableLocation, checked: CheckedBatch) -> StoredBatch:
    """Quarantine first, then MERGE the clean rows (or, for a whole-series snapshot, replace the series with
    them): a crash between the two re-fetches the batch next run, and both writes are idempotent. A snapshot with
    no clean rows replaces nothing: an empty answer never wipes a stored series.

    Before the write, the batch's overlap with the stored bars is checked for a split or dividend (`scales`): a
    split re-scales the stored history first (its own idempotent commit), so the batch merges onto one scale."""
    if checked.quarantined.height:
        append_quarantine(location, checked.quarantined)
    replace = bool(checked.replaces_series and checked.clean.height)
    scale = check_scale(location, checked.clean, dividend_adjusted=checked.replaces_series, calendar=checked.calendar)
    event = scale.event if scale is not None else None
    if event is not None and not replace:
        rescale_before_merge(location, scale)  # type: ignore[arg-type]
    version_before = table_version(location)
    merged = replace_series(location, checked.clean) if replace else merge_bars(location, checked.clean)
    if event is not None and replace:
        record_replaced(location, scale, version_before, merged.version)  # type: ignore[arg-type]
    last = checked.clean["ts"].max() if checked.clean.height else None
    return StoredBatch(merged.rows_inserted, merged.rows_updated, checked.quarantined.height, merged.version,
                       last, scale)  # type: ignore[arg-type]
