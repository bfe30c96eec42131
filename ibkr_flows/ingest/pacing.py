"""Client-side pacing: wait before a historical request rather than be told 162 after it, by the rules IB applies
to that request and no stricter ones.

IB's hard limits (`ib.pacing_rules`: identical request within 15 s, 6 per 2 s per contract, 60 per 10 minutes)
cover bars of 30 seconds or less and head timestamps. For 1-minute and larger bars IB lifts them: only the 50-open
cap and a soft throttle (slower answers) remain, so those requests are paced by what IB does instead: at most 50
open, fewer while answers come back slowly (additive increase, multiplicative decrease), and, after a 162 pacing
violation on one of them (a gateway that paces every size), the hard limits for every size for the rest of the
budget's life. `IBKR_PACING_ALL_BAR_SIZES=1` (or `all_bar_sizes=True`) applies the hard limits to every size
from the start, for a user whose gateway is stricter.

IB counts requests per TWS login, not per process, so the record lives in a ledger every process talking to the
same TWS (host:port) draws from: a file under `flock` on one machine, a Postgres table for processes on several
(`pacing_ledgers`). A shared ledger was chosen over Prefect's global concurrency limits because IB's rules are
three sliding windows plus an identical-request rule, which a single slot-decay rate limit cannot express, and
because the ledger works identically with or without a Prefect server (CLI runs, ephemeral tests, deployments).
Every request is recorded, those the hard limits do not cover too (flagged so), so a budget that turns strict,
or a strict process sharing the ledger, counts them as the gateway does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ibkr_flows.ib.pacing_rules import (
    BURST_LIMIT,
    BURST_WINDOW_S,
    IDENTICAL_WINDOW_S,
    LONG_LIMIT,
    LONG_WINDOW_S,
    MAX_OPEN,
    request_weight,
)
from ibkr_flows.ingest.errors import PacingViolationError, RequestTimeoutError
from ibkr_flows.ingest.pacing_ledgers import FileLedger, PacingLedger

log = logging.getLogger("ibkr.ingest")

BURST_MAX = BURST_LIMIT - 1
"""IB: six or more requests for one contract/exchange/tick type within two seconds violate; five is the most."""
LONG_MAX = LONG_LIMIT
SAFETY_S = 0.25
"""Margin added to every computed wait: a request is stamped when granted but TWS counts it when it arrives, and
an event loop busy elsewhere can put a few hundred ms between the two. Negligible against IB's real windows."""
NOTICE_WAIT_S = 5.0
"""A wait this long (at IB's scale) is said on the log: a run that pauses for minutes says why, not just hangs."""
ALL_BAR_SIZES_ENV = "IBKR_PACING_ALL_BAR_SIZES"
"""Set to 1/true/yes to apply IB's hard limits to every bar size (a gateway stricter than IB's documentation)."""
SLOW_ANSWER_S = 10.0
"""An answer slower than this (real seconds: answer times are not scaled) is IB's soft throttle at work: the
number of larger-bar requests in flight is halved. IB answers a day of 1-minute bars in a second or two."""


