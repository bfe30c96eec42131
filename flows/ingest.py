"""Nightly (or ad-hoc) ingestion: preflight, then every symbol into the bars table, then the report."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from prefect import flow

from ibkr_flows.alerts.hooks import alert_on_tws_failure, notify_tws_recovery
from ibkr_flows.ingest.engine import IngestReport, IngestRequest
from ibkr_flows.ingest.errors import IngestIncompleteError
from tasks.ingest import ingest_bars, publish_ingest_report
from tasks.preflight_events import tws_preflight

BarSize = Literal["1 secs", "5 secs", "10 secs", "15 secs", "30 secs", "1 min", "2 mins", "3 mins", "5 mins",
                  "10 mins", "15 mins", "20 mins", "30 mins", "1 hour", "2 hours", "3 hours", "4 hours", "8 hours",
                  "1 day", "1 week", "1 month"]
WhatToShow = Literal["TRADES", "MIDPOINT", "BID_ASK", "ADJUSTED_LAST", "BID", "ASK"]


@flow(name="ingest-bars", log_prints=True, on_failure=[alert_on_tws_failure], on_completion=[notify_tws_recovery])
def ingest_flow(
    symbols: list[str] = ["AAPL", "MSFT", "SPY"],  # noqa: B006 - Prefect needs a literal default for the UI form
    bar_size: BarSize = "1 min",
    what_to_show: WhatToShow = "TRADES",
    use_rth: bool = True,
    start: datetime | None = None,
    end: datetime | None = None,
    lookback_days: int = 7,
    quality_engine: Literal["great_expectations", "polars"] = "great_expectations",
    data_dir: str | None = None,
    host: str | None = None,
    port: int | None = None,
    client_id: int | None = None,
) -> IngestReport:
    """Fetch historical bars from TWS into the Delta bars table, incrementally from each series' last stored bar.

    `start` only matters for series never stored (default: `lookback_days` before `end`); `end` defaults to now.
    Runs the TWS preflight first and fails with its verdict when TWS is unusable. Symbols that fail (unknown,
    no permissions, retries exhausted) do not stop the others; the flow then ends Failed, listing them.
    """
    request = IngestRequest(
        symbols=tuple(s.strip().upper() for s in symbols),
        bar_size=bar_size,
        what_to_show=what_to_show,
        use_rth=use_rth,
        start=start or ((end or datetime.now().astimezone()) - timedelta(days=lookback_days)),
        end=end,
        quality_engine=quality_engine,
    )
    tws_preflight(host, port, client_id, check_data=False)
    report = ingest_bars(request, data_dir, host, port, client_id)
    publish_ingest_report(report)
    if report.failed:
        raise IngestIncompleteError(report)
    return report
