"""Client-side pacing: wait before a historical request rather than be told 162 after it.

IB counts requests per TWS login, not per process, so the budget lives in a small ledger file guarded by an
exclusive `flock`: every flow on this machine that talks to the same TWS (host:port) draws from the same ledger.
A lock file was chosen over Prefect's global concurrency limits because IB's rules are three sliding windows
plus an identical-request rule, which a single slot-decay rate limit cannot express, and because the ledger
works identically with or without a Prefect server (CLI runs, ephemeral tests, deployments).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ibkr_flows.ib.pacing_rules import (
    BURST_LIMIT,
    BURST_WINDOW_S,
    IDENTICAL_WINDOW_S,
    LONG_LIMIT,
    LONG_WINDOW_S,
    MAX_OPEN,
    request_weight,
)

T = TypeVar("T")
log = logging.getLogger("ibkr.ingest")

BURST_MAX = BURST_LIMIT - 1
"""IB: six or more requests for one contract/exchange/tick type within two seconds violate; five is the most."""
LONG_MAX = LONG_LIMIT
SAFETY_S = 0.25
"""Margin added to every computed wait: a request is stamped when granted but TWS counts it when it arrives, and
an event loop busy elsewhere can put a few hundred ms between the two. Negligible against IB's real windows."""
NOTICE_WAIT_S = 5.0
"""A wait this long (at IB's scale) is said on the log: a run that pauses for minutes says why, not just hangs."""


@dataclass(frozen=True)
class PacedRequest:
    """What IB's rules look at: the contract and tick type (bursts), the full request (identical rule)."""

    con_id: int
    what_to_show: str
    identity: str

    @property
    def weight(self) -> int:
        return request_weight(self.what_to_show)


def default_ledger_path(host: str, port: int) -> Path:
    base = Path(os.environ.get("IBKR_PACING_DIR", Path.home() / ".cache" / "ibkr-flows" / "pacing"))
    return base / f"{host.replace(':', '_')}_{port}.json"


@dataclass
class PacingBudget:
    """IB's historical-data pacing rules as a shared, cross-process budget.

    `time_scale` shrinks every window (tests and benchmarks run IB's 10-minute window in seconds against a
    simulator configured with the same scale). Waiting is done outside the lock.
    """

    ledger: Path
    time_scale: float = 1.0
    clock: Callable[[], float] = time.time
    waited_s: float = 0.0
    granted: int = 0
    _open: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_OPEN))

    @asynccontextmanager
    async def slot(self, request: PacedRequest) -> AsyncIterator[None]:
        """Hold a place for `request` from the moment no rule forbids sending it until its answer is in.

        The ledger entry is stamped again when the answer arrives: TWS counts a request when it receives it, which
        is after we grant it (by however long a busy event loop took to send it), so the later stamp keeps the
        next window edge on the safe side."""
        await self._open.acquire()
        token = uuid.uuid4().hex
        granted = False
        try:
            while (wait := await asyncio.to_thread(self._try_record, request, token)) > 0:
                if wait >= NOTICE_WAIT_S * self.time_scale:
                    log.warning("IB pacing: waiting %.0f s before the next historical request (IB allows %d per %.0f "
                                "minutes per TWS and no identical request within %.0f s; the budget is shared by "
                                "every process using %s)", wait, LONG_MAX, LONG_WINDOW_S * self.time_scale / 60,
                                IDENTICAL_WINDOW_S * self.time_scale, self.ledger)
                self.waited_s += wait
                await asyncio.sleep(wait)
            granted = True
            self.granted += 1
            yield
        finally:
            if granted:
                self._update_ledger(lambda events, now: self._restamp(events, token, now))
            self._open.release()

    def _try_record(self, request: PacedRequest, token: str) -> float:
        """0 and the request recorded, or the seconds to wait before trying again."""

        def record(events: list[list], now: float) -> float:
            wait = self._wait_needed(events, request, now)
            if wait <= 0:
                events.append([now, request.con_id, request.what_to_show.upper(), request.identity, request.weight,
                               token])
            return wait

        return self._update_ledger(record)

    @staticmethod
    def _restamp(events: list[list], token: str, now: float) -> None:
        for event in events:
            if event[5] == token:
                event[0] = max(event[0], now)

    def _update_ledger(self, change: Callable[[list[list], float], T]) -> T:
        """Run `change` on the ledger's live events under the exclusive file lock, and write them back."""
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(self.ledger, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                text = handle.read()
                now = self.clock()
                events = [e for e in (json.loads(text) if text.strip() else [])
                          if now - e[0] < LONG_WINDOW_S * self.time_scale]
                result = change(events, now)
                handle.seek(0)
                handle.truncate()
                json.dump(events, handle)
                handle.flush()  # before unlocking: a buffered write landing after it would interleave
                return result
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait_needed(self, events: list[list], request: PacedRequest, now: float) -> float:
        scale = self.time_scale
        waits = [0.0]
        identical = [t for t, _, _, identity, *_ in events if identity == request.identity]
        if identical and now - identical[-1] < IDENTICAL_WINDOW_S * scale:
            waits.append(identical[-1] + IDENTICAL_WINDOW_S * scale - now)
        waits.append(_window_wait(
            [(t, w) for t, con_id, what, _, w, _ in events
             if con_id == request.con_id and what == request.what_to_show.upper()],
            now, BURST_WINDOW_S * scale, BURST_MAX, request.weight))
        waits.append(_window_wait([(t, w) for t, _, _, _, w, _ in events], now, LONG_WINDOW_S * scale, LONG_MAX,
                                  request.weight))
        wait = max(waits)
        return wait + SAFETY_S if wait > 0 else 0.0


def _window_wait(events: list[tuple[float, int]], now: float, window: float, limit: int, weight: int) -> float:
    """Seconds until `weight` more units fit in a sliding window already holding `events`."""
    inside = sorted((t, w) for t, w in events if now - t < window)
    used = sum(w for _, w in inside)
    if used + weight <= limit:
        return 0.0
    excess = used + weight - limit
    for t, w in inside:  # the oldest events leave the window first
        excess -= w
        if excess <= 0:
            return t + window - now
    return window
