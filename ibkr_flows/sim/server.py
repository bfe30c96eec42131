"""The TWS simulator: a loopback asyncio server speaking the TWS API (server versions 124..178, see `versions`).

It is meant to be indistinguishable from a real TWS / IB Gateway for the unmodified `ib_async` client, for the
requests this project makes (connect, contract details, head timestamp, historical bars), and to reproduce each
real failure mode on demand (see `faults.Faults`). Everything is answered from a `BarSource`, so the data is
deterministic and tests can compare what was stored with what was served.

This module is the server as a whole: listening, the live sessions, the fault configuration and the one-shot
events (drops, restarts, connectivity loss). One connection's protocol is `session.Session`; the answers to
each request are in `handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ibkr_flows.ib.sessions import NEW_YORK, session_day
from ibkr_flows.ib.wire import ProtocolError
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.bars import BarSource, SyntheticBars
from ibkr_flows.sim.counters import Counters
from ibkr_flows.sim.faults import ConnectFault, Faults
from ibkr_flows.sim.pacing import PacingMonitor
from ibkr_flows.sim.session import Session
from ibkr_flows.sim.universe import Universe

log = logging.getLogger("ibkr.sim")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to send its greeting and startApi before it is dropped: TWS does not hold a
socket open for a client that connected and said nothing."""
INLINE_ANSWER_LIMIT = 20_000
"""Base bars (minutes, or seconds for sizes under a minute) a historical answer may span and still be built on
the event loop: two weeks of minutes, under 10 ms. Longer windows (years of daily bars: seconds of work) are built
in worker processes (`sim.answers`) so other clients keep being answered."""


class TWSSimulator:
    """One simulated TWS/Gateway. Create, `await start()`, point clients at `port`, `await stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Faults | None = None,
        bar_source: BarSource | None = None,
        universe: Universe | None = None,
        accounts: Iterable[str] = ("DU1234567",),
        tws_timezone: str = "America/New_York",
        clock: Callable[[], datetime] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        inline_answer_limit: int = INLINE_ANSWER_LIMIT,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.faults = faults or Faults()
        self.bar_source = bar_source or SyntheticBars()
        self.universe = universe or Universe()
        self.accounts = list(accounts)
        self.tws_zone = ZoneInfo(tws_timezone)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.handshake_timeout = handshake_timeout
        self.inline_answer_limit = inline_answer_limit
        """Historical answers spanning more base bars than this are built in a worker process (see
        `handlers.historical.answer_is_small`)."""
        self.counters = Counters()
        self.pacing = PacingMonitor(time_scale=self.faults.time_scale)
        self._server: asyncio.Server | None = None
        self._sessions: set[Session] = set()
        self._order_ids = itertools.count(1)
        self.connectivity_lost = False
        self.as_of: date | None = None
        """The market day the simulator lives on for historical data (None: the clock's): it serves the history
        IB served that evening, no bar after it, split- (and ADJUSTED_LAST dividend-) adjusted as of then, so a
        test can ingest before a split and again after it (`set_as_of`)."""
        self.forced_pacing_violations = 0
        """The next this-many paced requests get 162 whatever the rules say: another program on the same TWS login
        has used up the budget this client cannot see."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.faults.connect is not ConnectFault.NOT_LISTENING:
            await self._listen()
        elif not self.port:
            raise ValueError("a simulator that starts not listening needs an explicit port")

    async def stop(self) -> None:
        await self._unlisten()
        await self.drop_connections()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port or self._requested_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("TWS simulator listening on %s:%d", self.host, self.port)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- run-time control --------------------------------------------------------------------------------------

    async def set_faults(self, faults: Faults) -> None:
        """Replace the failure configuration; listening starts/stops to match `connect`."""
        self.faults = faults
        self.pacing.time_scale = faults.time_scale
        if faults.connect is ConnectFault.NOT_LISTENING:
            await self._unlisten()
        else:
            await self._listen()

    async def update_faults(self, **changes: Any) -> Faults:
        await self.set_faults(self.faults.updated(changes))
        return self.faults

    async def drop_connections(self) -> int:
        """Close every client socket at once, as a crashing or restarting TWS does. Returns how many."""
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        return len(sessions)

    async def restart(self, down_for: float) -> None:
        """TWS's nightly restart: every socket drops, nothing listens for `down_for` seconds, then it is back."""
        await self._unlisten()
        await self.drop_connections()
        await asyncio.sleep(down_for)
        if self.faults.connect is not ConnectFault.NOT_LISTENING:
            await self._listen()

    async def lose_connectivity(self, restore_after: float | None) -> None:
        """IB's servers become unreachable while TWS stays up: 1100 to every client, historical requests go
        unanswered, then (after `restore_after` seconds) 1102 'data maintained'."""
        self.connectivity_lost = True
        self._broadcast(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_LOST))
        if restore_after is not None:
            await asyncio.sleep(restore_after)
            self.restore_connectivity()

    def restore_connectivity(self) -> None:
        if self.connectivity_lost:
            self.connectivity_lost = False
            self._broadcast(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_RESTORED))

    def _broadcast(self, fields: list[object]) -> None:
        for session in list(self._sessions):
            if session.ready:
                session.send(fields)

    def set_as_of(self, day: date | None) -> None:
        self.as_of = day

    def history_now(self) -> datetime:
        """"Now" for historical requests: the clock, or the end of the as-of day (midnight New York after it)."""
        if self.as_of is None:
            return self.clock()
        return datetime.combine(self.as_of + timedelta(days=1), time(0), tzinfo=NEW_YORK).astimezone(UTC)

    def adjustment_day(self) -> date:
        """The day whose splits and dividends the served prices reflect."""
        return self.as_of or session_day(self.clock())

    def snapshot(self) -> dict[str, Any]:
        data = self.counters.snapshot()
        data.update(
            listening=self.listening,
            port=self.port,
            faults=self.faults.to_json(),
            live_client_ids=sorted(s.client_id for s in self._sessions if s.ready and s.client_id is not None),
            pacing_violations_by_rule=dict(self.pacing.violations),
            connectivity_lost=self.connectivity_lost,
            as_of=self.as_of.isoformat() if self.as_of else None,
        )
        return data

    # -- connections -----------------------------------------------------------------------------------------

    def live_client_ids(self) -> set[int]:
        return {s.client_id for s in self._sessions if s.client_id is not None}

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections_total += 1
        self.counters.connections_open += 1
        session = Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, ProtocolError) as exc:
            log.info("connection ended: %s", exc)
        finally:
            self._sessions.discard(session)
            self.counters.connections_open -= 1
            session.close()

    def next_order_id(self) -> int:
        return next(self._order_ids)


@contextlib.asynccontextmanager
async def running_simulator(**kwargs: Any):  # type: ignore[no-untyped-def]
    """`async with running_simulator(faults=...) as sim:` for async tests and scripts."""
    sim = TWSSimulator(**kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
