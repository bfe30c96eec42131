"""Prefect tasks around `ingest.engine`: the run itself with a live progress artifact, and its report."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task
from prefect.artifacts import (
    acreate_progress_artifact,
    aupdate_progress_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run

from ibkr_flows.ingest.engine import IngestReport, IngestRequest, Progress, ingest_async
from ibkr_flows.ingest.report import report_markdown, report_rows
from ibkr_flows.settings import IBKRSettings
from storage.location import TableLocation

PROGRESS_INTERVAL_S = 2.0
progress_listeners: list[Progress] = []
"""In-process observers of (chunks done, chunks planned), e.g. the CLI's progress bar."""


def table_location(data_dir: str | None) -> TableLocation:
    return TableLocation(Path(data_dir)) if data_dir else TableLocation.default()


@task(name="ingest-bars", task_run_name="ingest {request.bar_size} {request.what_to_show}")
def ingest_bars(request: IngestRequest, data_dir: str | None = None, host: str | None = None,
                port: int | None = None, client_id: int | None = None) -> IngestReport:
    """Fetch, check and store bars for every symbol; per-symbol failures are in the report, not raised."""
    settings = IBKRSettings.with_overrides(host=host, port=port, client_id=client_id)
    return asyncio.run(_ingest_with_progress(request, table_location(data_dir), settings))


async def _ingest_with_progress(request: IngestRequest, location: TableLocation,
                                settings: IBKRSettings) -> IngestReport:
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
        report = await ingest_async(request, location, settings, flow_run_id=str(flow_run.id or "local"),
                                    progress=progress)
    finally:
        publisher.cancel()
    await aupdate_progress_artifact(artifact_id, 100.0)
    return report


@task(name="publish-ingest-report")
def publish_ingest_report(report: IngestReport) -> None:
    """The run summary (markdown) and the per-symbol table, under stable keys for the Prefect UI."""
    create_markdown_artifact(key="ingest-summary", markdown=report_markdown(report),
                             description=f"{len(report.symbols)} symbols, {len(report.failed)} failed")
    create_table_artifact(key="ingest-symbols", table=report_rows(report), description="per-symbol ingestion")
