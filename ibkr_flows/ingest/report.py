"""The ingestion report as people read it: a markdown summary and a per-symbol table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ibkr_flows.ingest.engine import IngestReport


def _ts(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "—"


def report_rows(report: IngestReport) -> list[dict[str, Any]]:
    return [
        {
            "symbol": s.symbol,
            "data": s.what_to_show,
            "status": s.status,
            "requests": s.chunks_fetched,
            "empty ranges": s.chunks_empty,
            "rows fetched": s.rows_fetched,
            "inserted": s.rows_inserted,
            "updated": s.rows_updated,
            "quarantined": s.rows_quarantined,
            "gaps": s.gaps_in_words(),
            "watermark before": _ts(s.watermark_before),
            "watermark after": _ts(s.watermark_after),
            "error": s.error or "",
        }
        for s in report.symbols
    ]


def report_markdown(report: IngestReport) -> str:
    r = report.request
    failed = report.failed
    head = "✅ all symbols stored" if not failed else f"❌ {len(failed)} of {len(report.symbols)} symbols failed"
    lines = [
        f"# Ingestion: {head}",
        "",
        f"`{r.bar_size}` `{r.what_to_show or 'per-instrument default data'}` "
        f"{'regular hours' if r.use_rth else 'extended hours'}; "
        f"{report.requests_sent} historical requests in {report.elapsed_s:.1f} s "
        f"(pacing waits {report.pacing_wait_s:.1f} s, reconnects {report.reconnects}).",
        "",
        "| symbol | status | requests | fetched | inserted | updated | quarantined | gaps | watermark |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in report.symbols:
        lines.append(f"| {s.symbol} | {s.status} | {s.chunks_fetched} | {s.rows_fetched} | {s.rows_inserted} | "
                     f"{s.rows_updated} | {s.rows_quarantined} | {s.gaps_in_words()} | {_ts(s.watermark_after)} |")
    for s in failed:
        lines += ["", f"**{s.symbol}** ({s.error_type}): {s.error}"]
    if report.corporate_actions:
        lines += ["", "## Splits and dividends", ""] + [f"- {a}" for a in report.corporate_actions]
    if report.quality_warnings:
        lines += ["", "## Quality warnings", ""] + [f"- {w}" for w in report.quality_warnings[:50]]
        if len(report.quality_warnings) > 50:
            lines.append(f"- … and {len(report.quality_warnings) - 50} more")
    return "\n".join(lines) + "\n"
