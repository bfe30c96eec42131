"""Helpers for tests that run the `ibkr` command line as a separate process, as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

# What the Makefile exports for every run (plus no Prefect API from the caller's shell: each test gets its own).
MAKEFILE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def cli_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the Makefile's exports, an isolated PREFECT_HOME, no Prefect server
    or TWS settings inherited from the caller, and nothing that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "IBKR_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(MAKEFILE_ENV, PREFECT_HOME=str(prefect_home), COLUMNS="200", **extra)
    return env


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the process exited ({proc.returncode}) before listening on {port}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s") from None
            time.sleep(0.1)
