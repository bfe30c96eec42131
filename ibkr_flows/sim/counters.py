"""What the simulator observed, counted on its side of the socket.

Tests and the `ibkr sim status` command read these instead of trusting what the client believes it sent or got.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    """Totals over every connection of one simulator since it was created."""

    connections_total: int = 0
    connections_open: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    errors_sent: Counter[int] = field(default_factory=Counter)
    pacing_violations: int = 0
    injected_bad_bars: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "requests": dict(self.requests),
            "errors_sent": {str(k): v for k, v in self.errors_sent.items()},
            "pacing_violations": self.pacing_violations,
            "injected_bad_bars": list(self.injected_bad_bars),
        }
