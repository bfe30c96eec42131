"""`ibkr up` / `ibkr down`: a Prefect server on 127.0.0.1 (or an existing one), the `ibkr-local` process work
pool, every deployment of prefect.yaml, the alert automations and a worker; and stopping exactly those again.

For a team the server keeps its runs in Postgres (`database`) and binds a network address (`access`, with
Prefect's basic auth). Server-only secrets (the database URL, the server's auth string) go to the server process
alone; the worker, `prefect deploy` and the flow runs get the client's auth string and nothing else.

Prefect itself runs in child processes with the same interpreter, so the versions pinned for this project are
the ones serving. Every step is idempotent against an existing server: the pool is created only if missing,
`prefect deploy` upserts deployments by name, automations are synced by name.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from ibkr_flows.alerts.blocks import BlockRef
from ibkr_flows.stack.access import SERVER_AUTH_VARIABLE, ServerAccess, is_loopback
from ibkr_flows.stack.database import DATABASE_URL_VARIABLES, DatabaseError, ServerDatabase, check_reachable
from ibkr_flows.stack.processes import StackError, group_alive, run_step, spawn, stop_group
from ibkr_flows.stack.state import StackState, load_state, remove_state, save_state
from ibkr_flows.stack.workdir import CHECKOUT_DIR, WORKDIR_ENV
from ibkr_flows.stack.workdir import checkout_dir as checkout_dir  # re-exported: callers find it here

PACKAGED_PREFECT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"
"""The copy of the top-level prefect.yaml an installed wheel carries (hatch force-include, see pyproject.toml)."""


def default_prefect_file() -> Path:
    """The checkout's prefect.yaml (the single source) when run from a checkout, else the packaged copy."""
    return CHECKOUT_DIR / "prefect.yaml" if CHECKOUT_DIR is not None else PACKAGED_PREFECT_FILE


