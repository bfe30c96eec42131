"""Helpers for tests of the simulator's listings beyond US stocks: a client on a simulator whose clock stands at a
known day, and the conIds the simulator lists contracts under."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from ib_async import IB

from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.universe import LISTINGS

NOW = datetime(2025, 1, 10, 22, 0, tzinfo=UTC)
"""A Friday evening: ESH5 is the front contract; ESH4 and ESZ4 have expired."""


@contextmanager
def client_at_now(client_id: int, clock: Callable[[], datetime] = lambda: NOW) -> Iterator[IB]:
    """A connected ib_async client (raising request errors) on a simulator whose clock stands at `NOW` (or reads
    `clock`)."""
    with EmbeddedSimulator(clock=clock) as running:
        client = IB()
        client.RaiseRequestErrors = True
        client.connect(running.host, running.port, clientId=client_id, readonly=True, timeout=5)
        yield client
        client.disconnect()


def listed(local_symbol: str, primary_exchange: str) -> int:
    """The conId the simulator lists a contract under."""
    return next(i.con_id for i in LISTINGS if i.local_symbol == local_symbol and i.primary_exchange == primary_exchange)
