"""The `ibkr` command line: `ibkr data connect|ingest`, `ibkr backtest run`, `ibkr sim ...`, `ibkr demo`,
`ibkr up|down` (a local Prefect server with the deployments), `ibkr alerts sync`.

Heavy imports (Prefect, Great Expectations) stay inside the commands that need them so `--help` and the doctor
start fast.
"""

from __future__ import annotations

import os

EPHEMERAL_STARTUP_TIMEOUT_S = "180"
"""Prefect's default (20 s) is too short for a first start on a slow machine (its SQLite database is created then):
a command that needs the temporary server waits up to three minutes, saying so on stderr. Set before Prefect is
imported, and only if the user has not set it."""
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)

import gc  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import typer  # noqa: E402

HELP = ("Interactive Brokers research pipelines: TWS connectivity doctor, historical-bar ingestion into Delta Lake, "
        "and backtests, orchestrated by Prefect. Connection settings come from IBKR_HOST, IBKR_PORT and "
        "IBKR_CLIENT_ID (environment or .env).")
GROUPS = {"data": "ibkr_flows.cli.data:data_app", "sim": "ibkr_flows.cli.sim:sim_app",
          "backtest": "ibkr_flows.cli.backtest:backtest_app", "alerts": "ibkr_flows.cli.alerts:alerts_app"}
COMMANDS = {"demo": "ibkr_flows.cli.demo:demo", "up": "ibkr_flows.cli.stack:up", "down": "ibkr_flows.cli.stack:down"}


def build_app(only: str | None = None) -> typer.Typer:
    """The command line, whole, or with just the group or command `only`: typer imports and inspects every
    command it is given at each start (~25 ms for the whole tree, plus importing the modules, asyncio among
    them, ~40 ms), which a one-command run need not pay."""
    app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, callback=_commands)
    for name, target in GROUPS.items():
        if only in (None, name):
            app.add_typer(_load(target), name=name)
    for name, target in COMMANDS.items():
        if only in (None, name):
            app.command(name=name)(_load(target))
    return app


def main() -> None:
    """The `ibkr` script: builds only the group or command named first on the command line (the whole tree for
    `ibkr`, `ibkr --help` and shell completion)."""
    first = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    try:
        build_app(first if first in GROUPS or first in COMMANDS else None)()
    finally:
        gc.freeze()  # the collections at interpreter exit skip what is left: ~0.1 s of every command (measured)


def _commands() -> None:
    """The root's callback: with it typer keeps `ibkr demo` a subcommand when `demo` is the only one built (a lone
    command would otherwise become the root itself)."""


def _load(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name: str) -> typer.Typer:
    """`app`, the whole command line, built on first use (tests and embedding code invoke it)."""
    if name != "app":
        raise AttributeError(name)
    app = globals()["app"] = build_app()
    return app


if __name__ == "__main__":
    main()