def all_bar_sizes_from_env() -> bool:
    return os.environ.get(ALL_BAR_SIZES_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PacedRequest:
    """What IB's rules look at: the contract and tick type (bursts), the full request (identical rule), and
    whether the hard limits cover it at all (`pacing_rules.hard_limits_apply`)."""

    con_id: int
    what_to_show: str
    identity: str
    hard_limits: bool = True

    @property
    def weight(self) -> int:
        return request_weight(self.what_to_show)


@dataclass
class SoftThrottle:
    """How many requests outside IB's hard limits may be in flight: up to IB's 50-open cap, halved by every slow
    answer and grown back by one per quick one (AIMD, as TCP meets a congested link: IB's soft throttle gives no
    number, only slower answers)."""

    limit: int = MAX_OPEN
    in_flight: int = 0
    _freed: asyncio.Event = field(default_factory=asyncio.Event)

    async def acquire(self) -> float:
        """Take a place in flight; the seconds it took (0.0 when one was free)."""
        started = time.monotonic() if self.in_flight >= self.limit else None
        while self.in_flight >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.in_flight += 1
        return 0.0 if started is None else time.monotonic() - started

    def release(self, answer_s: float | None) -> None:
        """`answer_s` None: the request ended without a timed answer (an error), which says nothing of speed."""
        self.in_flight -= 1
        if answer_s is not None and answer_s > SLOW_ANSWER_S:
            self.limit = max(1, self.limit // 2)
            log.warning("IB pacing: an answer took %.0f s (IB's soft throttle); at most %d larger-bar requests in "
                        "flight until answers are quick again", answer_s, self.limit)
        elif answer_s is not None:
            self.limit = min(MAX_OPEN, self.limit + 1)
        self._freed.set()


@dataclass
class PacingBudget:
    """IB's historical-data pacing rules as a shared, cross-process budget.

    `time_scale` shrinks every window (tests and benchmarks run IB's 10-minute window in seconds against a
    simulator configured with the same scale). `all_bar_sizes` applies the hard limits to every request (default:
    `IBKR_PACING_ALL_BAR_SIZES`); it turns on by itself after a 162 on a request IB says it does not pace. Waiting
    is done outside the lock. `ledger` is a `pacing_ledgers` ledger, or a path for a one-machine file ledger.
    """

    ledger: PacingLedger | Path
    time_scale: float = 1.0
    clock: Callable[[], float] = time.time
    all_bar_sizes: bool = field(default_factory=all_bar_sizes_from_env)
    waited_s: float = 0.0
    granted: int = 0
    _open: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_OPEN))
    soft: SoftThrottle = field(default_factory=SoftThrottle)

    def __post_init__(self) -> None:
        if isinstance(self.ledger, Path):
            self.ledger = FileLedger(self.ledger, self.clock)

    async def aclose(self) -> None:
        await self.ledger.aclose()

    def paced(self, request: PacedRequest) -> bool:
        """Whether `request` waits for IB's hard limits (else only for the soft throttle)."""
        return request.hard_limits or self.all_bar_sizes

    @asynccontextmanager
    async def slot(self, request: PacedRequest) -> AsyncIterator[None]:
        """Hold a place for `request` from the moment no rule forbids sending it until its answer is in.

        The ledger entry is stamped again when the answer arrives: TWS counts a request when it receives it, which
        is after we grant it (by however long a busy event loop took to send it), so the later stamp keeps the
        next window edge on the safe side."""
        await self._open.acquire()
        token = uuid.uuid4().hex
        granted = soft = False
        answer_s: float | None = None
        try:
            if self.paced(request):
                await self._wait_for_hard_limits(request, token)
            else:
                self.waited_s += await self.soft.acquire()
                soft = True
                await self._try_record(request, token, False)
            granted = True
            self.granted += 1
            sent = time.monotonic()
            try:
                yield
            except PacingViolationError:
                if not self.paced(request):
                    self._turn_strict()
                raise
            except RequestTimeoutError:
                answer_s = time.monotonic() - sent  # no answer at all: the slowest kind
                raise
            else:
                answer_s = time.monotonic() - sent
        finally:
            if granted:
                await self._update_ledger(lambda events, now: self._restamp(events, token, now))
            if soft:
                self.soft.release(answer_s)
            self._open.release()

    async def _wait_for_hard_limits(self, request: PacedRequest, token: str) -> None:
        while (wait := await self._try_record(request, token, True)) > 0:
            if wait >= NOTICE_WAIT_S * self.time_scale:
                log.warning("IB pacing: waiting %.0f s before the next historical request (IB allows %d per %.3g "
                            "minutes per TWS and no identical request within %.3g s; the budget is shared by "
                            "every process using %s)", wait, LONG_MAX, LONG_WINDOW_S * self.time_scale / 60,
                            IDENTICAL_WINDOW_S * self.time_scale, self.ledger.where)
            self.waited_s += wait
            await asyncio.sleep(wait)

    def _turn_strict(self) -> None:
        if not self.all_bar_sizes:
            self.all_bar_sizes = True
            log.warning("IB pacing: TWS answered 162 (pacing violation) to a request of bars over 30 s, which IB "
                        "does not pace by its hard limits; this run now applies them to every bar size (set %s=1 "
                        "to start that way)", ALL_BAR_SIZES_ENV)

    async def _try_record(self, request: PacedRequest, token: str, check: bool = True) -> float:
        """0 and the request recorded, or (`check`: within the hard limits) the seconds to wait before trying
        again."""

        def record(events: list[list], now: float) -> float:
            wait = self._wait_needed(events, request, now) if check else 0.0
            if wait <= 0:
                events.append([now, request.con_id, request.what_to_show.upper(), request.identity, request.weight,
                               token, self.paced(request)])
            return wait

        return await self._update_ledger(record)

    @staticmethod
    def _restamp(events: list[list], token: str, now: float) -> None:
        for event in events:
            if event[5] == token:
                event[0] = max(event[0], now)

    async def _update_ledger(self, change: Callable[[list[list], float], float | None]) -> float | None:
        """Run `change` on the ledger's live events (IB's longest window) under the ledger's lock."""
        return await self.ledger.update(change, LONG_WINDOW_S * self.time_scale)

    def _wait_needed(self, events: list[list], request: PacedRequest, now: float) -> float:
        """Seconds until IB's hard limits allow `request`, counting the events the gateway counts: those the hard
        limits cover (an entry written before they were flagged has six fields), or all of them when strict."""
        scale = self.time_scale
        counted = events if self.all_bar_sizes else [e for e in events if len(e) < 7 or e[6]]
        waits = [0.0]
        identical = [e[0] for e in counted if e[3] == request.identity]
        if identical and now - identical[-1] < IDENTICAL_WINDOW_S * scale:
            waits.append(identical[-1] + IDENTICAL_WINDOW_S * scale - now)
        waits.append(_window_wait(
            [(e[0], e[4]) for e in counted if e[1] == request.con_id and e[2] == request.what_to_show.upper()],
            now, BURST_WINDOW_S * scale, BURST_MAX, request.weight))
        waits.append(_window_wait([(e[0], e[4]) for e in counted], now, LONG_WINDOW_S * scale, LONG_MAX,
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
