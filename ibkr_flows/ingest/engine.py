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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ibkr_flows.continuous.ib_series import store_ib_contfut
from ibkr_flows.ib.historical import MAX_DURATION, duration_exceeds_max
from ibkr_flows.ib.instruments import InstrumentId
from ibkr_flows.ingest.errors import NothingStoredError, RequestRejectedError, SymbolError
from ibkr_flows.ingest.fetch import IBSession, RetryPolicy, head_timestamp, qualify, tws_time
from ibkr_flows.ingest.instrument_rows import instrument_rows
from ibkr_flows.ingest.pacing import PacingBudget
from ibkr_flows.ingest.pacing_ledgers import default_ledger
from ibkr_flows.ingest.plan import Chunk, fetched_whole, plan_chunks, plan_up_to_now, resume_start
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.ingest.series import ResolvedSeries
from ibkr_flows.ingest.stages import (
    CheckedBatch,
    FetchContext,
    FetchedBatch,
    SessionGap,
    StoredBatch,
    check_batch,
    fetch_batch,
    store_batch,
)
from ibkr_flows.quality.validate import warm_up
from ibkr_flows.settings import IBKRSettings
from storage.bars_table import watermarks
from storage.instruments_table import upsert_instruments
from storage.location import TableLocation
from storage.quarantine_table import append_quarantine

log = logging.getLogger("ibkr.ingest")


@dataclass
class SymbolReport:
    symbol: str
    """The instrument's id text (`AAPL`, `FUT:ES@CME:202503`)."""
    what_to_show: str = "TRADES"
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
    gaps: list[SessionGap] = field(default_factory=list)
    """Sessions of the calendar inside the fetched window that got fewer bars than they have."""
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    table_version: int | None = None

    @property
    def gap_bars(self) -> int:
        return sum(g.expected - g.received for g in self.gaps)

    def gaps_in_words(self, listed: int = 3) -> str:
        """'none', or how many sessions are short and which (the first `listed`)."""
        if not self.gaps:
            return "none"
        more = f", and {len(self.gaps) - listed} more" if len(self.gaps) > listed else ""
        return (f"{len(self.gaps)} session{'s' * (len(self.gaps) > 1)}: "
                + ", ".join(map(str, self.gaps[:listed])) + more)


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
    corporate_actions: list[str] = field(default_factory=list)
    """Splits and dividends found in the re-fetched overlap and applied to the stored history (`scales`)."""

    @property
    def failed(self) -> list[SymbolReport]:
        return [s for s in self.symbols if s.status == "failed"]



Progress = Callable[[int, int], None]
"""Called with (chunks done, chunks planned) across all symbols."""


async def check_in_thread(batch: FetchedBatch, request: IngestRequest) -> CheckedBatch:
    return await asyncio.to_thread(check_batch, batch, request)


async def store_in_thread(location: TableLocation, checked: CheckedBatch) -> StoredBatch:
    return await asyncio.to_thread(store_batch, location, checked)


@dataclass(frozen=True)
class Stages:
    """How the run performs each step of a batch. The defaults are the plain functions; the Prefect tasks pass
    task-wrapped ones so fetch, check and store each show (and retry) as their own step. Check and store are
    awaited from a worker thread: they are CPU and disk work that must not stall other symbols' fetches."""

    fetch: Callable[[FetchContext, ResolvedSeries, Sequence[Chunk], datetime], Awaitable[FetchedBatch]] = fetch_batch
    check: Callable[[FetchedBatch, IngestRequest], Awaitable[CheckedBatch]] = check_in_thread
    store: Callable[[TableLocation, CheckedBatch], Awaitable[StoredBatch]] = store_in_thread


