"""Client ids leased per gateway, so processes sharing a gateway never ask TWS for the same one.

TWS refuses a second connection with a client id already connected (326). Every process defaults to
IBKR_CLIENT_ID (10), so two workers starting together collide; retrying with the next id after the refusal works
but costs a connect round and leaves which id each process holds to chance. A lease is taken before connecting,
from the same authority the pacing ledger uses (`pacing_ledgers`): on one machine an exclusive `flock` on a file
per (gateway, id); for a team, a Postgres session advisory lock per (gateway, id). Both are released by the
operating system or the database when the holder dies, so a crashed process never strands an id (no expiry to
tune). The lowest free id from the preferred one up is taken.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ibkr_flows.ingest.pacing_ledgers import LEDGER_ENV, PacingLedgerError, ledger_directory, postgres_location

if TYPE_CHECKING:
    import asyncpg

LEASE_SPAN = 32
"""Ids tried from the preferred one before giving up (TWS takes up to 32 API clients)."""


class ClientIdsExhaustedError(RuntimeError):
    """Every id in the span is leased by another live process on this gateway."""


class ClientIdLease(Protocol):
    client_id: int

    def release(self) -> None: ...


@dataclass
class FileLease:
    """An exclusive `flock` on `<ledger dir>/<host>_<port>.client-<id>.lock`, held open for the lease."""

    client_id: int
    path: Path
    _fd: int = field(repr=False)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1


@dataclass
class PostgresLease:
    """A session advisory lock (gateway, id) held by a connection kept for the lease."""

    client_id: int
    _connection: asyncpg.Connection = field(repr=False)

    def release(self) -> None:
        if not self._connection.is_closed():
            self._connection.terminate()  # ending the session drops its advisory locks


def _file_lease(directory: Path, host: str, port: int, preferred: int) -> ClientIdLease:
    directory.mkdir(parents=True, exist_ok=True)
    for client_id in range(preferred, preferred + LEASE_SPAN):
        path = directory / f"{host.replace(':', '_')}_{port}.client-{client_id}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return FileLease(client_id, path, fd)
    raise ClientIdsExhaustedError(f"client ids {preferred}..{preferred + LEASE_SPAN - 1} of {host}:{port} are all "
                                  f"leased by running processes (lock files in {directory}); set IBKR_CLIENT_ID to "
                                  "another range")


async def _postgres_lease(url: str, gateway: str, preferred: int) -> ClientIdLease:
    import asyncpg  # only a team's processes pay for it

    url, where = postgres_location(url, gateway)
    try:
        connection = await asyncpg.connect(url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise PacingLedgerError(f"cannot reach the shared pacing ledger {where} to lease a client id: {exc}. "
                                f"Check {LEDGER_ENV}, or unset it to lease from this machine's lock files.") from exc
    for client_id in range(preferred, preferred + LEASE_SPAN):
        if await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1), $2)", gateway, client_id):
            return PostgresLease(client_id, connection)
    connection.terminate()
    raise ClientIdsExhaustedError(f"client ids {preferred}..{preferred + LEASE_SPAN - 1} of {gateway} are all leased "
                                  f"by running processes ({where}); set IBKR_CLIENT_ID to another range")


async def lease_client_id(host: str, port: int, preferred: int) -> ClientIdLease:
    """The lowest free client id from `preferred` up on the gateway at host:port, held until `release()` or
    the process ends."""
    if url := os.environ.get(LEDGER_ENV, "").strip():
        return await _postgres_lease(url, f"{host}:{port}", preferred)
    return _file_lease(ledger_directory(), host, port, preferred)
