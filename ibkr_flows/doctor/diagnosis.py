"""The doctor's verdict: what failed, what was observed, and how to fix it.

A `Diagnosis` is plain data (JSON-serialisable) so the same verdict can be printed by the CLI, published as a
Prefect artifact, sent as an alert, and asserted on in tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    """Usable, but something deserves attention (live trading port, read-only API, client id retried)."""
    FAILED = "failed"


class FailureClass(StrEnum):
    """One member per distinct cause a user has to fix differently."""

    NONE = "none"
    NOT_LISTENING = "not-listening"
    WRONG_PORT = "wrong-port"
    HOST_UNREACHABLE = "host-unreachable"
    NOT_TWS = "not-tws"
    HANDSHAKE_SILENT = "handshake-silent"
    CONNECTION_REJECTED = "connection-rejected"
    CONNECTION_DROPPED = "connection-dropped"
    """TWS answered the handshake, then closed the connection before the session was usable."""
    API_NOT_READY = "api-not-ready"
    CLIENT_ID_IN_USE = "client-id-in-use"
    READ_ONLY_API = "read-only-api"
    IB_CONNECTIVITY_LOST = "ib-connectivity-lost"
    DATA_FARM_DOWN = "data-farm-down"
    NO_DATA_PERMISSIONS = "no-data-permissions"
    LIVE_SESSION = "live-session"
    SLOW = "slow"
    """TWS answers, but later than the doctor waits for a healthy one (`doctor.timing`: slow is not down). A warning
    when the data farm is slow; a failure when the handshake itself was too slow to finish the diagnosis."""

    @property
    def exit_code(self) -> int:
        """Distinct process exit code per class, so scripts can branch without parsing text."""
        return _EXIT_CODES[self]


_EXIT_CODES = {
    FailureClass.NONE: 0,
    FailureClass.READ_ONLY_API: 0,
    FailureClass.LIVE_SESSION: 0,
    FailureClass.NOT_LISTENING: 10,
    FailureClass.WRONG_PORT: 11,
    FailureClass.HOST_UNREACHABLE: 12,
    FailureClass.NOT_TWS: 13,
    FailureClass.HANDSHAKE_SILENT: 14,
    FailureClass.CONNECTION_REJECTED: 15,
    FailureClass.API_NOT_READY: 16,
    FailureClass.CLIENT_ID_IN_USE: 17,
    FailureClass.IB_CONNECTIVITY_LOST: 18,
    FailureClass.DATA_FARM_DOWN: 19,
    FailureClass.NO_DATA_PERMISSIONS: 20,
    FailureClass.CONNECTION_DROPPED: 21,
    FailureClass.SLOW: 22,
}
"""Stable, documented exit codes (README 'Troubleshooting'); warning-only classes exit 0."""


@dataclass
class Evidence:
    step: str
    observation: str
    elapsed_ms: float


@dataclass
class Diagnosis:
    status: Status
    failure_class: FailureClass
    summary: str
    host: str
    port: int
    client_id: int
    remediation: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    server_version: int | None = None
    accounts: list[str] = field(default_factory=list)
    paper: bool | None = None
    open_ports: list[int] = field(default_factory=list)
    """Well-known TWS/Gateway ports found open on the host (only probed when the configured one is closed)."""
    suggested_client_id: int | None = None
    farm_notices: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else self.failure_class.exit_code

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["failure_class"] = str(self.failure_class)
        data["ok"] = self.ok
        data["exit_code"] = self.exit_code
        return data

    def to_markdown(self) -> str:
        """The verdict as a Prefect artifact / alert body: headline, fix first, then evidence."""
        icon = {Status.HEALTHY: "✅", Status.WARNING: "⚠️", Status.FAILED: "❌"}[self.status]
        lines = [
            f"# {icon} TWS preflight: {self.status.upper()} — `{self.failure_class}`",
            "",
            f"**{self.summary}**",
            "",
            f"Target: `{self.host}:{self.port}`, client id `{self.client_id}`"
            + (f", server version {self.server_version}" if self.server_version else "")
            + (f", accounts {', '.join(self.accounts)} ({'paper' if self.paper else 'LIVE'})" if self.accounts else ""),
        ]
        if self.remediation:
            lines += ["", "## How to fix", ""] + [f"{i}. {step}" for i, step in enumerate(self.remediation, 1)]
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        if self.evidence:
            lines += ["", "## Evidence", "", "| step | observation | ms |", "|---|---|---:|"]
            lines += [f"| {_cell(e.step)} | {_cell(e.observation)} | {e.elapsed_ms:.0f} |" for e in self.evidence]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Evidence quotes what a peer sent; a `|` or a line break in it must not break the Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ")


class TWSConnectionError(ConnectionError):
    """TWS / IB Gateway is unusable; carries the doctor's diagnosis (class, evidence, fix)."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        self.diagnosis = diagnosis
        fix = diagnosis.remediation[0] if diagnosis.remediation else ""
        super().__init__(f"[{diagnosis.failure_class}] {diagnosis.summary}" + (f" Fix: {fix}" if fix else ""))

    def __reduce__(self) -> tuple[type[TWSConnectionError], tuple[Diagnosis]]:
        """Prefect and Dask pickle exceptions; rebuild from the diagnosis, not from the message."""
        return (TWSConnectionError, (self.diagnosis,))
