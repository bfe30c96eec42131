"""Nightly (or ad-hoc) ingestion: preflight, then every symbol into the bars table, then the report."""

from __future__ import annotations

from prefect import flow

from ibkr_flows.alerts.hooks import alert_on_tws_failure, notify_tws_recovery
from ibkr_flows.ingest.engine import IngestReport
from ibkr_flows.ingest.errors import IngestIncompleteError
from ibkr_flows.ingest.request import IngestRequest
from ibkr_flows.settings import TWSEndpoint
from storage.location import TableLocation
from tasks.ingest import publish_ingest_report, run_ingest
from tasks.preflight_events import tws_preflight


@flow(name="ingest-bars", log_prints=True, on_failure=[alert_on_tws_failure], on_completion=[notify_tws_recovery])
def ingest_flow(
    request: IngestRequest = IngestRequest(),  # noqa: B008 - Prefect shows the default in the UI form
    tws: TWSEndpoint = TWSEndpoint(),  # noqa: B008
    data_dir: str | None = None,
) -> IngestReport:
    """Fetch historical bars from TWS into the Delta bars table, incrementally from each series' last stored bar.

    Runs the TWS preflight first and fails with its verdict when TWS is unusable. Each batch of each symbol is
    fetched, quality-checked and merged as its own step. Symbols that fail (unknown, no permissions, retries
    exhausted) do not stop the others; the flow then ends Failed, listing them. Empty `data_dir` = IBKR_DATA_DIR.
    """
    # another process on this gateway may hold the configured id (ingestion leases one: ingest.client_leases)
    tws_preflight(tws.host, tws.port, tws.client_id, retry_client_id=True, check_data=False, patient=True)
    report = run_ingest(request, TableLocation.at(data_dir), tws)
    publish_ingest_report(report)
    if report.failed:
        raise IngestIncompleteError(report)
    return report
