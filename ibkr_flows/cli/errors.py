"""How failures become exit codes and one-line messages, for every command: 2 bad input, 3 no stored data,
4 a damaged table, 5 no Prefect API (the doctor's own codes, 10-21, come from its verdict)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

EXIT_BAD_INPUT = 2
EXIT_NO_DATA = 3
EXIT_DAMAGED_TABLE = 4
EXIT_PREFECT_UNAVAILABLE = 5
EPHEMERAL_TIMEOUT_TEXT = "ephemeral Prefect API server"
"""Part of the RuntimeError Prefect raises when its temporary server does not answer in time."""


def describe(exc: BaseException) -> str:
    """A validation error as the sentences a user can act on (field, what is allowed, what was given)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(_describe_one(error) for error in exc.errors())


def _describe_one(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "literal_error":
        return f"{where} must be one of {error['ctx']['expected']}, got {error['input']!r}"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return f"{where}: {error['msg']} (got {error['input']!r})" if where else error["msg"]


@contextmanager
def exit_on_error(console: Console) -> Iterator[None]:
    """Run a command's body; an error a user can fix ends it with its exit code and message, not a traceback."""
    from ibkr_flows.backtest.errors import BacktestError
    from ibkr_flows.backtest.runner import MissingBarsError
    from storage.errors import CorruptTableError, NotADeltaTableError

    try:
        yield
    except (MissingBarsError, NotADeltaTableError) as exc:
        console.print(f"[red]no data:[/red] {exc}")
        raise typer.Exit(EXIT_NO_DATA) from None
    except CorruptTableError as exc:
        console.print(f"[red]damaged table:[/red] {exc}")
        raise typer.Exit(EXIT_DAMAGED_TABLE) from None
    except (BacktestError, ValueError) as exc:
        console.print(f"[red]error:[/red] {describe(exc)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@contextmanager
def prefect_api(console: Console) -> Iterator[None]:
    """Run a command's Prefect part. With no server configured, Prefect starts a temporary one on first use, which
    takes seconds to a minute and says nothing: say on stderr what the command is waiting for. If that server
    still does not start in time, end with the reason, the fix and `EXIT_PREFECT_UNAVAILABLE`, not Prefect's
    traceback."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url is None:
        console.print("starting a temporary Prefect server (the first run on this machine may take a minute)…",
                      style="dim")
    try:
        yield
    except RuntimeError as exc:
        if EPHEMERAL_TIMEOUT_TEXT not in str(exc):
            raise
        timeout = settings.server.ephemeral.startup_timeout_seconds
        console.print(f"[red]Prefect unavailable:[/red] the temporary Prefect server did not answer within "
                      f"{timeout} s. Fix: raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (a first start "
                      "on a slow machine can take minutes), or run `ibkr up` and set PREFECT_API_URL to its server.")
        raise typer.Exit(EXIT_PREFECT_UNAVAILABLE) from None
