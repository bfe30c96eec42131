"""The database a Prefect server started by `ibkr up` keeps its runs in: SQLite under PREFECT_HOME (one machine)
or Postgres (a team: concurrent flow-run creation without SQLite's 503s, workers on other machines).

The URL carries a password: it goes only into the server's environment, never into output, logs of ours or the
state file (those get `masked`). A Postgres that cannot be reached is reported before the server starts, with the
host and port and the fix; otherwise the server would only fail to answer /health two minutes later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ibkr_flows.stack.processes import StackError

DATABASE_URL_VARIABLES = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
"""Prefect 3's setting for the server's database (the first name wins inside Prefect; the second is the older
alias). `ibkr up --database` reads either and hands the server the first."""

POSTGRES_DRIVER = "postgresql+asyncpg"
SQLITE_DRIVER = "sqlite+aiosqlite"
CONNECT_TIMEOUT_S = 5.0


class DatabaseError(StackError):
    """The server's database URL is unusable or its database cannot be reached; the message says how to fix it."""


@dataclass(frozen=True)
class ServerDatabase:
    url: str
    """The full URL, password included: only for the server's environment."""
    masked: str
    """The URL with the password replaced by ***: for output and the state file."""
    driver: str
    host: str
    port: int
    user: str | None
    password: str | None
    name: str | None

    @property
    def is_postgres(self) -> bool:
        return self.driver == POSTGRES_DRIVER


def parse_database_url(url: str) -> ServerDatabase:
    """Validate the URL's driver (Prefect's engine is async: asyncpg or aiosqlite) and take it apart."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"--database is not a database URL; use {POSTGRES_DRIVER}://user:password@host:5432/"
                            "dbname") from exc
    masked = parsed.render_as_string(hide_password=True)
    if parsed.drivername not in (POSTGRES_DRIVER, SQLITE_DRIVER):
        raise DatabaseError(f"Prefect's server needs an async driver, not {parsed.drivername!r} ({masked}); use "
                            f"{POSTGRES_DRIVER}://user:password@host:5432/dbname (or {SQLITE_DRIVER}:///path)")
    host = parsed.host or str(parsed.query.get("host") or "localhost")
    return ServerDatabase(url=url, masked=masked, driver=parsed.drivername, host=host, port=parsed.port or 5432,
                          user=parsed.username, password=parsed.password, name=parsed.database)


def check_reachable(database: ServerDatabase, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Log in to the Postgres database once, as the server will; raise `DatabaseError` saying what to fix."""
    if database.is_postgres:
        asyncio.run(_check_postgres(database, timeout))


async def _check_postgres(database: ServerDatabase, timeout: float) -> None:
    import asyncpg

    where = f"Postgres at {database.host}:{database.port}"
    try:
        connection = await asyncpg.connect(host=database.host, port=database.port, user=database.user,
                                           password=database.password, database=database.name, timeout=timeout)
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseError(f"{where} has no database {database.name!r}; create it: createdb -h {database.host} "
                            f"-p {database.port} -U {database.user} {database.name}") from exc
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise DatabaseError(f"{where} refused user {database.user!r} ({exc}); fix the user and password in "
                            "--database / PREFECT_SERVER_DATABASE_CONNECTION_URL") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"{where} refused the connection: {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise DatabaseError(f"cannot reach {where} ({str(exc) or type(exc).__name__}); start Postgres there (e.g. "
                            "`systemctl start postgresql`) or fix the host and port in --database / "
                            "PREFECT_SERVER_DATABASE_CONNECTION_URL") from exc
    await connection.close()
