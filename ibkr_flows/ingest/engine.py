"""The ingestion run: every symbol from its watermark to `end`, concurrently, over one read-only connection.

Within a symbol, chunks are fetched oldest first and stored in that order, so the table's last bar per series
(the watermark) is always a frontier with nothing missing behind it: a run that dies anywhere resumes exactly
where the table says, with no side file to drift. Across symbols, requests overlap under the shared pacing
budget. Quality checks gate every batch; failing rows go to the quarantine table, never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from ib_async import ContractDetails

from ibkr_flows.ib.historical import WHAT_TO_SHOW, bar_step
from ibkr_flows.ingest.convert import bars_to_frame
from ibkr_flows.ingest.errors import SymbolError
from ibkr_flows.ingest.fetch import IBSession, RetryPolicy, fetch_chunk, head_timestamp, qualify
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.plan import Chunk, plan_chunks, resume_start
from ibkr_flows.quality.validate import validate_bars
from ibkr_flows.settings import IBKRSettings
from storage.bars_table import merge_bars, watermarks
from storage.location import TableLocation
from storage.quarantine_table import append_quarantine

log = logging.getLogger("ibkr.ingest")

DEFAULT_LOOKBACK = timedelta(days=7)
"""How far back a series never stored before starts when no start is given."""
BATCH_ROWS = 50_000
"""Rows buffered per symbol before a quality check + MERGE: fewer, larger Delta commits, bounded re-fetch after
a crash."""


@dataclass(frozen=True)
class IngestRequest:
    """Everything one ingestion run needs; validated before any connection is made."""

    symbols: tuple[str, ...]
    bar_size: str = "1 min"
    what_to_show: str = "TRADES"
    use_rth: bool = True
    start: datetime | None = None
    end: datetime | None = None
    symbol_concurrency: int = 4
    request_timeout_s: float = 60.0
    quality_engine: str = "great_expectations"

    def __post_init__(self) -> None:
        bar_step(self.bar_size)
        if not self.symbols:
            raise ValueError("no symbols given")
        bad = [s for s in self.symbols if not s or not s.replace(".", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"invalid symbol(s) {bad}: use exchange tickers like AAPL or BRK.B")
        if self.what_to_show not in WHAT_TO_SHOW:
            raise ValueError(f"what_to_show must be one of {', '.join(WHAT_TO_SHOW)}, "
                             f"got {self.what_to_show!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (UTC), got {value!r}")
        if self.start and self.start > datetime.now(UTC):
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is in the future: IB has no bars there yet")
        if self.quality_engine not in ("great_expectations", "polars"):
            raise ValueError(f"quality_engine must be great_expectations or polars, got {self.quality_engine!r}")
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is not before end {self.end:%Y-%m-%d %H:%M}")


@dataclass
class SymbolReport:
    symbol: str
    status: str = "pending"
    """ok, up-to-date, or failed."""
    error: str | None = None
    error_type: str | None = None
    chunks_planned: int = 0
    chunks_fetched: int = 0
    chunks_empty: int = 0
    rows_fetched: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_quarantined: int = 0
    gap_bars: int = 0
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    table_version: int | None = None


@dataclass
class IngestReport:
    request: IngestRequest
    symbols: list[SymbolReport] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    elapsed_s: float = 0.0
    requests_sent: int = 0
    pacing_wait_s: float = 0.0
    reconnects: int = 0
    quality_warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[SymbolReport]:
        return [s for s in self.symbols if s.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, int], None]
"""Called with (chunks done, chunks planned) across all symbols."""


class _Run:
    def __init__(self, request: IngestRequest, location: TableLocation, settings: IBKRSettings, *,
                 flow_run_id: str, budget: PacingBudget, policy: RetryPolicy, progress: Progress | None) -> None:
        self.request = request
        self.location = location
        self.flow_run_id = flow_run_id
        self.budget = budget
        self.session = IBSession(settings, policy)
        self.progress = progress
        self.report = IngestReport(request)
        self.planned = 0
        self.done = 0
        self.store_lock = asyncio.Lock()
        self.end = request.end or datetime.now(UTC)

    def _tick(self, planned: int = 0, done: int = 0) -> None:
        self.planned += planned
        self.done += done
        if self.progress is not None:
            self.progress(self.done, self.planned)

    async def run(self) -> IngestReport:
        started = time.perf_counter()
        r = self.request
        try:
            await self.session.ensure_connected()
            marks = await asyncio.to_thread(watermarks, self.location, bar_size=r.bar_size,
                                            what_to_show=r.what_to_show, use_rth=r.use_rth, symbols=list(r.symbols))
            limit = asyncio.Semaphore(r.symbol_concurrency)

            async def one(symbol: str) -> SymbolReport:
                async with limit:
                    return await self._symbol(symbol, marks.get(symbol))

            self.report.symbols = list(await asyncio.gather(*(one(s) for s in r.symbols)))
        finally:
            self.session.close()
            self.report.elapsed_s = time.perf_counter() - started
            self.report.requests_sent = self.budget.granted
            self.report.pacing_wait_s = self.budget.waited_s
            self.report.reconnects = self.session.reconnects
        return self.report

    async def _symbol(self, symbol: str, watermark: datetime | None) -> SymbolReport:
        report = SymbolReport(symbol, watermark_before=watermark, watermark_after=watermark)
        r = self.request
        buffer: list[pl.DataFrame] = []
        window_start: datetime | None = None
        try:
            details = await qualify(self.session, symbol, r.request_timeout_s)
            head = None
            if watermark is None:
                head = await head_timestamp(self.session, self.budget, details.contract, what_to_show=r.what_to_show,
                                            use_rth=r.use_rth, timeout=r.request_timeout_s)
            start = resume_start(watermark, r.start or self.end - DEFAULT_LOOKBACK, head, bar_size=r.bar_size)
            chunks = plan_chunks(start, self.end, bar_size=r.bar_size, use_rth=r.use_rth)
            report.chunks_planned = len(chunks)
            self._tick(planned=len(chunks))
            for chunk in chunks:
                frame = await self._fetch(details, chunk, report)
                window_start = window_start or chunk.start
                if frame.height:
                    buffer.append(frame)
                if sum(f.height for f in buffer) >= BATCH_ROWS:
                    await self._store(report, buffer, (window_start, chunk.end))
                    buffer, window_start = [], None
            if buffer:
                await self._store(report, buffer, (window_start or self.end, self.end))
            report.status = "ok" if chunks else "up-to-date"
        except SymbolError as exc:
            if buffer:  # keep what was fetched in order before the failure: the next run resumes after it
                await self._store(report, buffer, (window_start or self.end, self.end))
            report.status, report.error, report.error_type = "failed", exc.reason, type(exc).__name__
            log.error("%s failed: %s", symbol, exc.reason)
        return report

    async def _fetch(self, details: ContractDetails, chunk: Chunk, report: SymbolReport) -> pl.DataFrame:
        r = self.request
        bars = await fetch_chunk(self.session, self.budget, details.contract, chunk, bar_size=r.bar_size,
                                 what_to_show=r.what_to_show, use_rth=r.use_rth, timeout=r.request_timeout_s)
        report.chunks_fetched += 1
        if not bars:
            report.chunks_empty += 1
        self._tick(done=1)
        frame = bars_to_frame(bars, details=details, chunk=chunk, bar_size=r.bar_size, what_to_show=r.what_to_show,
                              use_rth=r.use_rth, flow_run_id=self.flow_run_id, ingested_at=datetime.now(UTC))
        report.rows_fetched += frame.height
        return frame

    async def _store(self, report: SymbolReport, frames: Sequence[pl.DataFrame],
                     window: tuple[datetime, datetime]) -> None:
        """Quality-gate one batch, quarantine the failures, MERGE the rest; one store at a time per process
        (Delta commits to the same partition would only conflict and retry)."""
        async with self.store_lock:
            await asyncio.to_thread(self._store_sync, report, pl.concat(frames), window)

    def _store_sync(self, report: SymbolReport, batch: pl.DataFrame, window: tuple[datetime, datetime]) -> None:
        r = self.request
        lineage = batch.select("ts", "ingested_at", "flow_run_id", "request")
        result = validate_bars(batch.drop("ingested_at", "flow_run_id", "request"), bar_size=r.bar_size,
                               use_rth=r.use_rth, what_to_show=r.what_to_show, window=window,
                               engine=r.quality_engine)  # type: ignore[arg-type]
        if result.quarantined.height:
            quarantined = result.quarantined.with_columns(
                ingested_at=pl.lit(datetime.now(UTC)), flow_run_id=pl.lit(self.flow_run_id),
                request=pl.lit(f"batch {window[0]:%Y-%m-%d %H:%M}..{window[1]:%Y-%m-%d %H:%M}"))
            append_quarantine(self.location, quarantined)
            report.rows_quarantined += quarantined.height
        report.gap_bars += int(result.gaps["missing"].sum()) if result.gaps.height else 0
        self.report.quality_warnings += [f"{report.symbol}: {w.detail}" for w in result.warnings]
        clean = result.clean.join(lineage.unique("ts", keep="first"), on="ts", how="left")
        merged = merge_bars(self.location, clean)
        report.rows_inserted += merged.rows_inserted
        report.rows_updated += merged.rows_updated
        report.table_version = merged.version
        if clean.height:
            last = clean["ts"].max()
            report.watermark_after = max(filter(None, [report.watermark_after, last]))  # type: ignore[type-var]


async def ingest_async(request: IngestRequest, location: TableLocation, settings: IBKRSettings, *,
                       flow_run_id: str = "local", budget: PacingBudget | None = None,
                       policy: RetryPolicy | None = None, progress: Progress | None = None) -> IngestReport:
    """Ingest `request.symbols` into the bars table at `location`. Per-symbol failures are reported, not raised;
    TWS being unreachable for longer than the reconnect deadline raises `DisconnectedError`."""
    from ibkr_flows.ingest.pacing import default_ledger_path

    budget = budget or PacingBudget(default_ledger_path(settings.host, settings.port))
    return await _Run(request, location, settings, flow_run_id=flow_run_id, budget=budget,
                      policy=policy or RetryPolicy(), progress=progress).run()
