"""The doctor's last layer: one tiny historical request, read against the farm notices TWS streams.

Two requests go out at once, since neither needs the other: contract details of the probe symbol (answered by
the sec-def farm) and a week of its daily bars (the historical farm, HMDS) for the unqualified stock, which TWS
resolves itself. Each ends at its answer, at TWS's refusal of it, or when the wait runs out. What an unanswered
request means follows from the latest notice TWS sent about its farm, at connect or during the wait (TWS reports
a farm that reconnects with a new notice): broken is 'data farm down', anything else is 'slow' (the boundary is
set out in `doctor.timing`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ib_async import IB, Contract, Stock

from ibkr_flows.doctor.diagnosis import FailureClass
from ibkr_flows.doctor.timing import SLOW_AFTER_S, Budget
from ibkr_flows.doctor.verdict import Verdict
from ibkr_flows.ib.codes import ErrorClass, ErrorCode
from ibkr_flows.ib.refusals import Refusal, answer_or_refusal
from ibkr_flows.settings import IBKRSettings

Notices = list[tuple[int, str]]
Warnings = list[tuple[FailureClass, str]]


@dataclass(frozen=True)
class Farm:
    """One kind of IB data farm, as TWS's notices name it."""

    name: str
    broken: ErrorCode
    fine: frozenset[ErrorCode]
    """OK, or idle and woken by the first request."""

    def state(self, notices: Notices) -> tuple[int, str] | None:
        """The notice that says how this farm is now. TWS sends one per farm server (`...:ushmds`); each
        server's latest counts, and a broken one outweighs the others."""
        latest: dict[str, tuple[int, str]] = {}
        for code, text in notices:
            if code == self.broken or code in self.fine:
                latest[text.rpartition(":")[2]] = (code, text)
        states = list(latest.values())
        broken = [state for state in states if state[0] == self.broken]
        return (broken or states or [None])[-1]


HMDS = Farm("historical data farm (HMDS)", ErrorCode.HMDS_FARM_BROKEN,
            frozenset({ErrorCode.HMDS_FARM_OK, ErrorCode.HMDS_FARM_INACTIVE}))
SECDEF = Farm("sec-def farm", ErrorCode.SECDEF_FARM_BROKEN, frozenset({ErrorCode.SECDEF_FARM_OK}))


@dataclass(frozen=True)
class Reply:
    """A request's outcome: its answer or TWS's refusal (None: nothing within the wait) and how long it took."""

    what: str
    farm: Farm
    answer: Any
    seconds: float


