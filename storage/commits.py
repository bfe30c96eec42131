"""Delta commits that may race with other writers.

delta-rs resolves concurrent commits optimistically: the loser of two commits touching the same files raises
`CommitFailedError` and nothing of it is written. Every write here is idempotent (a MERGE on the natural key or
an insert-if-absent), so the safe answer is to reload the table and run the same write again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from deltalake.exceptions import CommitFailedError

log = logging.getLogger("ibkr.storage")

T = TypeVar("T")
MAX_ATTEMPTS = 8


def with_commit_retries(write: Callable[[], T], *, what: str, attempts: int = MAX_ATTEMPTS) -> tuple[T, int]:
    """Run `write` (which must reload the table itself) until it commits; returns (result, attempts used)."""
    for attempt in range(1, attempts):
        try:
            return write(), attempt
        except CommitFailedError as exc:
            delay = min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random())
            log.info("%s lost a commit race (%s); retrying in %.2f s", what, exc, delay)
            time.sleep(delay)
    return write(), attempts
