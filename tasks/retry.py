"""When a task is worth retrying: by the exception it failed with, so a transient failure (a dropped socket, a
pacing penalty, a Delta commit conflict, a restarting Prefect API) retries and a wrong input or a blocking quality
failure never does. The policies shared by several tasks live here, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from deltalake.exceptions import CommitFailedError


def retry_on(*exceptions: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn`: Prefect hands it a Failed state whose data is the exception the task raised."""

    def condition(_task: Any, _task_run: Any, state: Any) -> bool:
        return isinstance(state.data, exceptions)

    return condition


STORE_POLICY: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 5, 20],
    "retry_condition_fn": retry_on(CommitFailedError, OSError),
    "timeout_seconds": 300,
}
"""Delta appends and MERGEs: a commit conflict with a concurrent writer or an I/O error is transient (writes are
insert-if-absent, so a retry never doubles a row); five minutes for one commit means a hung store."""

READ_POLICY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_on(OSError),
    "timeout_seconds": 300,
}
"""Reads of a pinned table version: only I/O errors are transient (a missing table or version is not)."""

PUBLISH_POLICY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": retry_on(httpx.HTTPError),
    "timeout_seconds": 120,
}
"""Artifacts go to the Prefect API over HTTP: a restarting server or a dropped connection is worth two retries;
a rejected artifact (4xx) fails the same way again but costs only seconds."""