def default_project_dir() -> Path:
    """Where `prefect deploy` and the worker run, and (as the worker's IBKR_WORKDIR, see `workdir`) the runs'
    working directory: a relative IBKR_DATA_DIR, `.env`. IBKR_WORKDIR when set, else the checkout, else the
    directory `ibkr up` runs in: the entrypoints are module paths (`flows.ingest:ingest_flow`), importable from the
    installed packages wherever the runs start."""
    configured = os.environ.get(WORKDIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    return CHECKOUT_DIR if CHECKOUT_DIR is not None else Path.cwd()


POOL = "ibkr-local"
PREFECT = (sys.executable, "-m", "prefect")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class UpOptions:
    home: Path
    """PREFECT_HOME of every process started: the server's SQLite database, logs, the state file."""
    port: int | None = None
    """Port of the local server; None = a free one."""
    api_url: str | None = None
    """An existing server (or Prefect Cloud workspace) to use instead of starting one."""
    database: ServerDatabase | None = None
    """The started server's database; None = SQLite under `home`."""
    access: ServerAccess = field(default_factory=ServerAccess)
    """The address the started server binds and its API auth string (also sent by every client started)."""
    pool: str = POOL
    project_dir: Path = field(default_factory=default_project_dir)
    prefect_file: Path = field(default_factory=default_prefect_file)
    alert_blocks: tuple[BlockRef, ...] = ()
    alert_window: timedelta = timedelta(hours=1)
    start_worker: bool = True
    startup_timeout: float = 120.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ensure_port_free(host: str, port: int) -> None:
    """A busy port could be another Prefect server, whose /api/health would answer for ours."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StackError(f"{host}:{port} is already in use; choose another --port or omit it") from exc


SERVER_ONLY_VARIABLES = (*DATABASE_URL_VARIABLES, SERVER_AUTH_VARIABLE)


def _child_env(home: Path, api_url: str, access: ServerAccess) -> dict[str, str]:
    """The environment of the clients started (worker, `prefect deploy`, and so the flow runs)."""
    env = {name: value for name, value in os.environ.items() if name not in SERVER_ONLY_VARIABLES}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, **access.client_env())
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def _server_env(client_env: dict[str, str], options: UpOptions, ui_api_url: str) -> dict[str, str]:
    env = {**client_env, **options.access.server_env()}
    if options.database is not None:
        env[DATABASE_URL_VARIABLES[0]] = options.database.url
    if not is_loopback(options.access.host):  # browsers elsewhere must not be sent to their own 127.0.0.1
        env.setdefault("PREFECT_UI_API_URL", ui_api_url)
    return env


def _as_client(api_url: str, access: ServerAccess) -> AbstractContextManager[Any]:
    """Prefect settings for this process's own API calls (pool, automations, worker check) to the server."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    if access.auth_string:
        updates[PREFECT_API_AUTH_STRING] = access.auth_string
    return temporary_settings(updates)


def _log_tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _wait_for_server(api_url: str, pid: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pid):
            raise StackError(f"the Prefect server exited during start-up; {log}:\n{_log_tail(log)}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise StackError(f"the Prefect server did not answer {api_url}/health within {timeout:.0f} s; see {log}")


def _check_api(api_url: str, access: ServerAccess) -> None:
    from prefect.client.orchestration import get_client

    with _as_client(api_url, access), get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise StackError(f"no Prefect API at {api_url}: {type(error).__name__}")


def _ensure_pool(api_url: str, access: ServerAccess, pool: str) -> bool:
    """Create the process work pool unless it exists (keeping its settings); True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _as_client(api_url, access), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


def _sync_alerts(api_url: str, access: ServerAccess, blocks: tuple[BlockRef, ...],
                 window: timedelta) -> Mapping[str, str]:
    from ibkr_flows.alerts.automations import sync_automations

    with _as_client(api_url, access):
        return sync_automations(blocks, window)


def _wait_for_worker(api_url: str, access: ServerAccess, pool: str, name: str, pid: int, log: Path,
                     timeout: float) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with _as_client(api_url, access), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if not group_alive(pid):
                raise StackError(f"the worker exited during start-up; {log}:\n{_log_tail(log)}")
            if any(w.name == name for w in client.read_workers_for_work_pool(pool)):
                return
            time.sleep(0.5)
    raise StackError(f"the worker did not register with pool {pool} within {timeout:.0f} s; see {log}")


def up(options: UpOptions, echo: Echo) -> StackState:
    """Bring everything up; on any failure stop what this call started and raise `StackError`."""
    home = options.home
    previous = load_state(home)
    if previous is not None and any(group_alive(pid) for pid in previous.pids):
        raise StackError(f"already up ({previous.api_url}, pids {previous.pids}); run `ibkr down` first")
    if not options.project_dir.is_dir():
        raise StackError(f"the flow runs' working directory {options.project_dir} is not a directory; create it or "
                         f"set {WORKDIR_ENV} to the directory that holds your .env and data/")
    logs = home / "logs"
    access, database = options.access, options.database
    if options.api_url is None:
        access.require_auth()
        port = options.port or _free_port(access.host)
        if options.port is not None:
            _ensure_port_free(access.host, port)
        if database is not None:
            check_reachable(database)
        api_url = f"http://{access.local_host()}:{port}/api"
        ui_url = f"http://{access.advertised_host()}:{port}"
    elif database is not None:
        raise DatabaseError("--database configures a server `ibkr up` starts; the server at --api-url keeps its "
                            "own database: drop one of the two")
    else:
        api_url, ui_url = options.api_url.rstrip("/"), None
    state = StackState(api_url=api_url, ui_url=ui_url, pool=options.pool,
                       database=database.masked if database is not None else None)
    env = _child_env(home, api_url, access)
    try:
        if options.api_url is None:
            state.logs["server"] = str(logs / "server.log")
            where = database.masked if database is not None else f"SQLite in {home}"
            echo(f"starting the Prefect server on {access.host}:{port}, database {where} (log {state.logs['server']})")
            state.server_pid = spawn([*PREFECT, "server", "start", "--host", access.host, "--port", str(port)],
                                     _server_env(env, options, f"{ui_url}/api"), Path(state.logs["server"]), cwd=home)
            save_state(home, state)
            _wait_for_server(api_url, state.server_pid, Path(state.logs["server"]), options.startup_timeout)
        else:
            _check_api(api_url, access)
        created = _ensure_pool(api_url, access, options.pool)
        echo(f"work pool {options.pool}: {'created' if created else 'exists'}")
        echo(f"deploying {options.prefect_file}")
        run_step([*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(options.prefect_file)], env,
                 options.project_dir, 300, "prefect deploy --all")
        if options.alert_blocks:
            for name, outcome in _sync_alerts(api_url, access, options.alert_blocks, options.alert_window).items():
                echo(f"automation {name}: {outcome}")
        if options.start_worker:
            _start_worker(options, state, env, logs, echo)
    except BaseException:
        echo("start-up failed; stopping what was started")
        _stop(state, timeout=10.0, echo=echo)
        remove_state(home)
        raise
    return state


def _start_worker(options: UpOptions, state: StackState, env: dict[str, str], logs: Path, echo: Echo) -> None:
    # The server's automations alert; an explicit empty IBKR_ALERT_BLOCKS (it beats a .env file) keeps the flow
    # hooks from sending the same alert a second time.
    worker_env = {**env, "IBKR_ALERT_BLOCKS": ""} if options.alert_blocks else env
    # prefect.yaml's pull step starts every run there, whichever directory or machine deployed them.
    worker_env = {**worker_env, WORKDIR_ENV: str(options.project_dir)}
    state.worker_name = f"ibkr-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    echo(f"worker {state.worker_name}: flow runs start in {options.project_dir} ({WORKDIR_ENV})")
    state.logs["worker"] = str(logs / "worker.log")
    state.worker_pid = spawn([*PREFECT, "worker", "start", "--pool", options.pool, "--name", state.worker_name],
                             worker_env, Path(state.logs["worker"]), cwd=options.project_dir)
    save_state(options.home, state)
    _wait_for_worker(state.api_url, options.access, options.pool, state.worker_name, state.worker_pid,
                     Path(state.logs["worker"]), options.startup_timeout)


def _stop(state: StackState, timeout: float, echo: Echo) -> None:
    for label, pid in (("worker", state.worker_pid), ("server", state.server_pid)):
        if pid is not None:
            echo(f"{label} (pid {pid}): {stop_group(pid, timeout)}")


def down(home: Path, timeout: float, echo: Echo) -> bool:
    """Stop what `up` started under this PREFECT_HOME; False if there was nothing to stop."""
    state = load_state(home)
    if state is None:
        return False
    _stop(state, timeout, echo)
    remove_state(home)
    return True