class _Run:
    def __init__(self, request: IngestRequest, location: TableLocation, settings: IBKRSettings, *,
                 flow_run_id: str, budget: PacingBudget, policy: RetryPolicy, progress: Progress | None,
                 stages: Stages) -> None:
        self.request = request
        self.location = location
        self.stages = stages
        self.session = IBSession(settings, policy)
        self.context = FetchContext(self.session, budget, request, flow_run_id, on_chunk=lambda: self._tick(done=1))
        self.budget = budget
        self.progress = progress
        self.report = IngestReport(request)
        self.planned = 0
        self.done = 0
        self.store_lock = asyncio.Lock()
        self.end = request.resolved_end()

    def _tick(self, planned: int = 0, done: int = 0) -> None:
        self.planned += planned
        self.done += done
        if self.progress is not None:
            self.progress(self.done, self.planned)

    async def run(self) -> IngestReport:
        started = time.perf_counter()
        r = self.request
        try:
            warm_up(r.quality_engine)  # Great Expectations' import (seconds) overlaps connecting and fetching
            await self.session.ensure_connected()
            marks = await asyncio.to_thread(self._watermarks)
            limit = asyncio.Semaphore(r.symbol_concurrency)

            async def resolved(instrument: InstrumentId) -> ResolvedSeries | SymbolReport:
                async with limit:
                    return await self._resolve(instrument, marks.get(str(instrument)))

            every = await asyncio.gather(*(resolved(i) for i in r.instruments()))
            series = [s for s in every if isinstance(s, ResolvedSeries)]
            await asyncio.to_thread(upsert_instruments, self.location, instrument_rows(series, datetime.now(UTC)))
            self.report.quality_warnings += filter(None, (s.sessions_note(r.use_rth) for s in series))

            async def one(outcome: ResolvedSeries | SymbolReport) -> SymbolReport:
                if isinstance(outcome, SymbolReport):
                    return outcome
                async with limit:
                    return await self._symbol(outcome, marks.get(outcome.symbol))

            self.report.symbols = list(await asyncio.gather(*(one(s) for s in every)))
        finally:
            self.session.close()
            self.report.elapsed_s = time.perf_counter() - started
            self.report.requests_sent = self.budget.granted
            self.report.pacing_wait_s = self.budget.waited_s
            self.report.reconnects = self.session.reconnects
        return self.report

    def _watermarks(self) -> dict[str, datetime]:
        """The last stored bar of every instrument's series (each of its own data type)."""
        r = self.request
        by_type: dict[str, list[str]] = {}
        for instrument in r.instruments():
            by_type.setdefault(r.what_to_show_for(instrument), []).append(str(instrument))
        marks: dict[str, datetime] = {}
        for what_to_show, symbols in by_type.items():
            marks |= watermarks(self.location, bar_size=r.bar_size, what_to_show=what_to_show, use_rth=r.use_rth,
                                symbols=symbols)
        return marks

    async def _resolve(self, instrument: InstrumentId, watermark: datetime | None) -> ResolvedSeries | SymbolReport:
        """The contract the id names, or the failed report saying why none or several (nothing is fetched for
        it then)."""
        what_to_show = self.request.what_to_show_for(instrument)
        try:
            details = await qualify(self.session, instrument, self.request.request_timeout_s)
        except SymbolError as exc:
            report = SymbolReport(str(instrument), what_to_show, watermark_before=watermark,
                                  watermark_after=watermark)
            return self._failed(report, exc)
        return ResolvedSeries(instrument, details, what_to_show)

    async def _symbol(self, series: ResolvedSeries, watermark: datetime | None) -> SymbolReport:
        """Chunks are fetched oldest first and each batch is stored before the next is fetched, so the table's
        last bar stays a frontier with nothing missing behind it."""
        report = SymbolReport(series.symbol, series.what_to_show, watermark_before=watermark,
                              watermark_after=watermark)
        try:
            if fetched_whole(series.what_to_show, series.sec_type):
                chunks, end = await self._plan_whole_series(series)
            else:
                chunks, end = await self._plan_from_watermark(series, watermark), self.end
        except SymbolError as exc:
            return self._failed(report, exc)
        report.chunks_planned = len(chunks)
        self._tick(planned=len(chunks))
        while chunks:
            batch = await self.stages.fetch(self.context, series, chunks, end)
            chunks = chunks[batch.chunks_fetched:]
            report.chunks_fetched += batch.chunks_fetched
            report.chunks_empty += batch.chunks_empty
            report.rows_fetched += batch.frame.height
            if batch.frame.height:
                await self._store(report, batch)
            if batch.error is not None:
                return self._failed(report, batch.error)
        if report.chunks_planned and (problem := _nothing_stored(report, self.request)):
            return self._failed(report, NothingStoredError(series.symbol, problem))
        report.status = "ok" if report.chunks_planned else "up-to-date"
        return report

    async def _plan_from_watermark(self, series: ResolvedSeries, watermark: datetime | None) -> list[Chunk]:
        """Resume a couple of bars before the last stored one; a series never stored starts at the configured
        start, bounded by IB's first bar (of this contract: a dated future's starts months before its expiry)."""
        r = self.request
        head = None
        if watermark is None:
            head = await head_timestamp(self.session, self.budget, series.contract, what_to_show=series.what_to_show,
                                        use_rth=r.use_rth, timeout=r.request_timeout_s)
        start = resume_start(watermark, r.resolved_start(self.end), head, bar_size=r.bar_size)
        return plan_chunks(start, self.end, bar_size=r.bar_size, use_rth=r.use_rth, calendar=series.planning_calendar)

    async def _plan_whole_series(self, series: ResolvedSeries) -> tuple[list[Chunk], datetime]:
        """A series IB re-adjusts as a whole (ADJUSTED_LAST) or serves only up to now (CONTFUT, whose contracts
        IB picks) has no watermark to resume from: every adjustment or roll rewrites its past.
        Each run fetches the requested range in one request up to TWS's now, and the store replaces the stored
        series with it. IB's first trade bounds the start (the head timestamp is asked for
        TRADES, the bars ADJUSTED_LAST adjusts)."""
        r = self.request
        now = await tws_time(self.session, series.symbol, r.request_timeout_s)
        head = await head_timestamp(self.session, self.budget, series.contract, what_to_show="TRADES",
                                    use_rth=r.use_rth, timeout=r.request_timeout_s)
        start = resume_start(None, r.resolved_start(now), head, bar_size=r.bar_size)
        if start >= now:
            return [], now
        chunk = plan_up_to_now(start, now)
        if duration_exceeds_max(chunk.duration, r.bar_size):
            raise RequestRejectedError(
                series.symbol,
                f"{series.what_to_show} comes in one request reaching back from now, and IB serves at most "
                f"{MAX_DURATION[r.bar_size]} of '{r.bar_size}' bars per request (this range needs {chunk.duration}).",
                fix=f"a larger --bar-size, or --lookback-days within {MAX_DURATION[r.bar_size]}.")
        return [chunk], now

    async def _store(self, report: SymbolReport, batch: FetchedBatch) -> None:
        """One store at a time per process: Delta commits to the same partition would only conflict and retry."""
        async with self.store_lock:
            checked = await self.stages.check(batch, self.request)
            if batch.sec_type == "CONTFUT":
                stored = await asyncio.to_thread(store_contfut_batch, self.location, checked)
            else:
                stored = await self.stages.store(self.location, checked)
        self.report.quality_warnings += checked.warnings
        if stored.scale is not None and (note := stored.scale.describe()):
            (self.report.corporate_actions if stored.scale.event else self.report.quality_warnings).append(note)
            log.warning("%s", note)
        report.gaps = sorted({*report.gaps, *checked.gaps})
        report.rows_quarantined += stored.rows_quarantined
        report.rows_inserted += stored.rows_inserted
        report.rows_updated += stored.rows_updated
        report.table_version = stored.table_version
        if stored.last_ts is not None:
            report.watermark_after = max(filter(None, [report.watermark_after, stored.last_ts]))

    @staticmethod
    def _failed(report: SymbolReport, exc: SymbolError) -> SymbolReport:
        report.status, report.error, report.error_type = "failed", exc.reason, type(exc).__name__
        log.error("%s failed: %s", report.symbol, exc.reason)
        return report


