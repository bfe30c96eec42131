"""A throwaway Postgres cluster for tests and benchmarks: Debian's binaries (`make postgres` installs them),
initdb in a fresh directory, a free port on 127.0.0.1, password logins only, stopped and deleted afterwards.

Postgres refuses to run as root: as root the cluster belongs to the `postgres` system user, in a directory of its
own under the system temp dir (pytest's tmp_path sits in a root-only 0700 directory that user cannot enter).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"


class PostgresUnavailableError(RuntimeError):
    """No Postgres binaries on this machine."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    bin_dir: Path

    def url(self, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


def postgres_bin_dir() -> Path:
    """The newest installed version's bin directory holding initdb and pg_ctl."""
    candidates = [d for d in Path("/").glob(BIN_GLOB.lstrip("/")) if (d / "initdb").is_file()
                  and (d / "pg_ctl").is_file()]
    if not candidates:
        raise PostgresUnavailableError(f"no initdb/pg_ctl under {BIN_GLOB}; run `make postgres` (installs Debian's "
                                       "postgresql package)")
    return max(candidates, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _as_owner(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *argv] if os.geteuid() == 0 else list(argv)


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0] if argv[0] != 'runuser' else argv[4]} failed (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")


@contextlib.contextmanager
def postgres_server(base: Path, database: str = "prefect", user: str = "prefect") -> Iterator[PostgresServer]:
    """Start a cluster with a login role `user` owning `database` (not a superuser, as a team would run it)."""
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="ibkr-pg-")) if os.geteuid() == 0 else base / "postgres"
    root.mkdir(parents=True, exist_ok=True)
    data, superuser_password = root / "data", secrets.token_urlsafe(16)
    password_file = root / "superuser-password"
    password_file.write_text(superuser_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, SYSTEM_USER, SYSTEM_USER)
        shutil.chown(password_file, SYSTEM_USER, SYSTEM_USER)
    port = free_port()
    started = False
    try:
        _run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                        f"--pwfile={password_file}", "-E", "UTF8", "--no-sync"]))
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
        _run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
                        "-o", options, "start"]))
        started = True
        password = secrets.token_urlsafe(16)
        _run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
              "-v", "ON_ERROR_STOP=1", "-c", f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
              "-c", f"CREATE DATABASE {database} OWNER {user}"],
             env={**os.environ, "PGPASSWORD": superuser_password})
        yield PostgresServer("127.0.0.1", port, user, password, database, bin_dir)
    finally:
        if started:
            _run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]))
        shutil.rmtree(root, ignore_errors=True)
