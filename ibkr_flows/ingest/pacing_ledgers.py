"""Where the pacing budget keeps the requests IB is counting: a file on one machine, Postgres for a team.

IB paces per gateway session, not per process or machine, so every process that talks to one gateway must draw
from one record of what was sent. On one machine that is a JSON file under an exclusive `flock` (no server
needed). Processes on several machines share a Postgres table instead (`IBKR_PACING_LEDGER=postgresql://…`):
each change runs in one transaction holding an advisory lock per gateway, so the check-then-record of one process
cannot interleave with another's, and `now` is the database's clock, so machines with drifting clocks still agree
on the windows. The same sliding-window logic (pacing.PacingBudget) runs on either.

An event is `[sent_at, con_id, what_to_show, identity, weight, token, hard_limits]`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")
Change = Callable[[list[list], float], T]
"""Runs on the live events (in the window) and the current time under the ledger's lock; may append events or
move their timestamps; its result is returned."""

LEDGER_ENV = "IBKR_PACING_LEDGER"
"""A postgresql:// URL: every process on every machine with the same URL and gateway shares one budget."""
DIR_ENV = "IBKR_PACING_DIR"
"""The directory of the one-machine ledger files (one per gateway host:port)."""
TABLE = "ibkr_pacing_events"


class PacingLedger(Protocol):
    where: str
    """Said in the log when a run waits: which record it waits on."""

    async def update(self, change: Change[T], window_s: float) -> T: ...

    async def aclose(self) -> None: ...


def default_ledger(host: str, port: int) -> PacingLedger:
    """The ledger for the gateway at host:port: IBKR_PACING_LEDGER's Postgres if set, else this machine's file."""
    if url := os.environ.get(LEDGER_ENV, "").strip():
        return PostgresLedger(url, gateway=f"{host}:{port}")
    return FileLedger(ledger_directory() / f"{host.replace(':', '_')}_{port}.json")


def ledger_directory() -> Path:
    """Where this machine's ledger files (and client-id lock files: `client_leases`) live."""
    return Path(os.environ.get(DIR_ENV, Path.home() / ".cache" / "ibkr-flows" / "pacing"))


def postgres_location(url: str, gateway: str) -> tuple[str, str]:
    """The URL asyncpg takes, and how to name it in messages: without its password (it reaches logs)."""
    url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return url, f"{scheme}://{user}{'@' if at else ''}{host} (gateway {gateway})"


@dataclass
class FileLedger:
    """The events of one gateway in a JSON file, changed under an exclusive `flock` (every process on the
    machine)."""

    path: Path
    clock: Callable[[], float] = time.time

    @property
    def where(self) -> str:
        return str(self.path)

    async def update(self, change: Change[T], window_s: float) -> T:
        return await asyncio.to_thread(self._update, change, window_s)

    async def aclose(self) -> None:
        return None

    def _update(self, change: Change[T], window_s: float) -> T:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                text = handle.read()
                now = self.clock()
                events = [e for e in (json.loads(text) if text.strip() else []) if now - e[0] < window_s]
                result = change(events, now)
                handle.seek(0)
                handle.truncate()
                json.dump(events, handle)
                handle.flush()  # before unlocking: a buffered write landing after it would interleave
                return result
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class PacingLedgerError(RuntimeError):
    """The shared pacing ledger cannot be reached: requests are not sent unpaced; the message says what to fix."""


@dataclass
class PostgresLedger:
    """The events of one gateway in a Postgres table shared by every machine. One connection per event loop
    (asyncpg connections belong to the loop that opened them), used by one update at a time (the gateway's
    advisory lock serializes them in the database anyway)."""

    url: str
    gateway: str
    _connection: asyncpg.Connection | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _in_use: asyncio.Lock | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.url = postgres_location(self.url, self.gateway)[0]

    @property
    def where(self) -> str:
        return postgres_location(self.url, self.gateway)[1]

    async def update(self, change: Change[T], window_s: float) -> T:
        loop = asyncio.get_running_loop()
        if self._in_use is None or self._loop is not loop:
            self._in_use, self._connection, self._loop = asyncio.Lock(), None, loop
        async with self._in_use:
            return await self._update(await self._connect(), change, window_s)

    async def _update(self, connection: asyncpg.Connection, change: Change[T], window_s: float) -> T:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.gateway)
            now = await connection.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
            await connection.execute(f"DELETE FROM {TABLE} WHERE gateway = $1 AND sent_at <= $2", self.gateway,
                                     now - window_s)
            rows = await connection.fetch(
                f"SELECT sent_at, con_id, what_to_show, identity, weight, token, hard_limits FROM {TABLE} "
                "WHERE gateway = $1 ORDER BY sent_at", self.gateway)
            events = [list(row.values()) for row in rows]
            before = {event[5]: event[0] for event in events}
            result = change(events, now)
            added = [(self.gateway, *event) for event in events if event[5] not in before]
            moved = [(event[0], self.gateway, event[5]) for event in events
                     if event[5] in before and before[event[5]] != event[0]]
            if added:
                await connection.executemany(
                    f"INSERT INTO {TABLE} (gateway, sent_at, con_id, what_to_show, identity, weight, token, "
                    "hard_limits) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", added)
            if moved:
                await connection.executemany(f"UPDATE {TABLE} SET sent_at = $1 WHERE gateway = $2 AND token = $3",
                                             moved)
            return result

    async def aclose(self) -> None:
        if self._connection is not None and self._loop is asyncio.get_running_loop():
            await self._connection.close()
        self._connection = self._loop = self._in_use = None

    async def _connect(self) -> asyncpg.Connection:
        import asyncpg  # only a team's processes pay for it

        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        try:
            connection = await asyncpg.connect(self.url, timeout=10)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise PacingLedgerError(f"cannot reach the shared pacing ledger {self.where}: {exc}. Check {LEDGER_ENV} "
                                    f"(host, port, user, password, database), or unset it to pace with this "
                                    "machine's ledger file only.") from exc
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)  # one CREATE at a time
            await connection.execute(_CREATE_TABLE)
        self._connection = connection
        return connection


_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    gateway text NOT NULL,
    token text NOT NULL,
    sent_at double precision NOT NULL,
    con_id bigint NOT NULL,
    what_to_show text NOT NULL,
    identity text NOT NULL,
    weight integer NOT NULL,
    hard_limits boolean NOT NULL,
    PRIMARY KEY (gateway, token)
)"""

