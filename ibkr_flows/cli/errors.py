"""How failures become exit codes and one-line messages, for every command: 2 bad input, 3 no stored data,
4 a damaged table (the doctor's own codes, 10-20, come from its verdict)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

EXIT_BAD_INPUT = 2
EXIT_NO_DATA = 3
EXIT_DAMAGED_TABLE = 4


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
