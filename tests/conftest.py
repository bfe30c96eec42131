"""Shared fixtures: a real simulator per test, real ib_async clients, an isolated Prefect home."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Prefect reads its settings at import: isolate it before any test module imports prefect.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="ibkr-flows-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.pop("PREFECT_API_URL", None)
os.environ["IBKR_PACING_DIR"] = str(Path(tempfile.mkdtemp(prefix="ibkr-flows-pacing-")))
for _name in ("IBKR_HOST", "IBKR_PORT", "IBKR_CLIENT_ID"):
    os.environ.pop(_name, None)

from ibkr_flows.settings import IBKRSettings  # noqa: E402
from ibkr_flows.sim.embedded import EmbeddedSimulator  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator() as running:
        yield running


def settings_for(sim: EmbeddedSimulator, **overrides: object) -> IBKRSettings:
    values: dict[str, object] = {"host": sim.host, "port": sim.port, "client_id": 10, "connect_timeout": 4.0,
                                 "probe_timeout": 1.0, "data_timeout": 3.0}
    values.update(overrides)
    return IBKRSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect API for the whole session (starting one takes ~15 s on 2 cores)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(
        {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield
