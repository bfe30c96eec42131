"""Which Prefect server a command should record its run in, decided without importing Prefect (a second of start-up
that a command running without Prefect should not pay).

In order: PREFECT_API_URL from the environment, then the active profile's PREFECT_API_URL (what
`prefect config set` writes), then the server `ibkr up` started under PREFECT_HOME if it still answers. None means
no server is configured or running: the caller runs its plain functions and says so, rather than start a temporary
server for one run (seconds to a minute, and the runs it records vanish from view with it).
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ibkr_flows.stack.state import load_state

HEALTH_TIMEOUT_S = 5.0
"""A stopped server refuses the connection at once, so this only bounds a live one that is busy (SQLite locked by
a flow run writing, a loaded 2-core machine): it answers late, and taking it for dead would run without recording."""


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    source: str
    """Where the URL came from, said to the user: 'PREFECT_API_URL', 'profile <name>', or 'ibkr up'."""


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def configured_server() -> PrefectServer | None:
    """The server the user configured or `ibkr up` left running, else None."""
    if url := os.environ.get("PREFECT_API_URL"):
        return PrefectServer(url, "PREFECT_API_URL")
    if profile := _profile_server():
        return profile
    state = load_state(prefect_home())
    if state is not None and _answers(state.api_url):
        return PrefectServer(state.api_url, "ibkr up")
    return None


def _profile_server() -> PrefectServer | None:
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    url = profiles.get("profiles", {}).get(name, {}).get("PREFECT_API_URL")
    return PrefectServer(url, f"profile {name}") if url else None


def _answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200 and json.loads(response.read() or b"null") is True
    except (OSError, ValueError):
        return False