def store_contfut_batch(location: TableLocation, checked: CheckedBatch) -> StoredBatch:
    """IB's continuous future: quarantine first, then the clean bars replace the stored snapshot in the continuous
    table (`continuous.ib_series`), not the bars table, where they would carry the front contract's conId.
    `table_version` is then the continuous table's."""
    if checked.quarantined.height:
        append_quarantine(location, checked.quarantined)
    version = store_ib_contfut(location, checked.clean)
    last = checked.clean["ts"].max() if checked.clean.height else None
    return StoredBatch(checked.clean.height, 0, checked.quarantined.height, version if version >= 0 else None,
                       last)  # type: ignore[arg-type]


def _nothing_stored(report: SymbolReport, request: IngestRequest) -> str | None:
    """Why a symbol whose requests all came back stored nothing, or None when it stored (or re-confirmed) bars."""
    if report.rows_fetched == 0:
        hours = "regular hours" if request.use_rth else "extended hours"
        return (f"IB returned no bars for any of the {report.chunks_fetched} requested ranges ('{request.bar_size}' "
                f"{report.what_to_show}, {hours}); nothing was stored. Fix: check the symbol traded in that range, "
                "or try --eth or another --what-to-show")
    if report.rows_quarantined >= report.rows_fetched and not (report.rows_inserted or report.rows_updated):
        return (f"all {report.rows_fetched} bars fetched failed the quality checks and were quarantined; nothing "
                f"was stored. See `ibkr data quarantine --show --symbol {report.symbol}` for the checks that failed")
    return None


async def ingest_async(request: IngestRequest, location: TableLocation, settings: IBKRSettings, *,
                       flow_run_id: str = "local", budget: PacingBudget | None = None,
                       policy: RetryPolicy | None = None, progress: Progress | None = None,
                       stages: Stages | None = None) -> IngestReport:
    """Ingest `request.symbols` into the bars table at `location`. Per-symbol failures are reported, not raised;
    TWS being unreachable for longer than the reconnect deadline raises `DisconnectedError`."""
    own_budget = budget is None
    budget = budget or PacingBudget(default_ledger(settings.host, settings.port))
    try:
        return await _Run(request, location, settings, flow_run_id=flow_run_id, budget=budget,
                          policy=policy or RetryPolicy(), progress=progress, stages=stages or Stages()).run()
    finally:
        if own_budget:
            await budget.aclose()
