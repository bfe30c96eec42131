"""The flow hooks' memory of open alerts, for deduplication and recovery notices.

Kept in a Prefect Variable rather than a local file so that every process talking to the same Prefect API (the
worker's flow runs, a CLI run, another machine's worker) sees the same alerts; it also shows in the UI under
Variables, where deleting it re-arms every alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect.variables import Variable

LEDGER_VARIABLE = "ibkr-alert-ledger"


@dataclass(frozen=True)
class OpenAlert:
    target: str
    failure_class: str
    alerted_at: datetime


@dataclass
class AlertLedger:
    """Alerts sent and not yet followed by a recovery, keyed by TWS target and failure class."""

    open: dict[str, OpenAlert] = field(default_factory=dict)

    @staticmethod
    def _key(target: str, failure_class: str) -> str:
        return f"{target}/{failure_class}"

    def is_due(self, target: str, failure_class: str, now: datetime, window: timedelta) -> bool:
        """A failure deserves an alert unless the same class was alerted for this TWS less than `window` ago."""
        entry = self.open.get(self._key(target, failure_class))
        return entry is None or now - entry.alerted_at >= window

    def record(self, target: str, failure_class: str, now: datetime) -> None:
        self.open[self._key(target, failure_class)] = OpenAlert(target, failure_class, now)

    def resolve(self, target: str) -> list[OpenAlert]:
        """Close every open alert of this TWS (it passed the preflight); returns them for the recovery notice."""
        resolved = [alert for alert in self.open.values() if alert.target == target]
        for alert in resolved:
            del self.open[self._key(alert.target, alert.failure_class)]
        return resolved

    def to_json(self) -> dict[str, Any]:
        return {key: {"target": a.target, "failure_class": a.failure_class, "alerted_at": a.alerted_at.isoformat()}
                for key, a in self.open.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertLedger:
        return cls({key: OpenAlert(v["target"], v["failure_class"], datetime.fromisoformat(v["alerted_at"]))
                    for key, v in data.items()})


def load_ledger() -> AlertLedger:
    stored = Variable.get(LEDGER_VARIABLE, default=None)
    return AlertLedger.from_json(stored) if isinstance(stored, dict) else AlertLedger()


def save_ledger(ledger: AlertLedger) -> None:
    Variable.set(LEDGER_VARIABLE, ledger.to_json(), overwrite=True)
