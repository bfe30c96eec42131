"""Start long-running helpers detached from the terminal and stop them again, by process group.

Each helper gets its own session (process group) so `ibkr up` can exit while they keep running, and so stopping
one also stops the children it left in its group. Stopping is SIGTERM, then SIGKILL after a timeout: a Prefect
worker may ignore a single SIGTERM for 20 s and more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A step of `ibkr up` / `ibkr down` failed; the message says which and where its log is."""


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> int:
    """Start a detached process whose output goes to `log_path`; returns its pid (= its process group id)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists and is not a zombie (exited, not yet reaped by its parent)."""
    procfs = Path("/proc")
    if not procfs.is_dir():  # macOS: no procfs; zombies count as alive there
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in procfs.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # the process exited while we looked
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    """Collect the leader if it is our own exited child (when `up` fails and cleans up after itself)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pgid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def stop_group(pgid: int, timeout: float) -> str:
    """SIGTERM the process group `pgid` (a pid from `spawn`), SIGKILL what is left after `timeout` s; returns how
    it ended."""
    if not group_alive(pgid):
        _reap(pgid)
        return "not running"
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, timeout):
        return "stopped"
    _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgid, 5.0)
    return "killed"


def run_step(argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float, what: str) -> str:
    """Run a short command to completion; on failure raise with the tail of its output (never the environment)."""
    try:
        done = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} did not finish within {timeout:.0f} s") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}):\n{output[-3000:]}")
    return output
