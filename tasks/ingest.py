"""Prefect tasks of the ingestion: every batch's fetch, quality check and store as its own step, the run that
chains them with a live progress artifact, and its report.

Retries follow each step's failure mode: a fetch retries connectivity and pacing failures that outlast the
request-level retries of `ingest.fetch` (the batch is re-fetched from its first chunk; storing is idempotent), a
store retries Delta commit conflicts and I/O errors, and a check never retries (it quarantines bad rows rather
than fail; an exception there is a bug, which a retry would only repeat). The steps take frames and sessions, so
caching on inputs is off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from deltalake.exceptions import CommitFailedError
from prefect import task
from prefect.artifacts import (
    acreate_progress_artifact,
    aupdate_progress_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ibkr_flows.ingest.engine import IngestReport, Progress, Stages, check_in_thread, ingest_async, store_in_thread
from ibkr_flows.ingest.errors import RetryableError
from ibkr_flows.ingest.plan import Chunk
from ibkr_flows.ingest.report import report_markdown, report_rows
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.ingest.series import ResolvedSeries
from ibkr_flows.ingest.stages import CheckedBatch, FetchContext, FetchedBatch, StoredBatch, fetch_batch
from ibkr_flows.settings import TWSEndpoint
from storage.location import TableLocation
from tasks.retry import PUBLISH_POLICY, retry_on

PROGRESS_INTERVAL_S = 2.0
STEP_TIMEOUT_S = 900
"""A check or a store of one batch (50k rows) takes well under a second; fifteen minutes means a hung disk."""
progress_listeners: list[Progress] = []
"""In-process observers of (chunks done, chunks planned), e.g. the CLI's progress bar."""


@task(name="fetch-bars", task_run_name="fetch {series.symbol} ({chunks_count} requests)",
      retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_on(RetryableError), cache_policy=NO_CACHE)
async def fetch_bars(context: FetchContext, series: ResolvedSeries, chunks: Sequence[Chunk], end: datetime,
                     chunks_count: int) -> FetchedBatch:
    return await fetch_batch(context, series, chunks, end)


@task(name="check-bars", task_run_name="check {batch.symbol} ({batch.frame.height} bars)",
      timeout_seconds=STEP_TIMEOUT_S, cache_policy=NO_CACHE)
async def check_bars(batch: FetchedBatch, request: IngestRequest) -> CheckedBatch:
    return await check_in_thread(batch, request)


@task(name="merge-bars", task_run_name="merge {checked.symbol} ({checked.clean.height} bars)",
      retries=3, retry_delay_seconds=[1, 5, 20], retry_condition_fn=retry_on(CommitFailedError, OSError),
      timeout_seconds=STEP_TIMEOUT_S, cache_policy=NO_CACHE)
async def merge_bars_task(location: TableLocation, checked: CheckedBatch) -> StoredBatch:
    return await store_in_thread(location, checked)


async def _fetch_step(context: FetchContext, series: ResolvedSeries, chunks: Sequence[Chunk], end: datetime
                      ) -> FetchedBatch:
    """A fetch may spend `request_timeout_s` per request on each of its request-level attempts, plus the reconnect
    deadline; beyond that it is hung, not slow."""
    policy = context.session.policy
    limit = context.request.request_timeout_s * len(chunks) * policy.max_attempts + policy.reconnect_deadline_s
    return await fetch_bars.with_options(timeout_seconds=limit)(context, series, chunks, end, len(chunks))


TASK_STAGES = Stages(fetch=_fetch_step, check=check_bars, store=merge_bars_task)


def run_ingest(request: IngestRequest, location: TableLocation, tws: TWSEndpoint) -> IngestReport:
    """The run, its steps as tasks of the calling flow, with a live progress artifact. Per-symbol failures are in
    the report, not raised."""
    return asyncio.run(_ingest_with_progress(request, location, tws))


async def _ingest_with_progress(request: IngestRequest, location: TableLocation, tws: TWSEndpoint) -> IngestReport:
    artifact_id = await acreate_progress_artifact(0.0, key="ingest-progress",
                                                  description=f"{len(request.symbols)} symbols, {request.bar_size}")
    state = {"done": 0, "planned": 0}

    async def publish() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            if state["planned"]:
                await aupdate_progress_artifact(artifact_id, 100.0 * state["done"] / state["planned"])

    def progress(done: int, planned: int) -> None:
        state.update(done=done, planned=planned)
        for listener in progress_listeners:
            listener(done, planned)

    publisher = asyncio.create_task(publish())
    try:
        report = await ingest_async(request, location, tws.settings(), flow_run_id=str(flow_run.id or "local"),
                                    progress=progress, stages=TASK_STAGES)
    finally:
        publisher.cancel()
    await aupdate_progress_artifact(artifact_id, 100.0)
    return report


@task(name="publish-ingest-report", cache_policy=NO_CACHE, **PUBLISH_POLICY)
def publish_ingest_report(report: IngestReport) -> None:
    """The run summary (markdown) and the per-symbol table, under stable keys for the Prefect UI."""
    create_markdown_artifact(key="ingest-summary", markdown=report_markdown(report),
                             description=f"{len(report.symbols)} symbols, {len(report.failed)} failed")
    create_table_artifact(key="ingest-symbols", table=report_rows(report), description="per-symbol ingestion")
