"""IB's historical-data pacing rules, enforced the way TWS counts them.

Source: TWS API docs, "Historical Data Limitations". The simulator applies them across every client of one TWS
(as the real one does), so two downloaders that each behave but share a TWS still trip them together. The hard
limits cover the requests `pacing_rules.hard_limits_apply` names (bars of 30 s or less, head timestamps); the
50-open cap covers every historical request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ibkr_flows.ib.pacing_rules import (
    BURST_LIMIT,
    BURST_WINDOW_S,
    IDENTICAL_WINDOW_S,
    LONG_LIMIT,
    LONG_WINDOW_S,
    MAX_OPEN,
    request_weight,
)


@dataclass(frozen=True)
class PacedRequest:
    con_id: int
    exchange: str
    what_to_show: str
    end: str
    duration: str
    bar_size: str
    use_rth: bool

    @property
    def weight(self) -> int:
        return request_weight(self.what_to_show)

    @property
    def burst_key(self) -> tuple[int, str, str]:
        return (self.con_id, self.exchange, self.what_to_show.upper())


@dataclass
class PacingMonitor:
    time_scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    violations: dict[str, int] = field(default_factory=dict)
    _identical: dict[PacedRequest, float] = field(default_factory=dict)
    _bursts: dict[tuple[int, str, str], deque[float]] = field(default_factory=dict)
    _long: deque[float] = field(default_factory=deque)
    open_requests: int = 0

    def admit(self, request: PacedRequest, *, hard_limits: bool = True) -> str | None:
        """Record a request; return the broken rule's description, or None when it is within the limits.

        A violating request is still counted, as TWS counts every request it receives: a client that keeps
        hammering stays in violation. A request outside the hard limits (`hard_limits=False`) meets only the
        50-open cap and is not counted in their windows.
        """
        now = self.clock()
        if hard_limits:
            reason = self._check(request, now)
            self._record(request, now)
        else:
            reason = self._check_open()
        if reason is not None:
            self.violations[reason] = self.violations.get(reason, 0) + 1
        return reason

    def _check(self, request: PacedRequest, now: float) -> str | None:
        scale = self.time_scale
        last = self._identical.get(request)
        if last is not None and now - last < IDENTICAL_WINDOW_S * scale:
            return "identical request within 15 s"
        burst = self._trim(self._bursts.get(request.burst_key, deque()), now - BURST_WINDOW_S * scale)
        if len(burst) + request.weight >= BURST_LIMIT:
            return "6 or more requests for one contract and tick type within 2 s"
        long_window = self._trim(self._long, now - LONG_WINDOW_S * scale)
        if len(long_window) + request.weight > LONG_LIMIT:
            return "more than 60 requests within 10 minutes"
        return self._check_open()

    def _check_open(self) -> str | None:
        if self.open_requests >= MAX_OPEN:
            return "more than 50 simultaneous open historical requests"
        return None

    def _record(self, request: PacedRequest, now: float) -> None:
        self._identical[request] = now
        burst = self._bursts.setdefault(request.burst_key, deque())
        for _ in range(request.weight):
            burst.append(now)
            self._long.append(now)
        horizon = now - IDENTICAL_WINDOW_S * self.time_scale
        if len(self._identical) > 4096:
            self._identical = {k: t for k, t in self._identical.items() if t >= horizon}

    @staticmethod
    def _trim(window: deque[float], horizon: float) -> deque[float]:
        while window and window[0] < horizon:
            window.popleft()
        return window

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())
