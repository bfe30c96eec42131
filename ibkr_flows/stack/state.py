"""What `ibkr up` started, in a JSON file under PREFECT_HOME, so `ibkr down` (another process, maybe days later)
can stop exactly those processes and nothing else."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "ibkr-up.json"


@dataclass
class StackState:
    api_url: str
    ui_url: str | None
    """None when `up` used an existing server (its UI is wherever that server says)."""
    pool: str
    server_pid: int | None = None
    worker_pid: int | None = None
    worker_name: str | None = None
    logs: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    """The started server's database URL with the password masked; None = SQLite under PREFECT_HOME."""

    @property
    def pids(self) -> list[int]:
        """Stop order: the worker first, so it does not see its server vanish mid-poll."""
        return [pid for pid in (self.worker_pid, self.server_pid) if pid is not None]


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def save_state(home: Path, state: StackState) -> None:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(path)


def load_state(home: Path) -> StackState | None:
    path = state_path(home)
    return StackState(**json.loads(path.read_text())) if path.exists() else None


def remove_state(home: Path) -> None:
    state_path(home).unlink(missing_ok=True)
