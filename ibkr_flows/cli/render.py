"""Rich rendering of the doctor's verdict for terminals."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ibkr_flows.doctor.diagnosis import Diagnosis, Status

_STYLE = {Status.HEALTHY: "green", Status.WARNING: "yellow", Status.FAILED: "red"}


def render_diagnosis(diagnosis: Diagnosis, console: Console) -> None:
    style = _STYLE[diagnosis.status]
    head = Text.assemble(
        (f"{diagnosis.status.upper()}", f"bold {style}"), "  ",
        (str(diagnosis.failure_class), "bold"), "  ",
        (f"{diagnosis.host}:{diagnosis.port} client {diagnosis.client_id}", "dim"), "  ",
        (f"{diagnosis.elapsed_ms:.0f} ms", "dim"),
    )
    parts: list[object] = [head, Text(diagnosis.summary)]
    if diagnosis.accounts:
        kind = "paper" if diagnosis.paper else "LIVE"
        parts.append(Text(f"server version {diagnosis.server_version}; accounts {', '.join(diagnosis.accounts)} "
                          f"({kind})", style="dim"))
    if diagnosis.remediation:
        fixes = Table.grid(padding=(0, 1))
        for i, step in enumerate(diagnosis.remediation, 1):
            fixes.add_row(Text(f"{i}.", style="bold"), Text(step))
        parts += [Text("How to fix", style=f"bold {style}"), fixes]
    for warning in diagnosis.warnings:
        parts.append(Text(f"⚠ {warning}", style="yellow"))
    evidence = Table("step", "observation", "ms", box=None, header_style="dim", pad_edge=False)
    for e in diagnosis.evidence:
        evidence.add_row(Text(e.step), Text(e.observation), f"{e.elapsed_ms:.0f}")  # quotes peers: never markup
    parts += [Text("Evidence", style="bold dim"), evidence]
    console.print(Panel(Group(*parts), title="TWS preflight", border_style=style, expand=False))
