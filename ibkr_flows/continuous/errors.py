"""Typed errors of continuous-futures building: each says what is missing and what to run to fix it. They are
`ValueError`s so the CLI reports them as bad input (exit 2) with their message, never a traceback."""

from __future__ import annotations


class ContinuousError(ValueError):
    """Base of every failure to build a continuous series."""


class InvalidRollRuleError(ContinuousError):
    """A roll rule or adjustment text that is not one of the declared forms."""


class NoContractsError(ContinuousError):
    """No dated contract of the root has bars of the asked series in the bars table (at the version read)."""

    def __init__(self, root: str, exchange: str, series: str, version: int | None) -> None:
        at = f" at bars table version {version}" if version is not None else ""
        super().__init__(f"no dated {root} future on {exchange} has stored {series} bars{at}. Fix: ingest the "
                         f"contracts first, e.g. `ibkr data ingest FUT:{root}@{exchange}:202503 "
                         f"FUT:{root}@{exchange}:202506 --bar-size ...`")


class NoOverlapError(ContinuousError):
    """A roll whose two contracts share no bar before the roll session, so the price gap cannot be measured."""

    def __init__(self, held: str, next_: str, roll_session: object) -> None:
        super().__init__(f"cannot measure the roll gap from {held} to {next_} before the roll session "
                         f"{roll_session}: the two contracts share no bar timestamp before it. Fix: ingest {next_} "
                         f"from at least one session before {roll_session}, so both have a bar at the same time")


class UnknownExchangeCalendarError(ContinuousError):
    """A futures exchange whose trading calendar (sessions, trade dates) this project does not know."""

    def __init__(self, exchange: str, known: list[str]) -> None:
        super().__init__(f"no trading calendar known for futures on {exchange}: the roll counts that exchange's "
                         f"sessions. Known: {', '.join(known)}. Fix: add it to "
                         "ibkr_flows.ib.calendars.GLOBEX_EXCHANGES if its futures trade on CME Globex")
