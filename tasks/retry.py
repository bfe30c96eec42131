"""When a task is worth retrying: by the exception it failed with, so a transient failure (a dropped socket, a
pacing penalty, a Delta commit conflict) retries and a wrong input or a blocking quality failure never does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_on(*exceptions: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn`: Prefect hands it a Failed state whose data is the exception the task raised."""

    def condition(_task: Any, _task_run: Any, state: Any) -> bool:
        return isinstance(state.data, exceptions)

    return condition
