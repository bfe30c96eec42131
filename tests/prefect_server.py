"""A real `prefect server` on a free loopback port with a home of its own, for tests and benchmarks whose flows
run in several processes (Dask workers, deployments): in ephemeral mode each process would start a server of
its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

PREFECT = Path(sys.executable).with_name("prefect")


@contextmanager
def prefect_server(home: Path, start_timeout: float = 180) -> Iterator[dict[str, str]]:
    """Yields the environment that points at the server; the server's log is `home/server.log`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING", PREFECT_LOGGING_LEVEL="WARNING")
    log_path = home / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        api = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{api}/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError as exc:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"prefect server did not start: {log_path.read_text()[-2000:]}") from exc
                    time.sleep(0.5)
            yield {**env, "PREFECT_API_URL": api}
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
