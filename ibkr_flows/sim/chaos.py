"""Seeded chaos for a running simulator: faults at random moments while a client works, for reliability suites.

Each fault is one a real TWS session produces: sockets dropped, IB connectivity lost then restored (1100/1102),
the nightly restart (listener down, then back), 162 pacing violations caused by another program on the same login,
slow answers, and the client id still held by TWS when the client reconnects (326). The schedule depends only on
the seed, so a failing run can be replayed.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from ibkr_flows.sim.embedded import EmbeddedSimulator


class ChaosKind(StrEnum):
    DROP = "connection drop"
    CONNECTIVITY = "1100 then 1102"
    RESTART = "nightly restart"
    PACING = "pacing 162"
    LATENCY = "slow answers"
    BUSY_CLIENT_ID = "client id in use on reconnect"


@dataclass(frozen=True)
class InjectedFault:
    at_s: float
    kind: ChaosKind


class Chaos:
    """Inject up to `count` faults of `kinds` into `sim`, one every `gap_s` (uniform) seconds, from a thread."""

    RESTART_DOWN_S = 0.4
    CONNECTIVITY_DOWN_S = 0.25
    LATENCY_S = 0.2
    FAULT_LASTS_S = 0.3
    """How long a state-like fault (latency, busy client id) stays on before it is cleared again."""

    def __init__(self, sim: EmbeddedSimulator, *, seed: int, kinds: tuple[ChaosKind, ...], count: int,
                 gap_s: tuple[float, float] = (0.1, 0.35)) -> None:
        self.sim = sim
        self.kinds = kinds
        self.count = count
        self.gap_s = gap_s
        self.random = random.Random(seed)
        self.injected: list[InjectedFault] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tws-chaos", daemon=True)

    def __enter__(self) -> Chaos:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sim.update_faults(latency_seconds=0.0, busy_client_ids=set())
        self.sim.force_pacing_violations(0)
        self.sim.restore_connectivity()

    def _run(self) -> None:
        while len(self.injected) < self.count and not self._stop.wait(self.random.uniform(*self.gap_s)):
            kind = self.random.choice(self.kinds)
            self._apply(kind)
            self.injected.append(InjectedFault(time.monotonic() - self._started, kind))

    def _apply(self, kind: ChaosKind) -> None:
        sim = self.sim
        if kind is ChaosKind.DROP:
            sim.drop_connections()
        elif kind is ChaosKind.CONNECTIVITY:
            sim.lose_connectivity(restore_after=self.CONNECTIVITY_DOWN_S)
        elif kind is ChaosKind.RESTART:
            sim.restart_in_background(down_for=self.RESTART_DOWN_S)
        elif kind is ChaosKind.PACING:
            sim.force_pacing_violations(self.random.randint(1, 3))
        elif kind is ChaosKind.LATENCY:
            sim.update_faults(latency_seconds=self.LATENCY_S)
            self._stop.wait(self.FAULT_LASTS_S)
            sim.update_faults(latency_seconds=0.0)
        elif kind is ChaosKind.BUSY_CLIENT_ID:
            sim.update_faults(busy_client_ids=set(sim.snapshot()["live_client_ids"]))
            sim.drop_connections()  # the reconnect finds its id still held, as after a crash
            self._stop.wait(self.FAULT_LASTS_S)
            sim.update_faults(busy_client_ids=set())
