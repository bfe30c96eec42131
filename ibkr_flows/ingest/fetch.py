"""Talking to TWS for ingestion: one read-only connection that survives drops, and requests whose failures come
back as the typed errors of `ingest.errors` as soon as TWS gives them (`ib.refusals`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from ib_async import IB, BarData, Contract, ContractDetails, RequestError

from ibkr_flows.ib.codes import CONNECTIVITY_RESTORED, RETRY_POLICY, ErrorClass, ErrorCode, Retry
from ibkr_flows.ib.codes import classify as classify_code
from ibkr_flows.ib.instruments import InstrumentId
from ibkr_flows.ib.pacing_rules import hard_limits_apply
from ibkr_flows.ib.refusals import Refusal, answer_or_refusal
from ibkr_flows.ib.resolve import AmbiguousInstrumentError, UnknownInstrumentError, resolve
from ibkr_flows.ingest.client_leases import ClientIdLease, lease_client_id
from ibkr_flows.ingest.errors import (
    AmbiguousSymbolError,
    DisconnectedError,
    IngestError,
    NoPermissionsError,
    PacingViolationError,
    RequestRejectedError,
    RequestTimeoutError,
    RetriesExhaustedError,
    RetryableError,
    UnknownSymbolError,
)
from ibkr_flows.ingest.pacing import PacedRequest, PacingBudget
from ibkr_flows.ingest.plan import Chunk
from ibkr_flows.ingest.remedies import fix_for
from ibkr_flows.settings import IBKRSettings

log = logging.getLogger("ibkr.ingest")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable errors. Pacing violations wait longer: IB's penalty box lasts tens of seconds."""

    max_attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    pacing_delay_s: float = 15.0
    reconnect_deadline_s: float = 300.0
    """How long to keep trying to reconnect: covers TWS's nightly restart (a minute or two)."""

    def delay(self, attempt: int, error: Exception) -> float:
        base = self.pacing_delay_s if isinstance(error, PacingViolationError) else self.base_delay_s
        return min(self.max_delay_s, base * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


class IBSession:
    """A read-only ib_async connection that reconnects (with the next client id if TWS still holds ours). The
    client id is leased for the session's life (`client_leases`): processes sharing the gateway take different
    ones, and the one TWS refuses (a client outside the lease, e.g. TWS's own) is given back for the next."""

    def __init__(self, settings: IBKRSettings, policy: RetryPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.client_id = settings.client_id
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        self.connectivity = asyncio.Event()
        self.connectivity.set()
        self.reconnects = 0
        self.generation = 0
        """Counts successful connects, so that of several requests failing on one dead socket only the first
        reconnects: the others see a newer generation and simply retry."""
        self._recent_errors: list[int] = []
        self.ib.errorEvent += self._on_error
        self._connect_lock = asyncio.Lock()
        self._lease: ClientIdLease | None = None

    async def _lease_from(self, preferred: int) -> None:
        if self._lease is not None:
            self._lease.release()
        self._lease = await lease_client_id(self.settings.host, self.settings.port, preferred)
        self.client_id = self._lease.client_id
        if self.client_id != preferred:
            log.info("client id %d is leased by another process on %s:%d; using %d", preferred,
                     self.settings.host, self.settings.port, self.client_id)

    def _on_error(self, req_id: int, code: int, text: str, _contract: Contract | None) -> None:
        self._recent_errors.append(code)
        if code == ErrorCode.CONNECTIVITY_LOST:
            log.warning("TWS lost connectivity to IB (1100); requests wait for 1101/1102")
            self.connectivity.clear()
        elif code in CONNECTIVITY_RESTORED:
            log.info("TWS connectivity restored (%d)", code)
            self.connectivity.set()

    async def ensure_connected(self) -> None:
        async with self._connect_lock:
            await self._connect_unlocked()

    async def _connect_unlocked(self) -> None:
        if self.ib.isConnected():
            return
        if self._lease is None:
            await self._lease_from(self.client_id)
        deadline = asyncio.get_running_loop().time() + self.policy.reconnect_deadline_s
        attempt = 0
        while True:
            attempt += 1
            self._recent_errors.clear()
            try:
                await self.ib.connectAsync(self.settings.host, self.settings.port, self.client_id,
                                           timeout=self.settings.connect_timeout, readonly=True)
                self.connectivity.set()
                self.generation += 1
                if attempt > 1 or self.reconnects:
                    log.info("reconnected to TWS as client %d", self.client_id)
                return
            except (OSError, TimeoutError) as exc:
                self._drop()
                if ErrorCode.CLIENT_ID_IN_USE in self._recent_errors:
                    refused = self.client_id
                    await self._lease_from(refused + 1)
                    log.warning("client id %d in use; retrying as %d", refused, self.client_id)
                    continue
                if asyncio.get_running_loop().time() >= deadline:
                    raise DisconnectedError(f"could not reconnect to TWS within "
                                            f"{self.policy.reconnect_deadline_s:.0f} s: {exc!r}") from exc
                await asyncio.sleep(min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** attempt))

    async def reconnect(self, failed_generation: int) -> None:
        """Reconnect after a request failed on connection `failed_generation`, unless another request already
        did."""
        async with self._connect_lock:
            if self.generation != failed_generation and self.ib.isConnected():
                return
            self.reconnects += 1
            self._drop()
            await self._connect_unlocked()

    def _drop(self) -> None:
        """ib_async's `disconnect()` raises on a socket that is open but not yet through the handshake."""
        try:
            self.ib.disconnect()
        except ConnectionError:
            self.ib.client.disconnect()

    def close(self) -> None:
        self._drop()
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def classify(symbol: str, exc: RequestError) -> IngestError | None:
    """Map an IB request error to a typed ingestion error by its class and that class's retry policy
    (`ib.codes`); None means 'no data for this range'."""
    error_class = classify_code(exc.code, exc.message)
    if error_class is ErrorClass.NO_DATA:
        return None
    match RETRY_POLICY[error_class]:
        case Retry.PACING_BACKOFF:
            return PacingViolationError(exc.message)
        case Retry.BACKOFF if error_class is ErrorClass.CONNECTIVITY:
            return DisconnectedError(exc.message)
        case Retry.BACKOFF:
            return RequestTimeoutError(f"error {exc.code}: {exc.message}")
        case Retry.NEXT_CLIENT_ID:  # reconnecting moves to the next client id (`IBSession`)
            return DisconnectedError(exc.message)
        case _ if error_class is ErrorClass.PERMISSIONS:
            return NoPermissionsError(symbol, f"{exc.message}. Fix: {fix_for(exc.code, exc.message)}")
        case _ if exc.code == ErrorCode.UNKNOWN_CONTRACT:
            return UnknownSymbolError(symbol, "TWS has no such contract (error 200): check the symbol")
        case _:
            return RequestRejectedError(symbol, f"TWS refused the request (error {exc.code}): {exc.message}",
                                        exc.code, fix_for(exc.code, exc.message))


async def with_retries(session: IBSession, symbol: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, retrying retryable failures with backoff and reconnecting after disconnects."""
    policy = session.policy
    for attempt in range(1, policy.max_attempts + 1):
        generation = session.generation
        try:
            await session.ensure_connected()
            generation = session.generation
            return await call()
        except RetryableError as exc:
            if attempt == policy.max_attempts:
                raise RetriesExhaustedError(symbol, f"{what}: {exc} (after {attempt} attempts)") from exc
            delay = policy.delay(attempt, exc)
            log.warning("%s %s: %s; retry %d/%d in %.1f s", symbol, what, exc, attempt, policy.max_attempts - 1,
                        delay)
            if isinstance(exc, DisconnectedError) and not session.ib.isConnected():
                await asyncio.sleep(delay)
                await session.reconnect(generation)
            else:
                await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _request(session: IBSession, symbol: str, contract: Contract, send: Callable[[Contract], Awaitable[T]],
                   timeout: float | None) -> T | None:
    """One request about `contract`, optionally with a deadline; IB's error for it ends it at once (whether or not
    ib_async would), socket drops and IB errors become typed errors, and IB's 'no data' becomes None. `send` is
    called inside the guard: ib_async writes some requests to the socket as soon as they are called, so a
    connection that died a moment ago raises right there."""
    try:
        answer = await answer_or_refusal(session.ib, contract, send, timeout)
        if isinstance(answer, Refusal):
            raise answer.as_request_error()
        return answer
    except RequestError as exc:
        error = classify(symbol, exc)
        if error is None:
            return None
        raise error from exc
    except TimeoutError as exc:
        raise _silence(session, f"no answer within {timeout:.0f} s") from exc
    except ConnectionError as exc:
        raise DisconnectedError(f"connection dropped: {exc}") from exc


def _silence(session: IBSession, what: str) -> RetryableError:
    if not session.ib.isConnected():
        return DisconnectedError(what + " (disconnected)")
    if not session.connectivity.is_set():
        return DisconnectedError(what + " (TWS lost connectivity to IB, 1100)")
    return RequestTimeoutError(what)


async def qualify(session: IBSession, instrument: InstrumentId | str, timeout: float) -> ContractDetails:
    """The one contract `instrument` (an id, or its text) names (`ib.resolve`), within `timeout`. An unknown or
    ambiguous id is TWS's answer, not a hiccup: it fails the symbol at once, with the ids that would work, before
    anything is fetched; only silence and dropped connections are retried."""
    if isinstance(instrument, str):
        instrument = InstrumentId.parse(instrument)
    symbol = str(instrument)

    async def call() -> ContractDetails:
        try:
            return await asyncio.wait_for(resolve(session.ib, instrument), timeout)
        except UnknownInstrumentError as exc:
            raise UnknownSymbolError(symbol, str(exc)) from exc
        except AmbiguousInstrumentError as exc:
            raise AmbiguousSymbolError(symbol, str(exc)) from exc
        except RequestError as exc:
            raise classify(symbol, exc) or UnknownSymbolError(symbol, f"TWS has no details: {exc.message}") from exc
        except TimeoutError as exc:
            raise _silence(session, f"no contract details within {timeout:.0f} s") from exc
        except ConnectionError as exc:
            raise DisconnectedError(f"connection dropped: {exc}") from exc

    return await with_retries(session, symbol, "contract details", call)


async def head_timestamp(session: IBSession, budget: PacingBudget, contract: Contract, *, what_to_show: str,
                         use_rth: bool, timeout: float) -> datetime | None:
    """IB's first available bar, which bounds a new symbol's backfill (a paced request in IB's books)."""

    async def call() -> datetime | None:
        async with budget.slot(PacedRequest(contract.conId, what_to_show, f"head {contract.conId} {what_to_show}")):
            head = await _request(session, contract.symbol, contract, lambda own: session.ib.reqHeadTimeStampAsync(
                own, whatToShow=what_to_show, useRTH=use_rth, formatDate=1), timeout)
        # formatDate 1 is UTC text, which ib_async reads as a naive datetime; formatDate 2 (epoch seconds) breaks
        # ib_async's parser for a history that starts before 1970 (IBM's, 1962)
        return head.replace(tzinfo=UTC) if isinstance(head, datetime) else None  # IB answers [] on error

    return await with_retries(session, contract.symbol, "head timestamp", call)


async def fetch_chunk(session: IBSession, budget: PacingBudget, contract: Contract, chunk: Chunk, *,
                      bar_size: str, what_to_show: str, use_rth: bool, timeout: float) -> list[BarData]:
    """The bars of one planned request ([] when IB says it has none for the range: a holiday, a halt), paced by
    the rules IB applies to its bar size (`PacingBudget`).

    ib_async's own timeout cancels the request at TWS and returns an empty list; with RaiseRequestErrors on,
    IB's real 'no data' raises instead, so an empty list here always means silence, never 'no data'.
    """
    paced = PacedRequest(contract.conId, what_to_show, chunk.describe(contract.symbol, bar_size, what_to_show,
                                                                      use_rth), hard_limits_apply(bar_size))

    async def call() -> list[BarData]:
        await session.connectivity.wait()
        async with budget.slot(paced):
            bars = await _request(session, contract.symbol, contract, lambda own: session.ib.reqHistoricalDataAsync(
                own, endDateTime=chunk.end_date_time, durationStr=chunk.duration, barSizeSetting=bar_size,
                whatToShow=what_to_show, useRTH=use_rth, formatDate=2, timeout=timeout), None)
        if bars is None:
            return []
        if not bars:
            raise _silence(session, f"no answer within {timeout:.0f} s")
        return list(bars)

    return await with_retries(session, contract.symbol, f"bars until {chunk.end:%Y-%m-%d %H:%M}", call)


async def tws_time(session: IBSession, symbol: str, timeout: float) -> datetime:
    """TWS's clock: "now" for a request with an empty end date is TWS's now, not this machine's."""

    async def call() -> datetime:
        try:
            return (await asyncio.wait_for(session.ib.reqCurrentTimeAsync(), timeout)).astimezone(UTC)
        except TimeoutError as exc:
            raise _silence(session, f"no current time within {timeout:.0f} s") from exc
        except ConnectionError as exc:
            raise DisconnectedError(f"connection dropped: {exc}") from exc

    return await with_retries(session, symbol, "TWS current time", call)
