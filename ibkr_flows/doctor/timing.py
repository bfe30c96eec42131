"""How long the doctor waits, and where 'slow' ends and 'down' begins.

By default the doctor gives every verdict within `QUICK_BUDGET_S` (issue 20): a person typing `ibkr data connect`
or a health check every five minutes wants the answer at once, and every failure a TWS can have shows itself
sooner than that on the machine TWS runs on. Each wait is bounded twice: by the step's own deadline (why each
one is what it is is said where it is defined) and by what is left of the whole budget, so a step that eats into
the budget shortens the ones after it instead of overrunning.

With `patient=True` (`ibkr data connect --patient`) nothing is cut: each handshake step waits the configured
`probe_timeout`, the ib_async connect its `connect_timeout` and the historical request its `data_timeout`, so a
slow TWS's latency is measured instead of bounded from below.

The slow / down boundary. An answer is *slow* when it takes longer than `SLOW_AFTER_S`; it is *down* only when TWS
itself says so (a broken-farm notice 2103/2105/2157 for the farm the request needs, or 1100) and the request then
gets no answer within the wait. A request that is still unanswered at the deadline while TWS reports its farm OK
or idle is slow, with the wait as a lower bound of its latency, never 'farm down': the doctor does not call a
farm down on a guess that TWS contradicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ibkr_flows.settings import IBKRSettings

QUICK_BUDGET_S = 1.5
"""Every verdict by default within this many seconds (issue 20)."""
QUICK_STEP_S = 0.8
"""Quick wait for one handshake step (TCP connect, the version reply, the account list and next id, the
open-orders answer). TWS answers each from its own API thread without asking IB's servers: in well under 10 ms on
the same machine, one network round trip more from elsewhere. 0.8 s leaves two orders of magnitude for a busy JVM
and a slow link; longer is the accept dialog (or a TWS not logged in), and `--patient` waits `probe_timeout`.
With the HTTP nudge's window (`probe.HTTP_NUDGE_WINDOW_S`, 0.3 s) 'handshake silent' is decided after 1.1 s."""
SLOW_AFTER_S = 1.0
"""An answer to the doctor's tiny historical request (a week of daily bars) later than this is slow. A healthy TWS
answers it in 0.05-0.5 s; the first request to an idle (2107) farm, or a congested link, takes seconds."""
END_RESERVE_S = 0.1
"""Kept back from the budget for closing the client and the event loop and writing the verdict (measured:
10-40 ms on the 2-core machine)."""
ID_RELEASE_WAIT_S = 1.0
"""How long TWS may take to release the probe's client id before ib_async reuses it (patient; quick waits what
the budget leaves)."""


@dataclass
class Budget:
    """The time left for one diagnosis; `total_s` None is patient (no overall limit)."""

    total_s: float | None
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def for_run(cls, patient: bool) -> Budget:
        return cls(None if patient else QUICK_BUDGET_S)

    @property
    def patient(self) -> bool:
        return self.total_s is None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        if self.total_s is None:
            return float("inf")
        return max(0.0, self.total_s - END_RESERVE_S - self.elapsed())

    def wait(self, limit: float, *, keep: float = 0.0) -> float:
        """`limit` seconds, cut so that `keep` seconds of the budget remain for what must follow."""
        return max(0.0, min(limit, self.left() - keep))

    def step_s(self, settings: IBKRSettings) -> float:
        """The wait for one raw handshake step."""
        return settings.probe_timeout if self.patient else min(settings.probe_timeout, QUICK_STEP_S)

    def connect_s(self, settings: IBKRSettings) -> float:
        """ib_async's connect timeout."""
        return self.wait(settings.connect_timeout)

    def data_s(self, settings: IBKRSettings) -> float:
        """The wait for the historical request: all that the budget leaves, or `data_timeout` when patient."""
        return self.wait(settings.data_timeout)

    def patience_hint(self) -> str:
        """What to say after a bounded wait: how to measure instead."""
        return "" if self.patient else " Run `ibkr data connect --patient` to wait the configured timeouts."
