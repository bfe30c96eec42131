"""Errors a caller can act on: each message names what was wrong and what would have been accepted."""

from __future__ import annotations

from datetime import datetime


class BacktestError(Exception):
    """Base for every error this package raises on purpose, so a flow can catch backtest failures as one class."""


class UnknownStrategyError(BacktestError):
    """A strategy name that is not registered; the message lists the registered names."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown strategy {self.name!r}; known strategies: {', '.join(self.known)}"


class StrategyParameterError(BacktestError, ValueError):
    """Parameters a strategy cannot run with; the message names the offending parameters and their values."""


class NoBarsError(BacktestError):
    """Nothing to backtest. Carries what was asked for, because "no bars" alone does not say which query was empty."""

    def __init__(self, symbol: str | None = None, start: datetime | None = None, end: datetime | None = None,
                 bar_size: str | None = None) -> None:
        self.symbol = symbol
        self.start = start
        self.end = end
        self.bar_size = bar_size
        noun = f"{bar_size} bars" if bar_size else "bars"
        who = f" for {symbol}" if symbol else ""
        since = f" from {start.isoformat()}" if start else ""
        until = f" until {end.isoformat()}" if end else ""
        super().__init__(f"no {noun}{who}{since}{until} to backtest")