class DataCheck:
    """One run of the data layer; raises `Verdict` for a failure and collects warnings (slow, pacing, ...)."""

    def __init__(self, ib: IB, settings: IBKRSettings, budget: Budget, *, notices: Callable[[], Notices],
                 note: Callable[[str, str], None], connectivity: Callable[[str], None]) -> None:
        self.ib = ib
        self.settings = settings
        self.budget = budget
        self.notices = notices
        """The farm notices so far, those arriving during the wait included."""
        self.note = note
        self.connectivity = connectivity
        """Raises the 1100 verdict when TWS reported it: an unanswered request's cause comes before its farm's."""
        self.warnings: Warnings = []

    async def run(self) -> Warnings:
        wait = self.budget.data_s(self.settings)
        stock = Stock(self.settings.probe_symbol, "SMART", "USD")
        replies = await asyncio.gather(  # the historical request first: its reply is the one reported first
            self._ask("historical data", HMDS, stock, wait, lambda about: self.ib.reqHistoricalDataAsync(
                about, endDateTime="", durationStr="1 W", barSizeSetting="1 day", whatToShow="TRADES",
                useRTH=True, timeout=wait + 1)),
            self._ask("contract details", SECDEF, stock, wait, self.ib.reqContractDetailsAsync),
            return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                self._dropped(reply)
        answered: list[Reply] = [r for r in replies if isinstance(r, Reply)]
        refused = [r for r in answered if isinstance(r.answer, Refusal)]
        if refused:
            self._refused(refused[0].what, refused[0].answer)
            return self.warnings
        silent = [r for r in answered if r.answer is None]
        if silent:
            self._unanswered(silent, wait)
            return self.warnings
        self._answered(answered)
        return self.warnings

    async def _ask(self, what: str, farm: Farm, about: Contract, wait: float,
                   send: Callable[[Contract], Awaitable[Any]]) -> Reply:
        started = time.perf_counter()
        try:
            answer = await answer_or_refusal(self.ib, about, send, wait)
        except TimeoutError:
            answer = None
        return Reply(what, farm, answer, time.perf_counter() - started)

    def _dropped(self, exc: BaseException) -> None:
        if not isinstance(exc, ConnectionError):
            raise exc
        s = self.settings
        self.note("historical data", f"{type(exc).__name__}: {exc}")
        raise Verdict(FailureClass.CONNECTION_DROPPED,
                      f"TWS at {s.host}:{s.port} closed the connection during the doctor's data requests.") from exc

    def _unanswered(self, silent: list[Reply], wait: float) -> None:
        """Nothing within the wait: down when TWS calls the request's farm broken, slow otherwise."""
        notices = self.notices()
        for reply in silent:
            state = reply.farm.state(notices)
            self.note(reply.what, f"no answer within {wait:.1f} s; TWS's latest notice about the {reply.farm.name}: "
                                  + (f"{state[0]} {state[1]}" if state else "none"))
        self.connectivity(silent[0].what)
        for reply in silent:
            state = reply.farm.state(notices)
            if state and state[0] == reply.farm.broken:
                raise Verdict(FailureClass.DATA_FARM_DOWN,
                              f"The {reply.what} request got no answer within {wait:.1f} s and TWS reports the "
                              f"{reply.farm.name} down: {state[1]}.")
        reply = silent[0]
        state = reply.farm.state(notices)
        reported = f"reports the {reply.farm.name} up ({state[0]} {state[1]})" if state else \
            f"reported nothing about the {reply.farm.name}"
        self.warnings.append((FailureClass.SLOW, f"The {reply.what} request got no answer within {wait:.1f} s, but "
                              f"TWS {reported}: slow (latency over {wait:.1f} s), not down."
                              + self.budget.patience_hint()))

    def _answered(self, answered: list[Reply]) -> None:
        bars = next(r for r in answered if r.farm is HMDS)
        latency = max(r.seconds for r in answered)
        shown = f"{len(bars.answer)} daily bars of {self.settings.probe_symbol}, last {bars.answer[-1].date}" \
            if bars.answer else f"no daily bars of {self.settings.probe_symbol}"
        self.note("historical data", f"{shown}; answered in {latency * 1000:.0f} ms")
        if latency > SLOW_AFTER_S:
            slowest = max(answered, key=lambda r: r.seconds)
            self.warnings.append((FailureClass.SLOW, f"The {slowest.what} request was answered after {latency:.2f} s "
                                  f"(a healthy TWS answers in under {SLOW_AFTER_S:.0f} s): the "
                                  f"{slowest.farm.name} is slow, not down."))

    def _refused(self, what: str, refusal: Refusal) -> None:
        """TWS refused the doctor's request: what its error class says about the data farm."""
        self.note(what, f"error {refusal.code} for request {refusal.req_id} ({refusal.error_class}): {refusal.text}")
        match refusal.error_class:
            case ErrorClass.PERMISSIONS:
                raise Verdict(FailureClass.NO_DATA_PERMISSIONS,
                              f"The account lacks market data permissions for {self.settings.probe_symbol}: "
                              f"{refusal.text}")
            case ErrorClass.NO_DATA:
                return  # the farm answered; an empty range is not a connectivity problem
            case ErrorClass.PACING:
                self.warnings.append((FailureClass.NONE, "The historical data farm answers, but IB's pacing "
                                      f"penalty is active (error {refusal.code}): requests will be slow for a while."))
            case _ if refusal.code == ErrorCode.UNKNOWN_CONTRACT:
                self.warnings.append((FailureClass.NONE, f"The doctor's probe symbol {self.settings.probe_symbol!r} "
                                      "is unknown to TWS; set IBKR_PROBE_SYMBOL to a listed US stock."))
            case _:
                raise Verdict(FailureClass.DATA_FARM_DOWN,
                              f"The {what} request failed with error {refusal.code}: {refusal.text}")
