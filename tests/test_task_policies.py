"""Each task retries what is transient for it and nothing else, checked on the real task objects with the real
Failed states Prefect hands a `retry_condition_fn`: a commit conflict retries a write, a dropped Prefect API
retries a publish, and a deterministic step (a backtest, a grid chunk, a quality check) never retries."""

from __future__ import annotations

import importlib
import pkgutil

import httpx
import pytest
from deltalake.exceptions import CommitFailedError
from prefect import Task
from prefect.states import Failed

import tasks


def all_tasks() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for module_info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{module_info.name}")
        found |= {obj.name: obj for obj in vars(module).values() if isinstance(obj, Task)}
    return found


def retries_on(task: Task, error: BaseException) -> bool:
    if not task.retries:
        return False
    condition = task.retry_condition_fn
    return condition is None or condition(task, None, Failed(data=error))


TRANSIENT = {
    "commit conflict": CommitFailedError("version 7 already exists"),
    "I/O": OSError("connection reset by object store"),
    "Prefect API down": httpx.ConnectError("connection refused"),
}
WRITES = ["store-backtest-results", "store-grid-results", "merge-bars", "compact-table", "vacuum-table"]
PUBLISHES = ["publish-backtest", "publish-grid", "publish-ingest-report"]
DETERMINISTIC = ["run-backtest", "evaluate-grid-chunk", "check-bars"]


def test_every_task_is_in_one_policy_group() -> None:
    """A new task must be placed in a group here, i.e. someone decided how it fails."""
    grouped = {*WRITES, *PUBLISHES, *DETERMINISTIC, "load-grid-bars", "fetch-bars", "tws-preflight"}
    assert set(all_tasks()) <= grouped, set(all_tasks()) - grouped


@pytest.mark.parametrize("name", WRITES)
def test_writes_retry_commit_conflicts_and_io(name: str) -> None:
    task = all_tasks()[name]
    assert retries_on(task, TRANSIENT["commit conflict"])
    assert retries_on(task, TRANSIENT["I/O"])
    assert not retries_on(task, ValueError("bad rows"))
    assert task.timeout_seconds


@pytest.mark.parametrize("name", PUBLISHES)
def test_publishes_retry_the_prefect_api(name: str) -> None:
    task = all_tasks()[name]
    assert retries_on(task, TRANSIENT["Prefect API down"])
    assert not retries_on(task, ValueError("bad markdown"))
    assert task.timeout_seconds


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_steps_never_retry(name: str) -> None:
    task = all_tasks()[name]
    for error in TRANSIENT.values():
        assert not retries_on(task, error)


def test_the_grid_read_retries_io_only() -> None:
    task = all_tasks()["load-grid-bars"]
    assert retries_on(task, TRANSIENT["I/O"])
    assert not retries_on(task, CommitFailedError("not a read error"))
