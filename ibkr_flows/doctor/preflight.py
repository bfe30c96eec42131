"""The connectivity preflight: raw probe first, then the real client, then one tiny historical request.

Order matters: the raw probe (doctor.probe) names the failing layer in milliseconds; only once the socket layers
are fine does the real `ib_async` client connect (read-only) and ask the historical farm for a week of daily bars,
which proves what a pipeline needs and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from ib_async import IB, ConnectionStats, Contract, Stock

from ibkr_flows.doctor.diagnosis import Diagnosis, Evidence, FailureClass, Status
from ibkr_flows.doctor.probe import Outcome, ProbeResult, probe, tcp_open
from ibkr_flows.doctor.remediation import remediation
from ibkr_flows.ib.codes import FARM_BROKEN, FARM_NOTICES, ErrorClass, ErrorCode
from ibkr_flows.ib.ports import LIVE_PORTS, WELL_KNOWN_PORTS, port_label
from ibkr_flows.ib.refusals import Refusal, answer_or_refusal
from ibkr_flows.settings import IBKRSettings

PORT_SCAN_TIMEOUT_S = 0.5
FREE_ID_CANDIDATES = 10
T = TypeVar("T")


class _Verdict(Exception):
    """Raised inside the preflight to stop at the first conclusive layer."""

    def __init__(self, cls: FailureClass, summary: str) -> None:
        super().__init__(summary)
        self.cls = cls
        self.summary = summary


_OUTCOME_CLASS = {
    Outcome.UNREACHABLE: FailureClass.HOST_UNREACHABLE,
    Outcome.CLOSED_AFTER_ACCEPT: FailureClass.CONNECTION_REJECTED,
    Outcome.CLOSED_DURING_HANDSHAKE: FailureClass.CONNECTION_DROPPED,
    Outcome.SILENT_AFTER_ACCEPT: FailureClass.HANDSHAKE_SILENT,
    Outcome.NOT_TWS: FailureClass.NOT_TWS,
    Outcome.HTTP_SERVER: FailureClass.NOT_TWS,
    Outcome.PROTOCOL_ERROR: FailureClass.NOT_TWS,
    Outcome.VERSION_TOO_OLD: FailureClass.NOT_TWS,
    Outcome.SILENT_AFTER_VERSION: FailureClass.API_NOT_READY,
    Outcome.EMPTY_ACCOUNTS: FailureClass.API_NOT_READY,
}
_OUTCOME_SUMMARY = {
    Outcome.UNREACHABLE: "Cannot reach {host}:{port}.",
    Outcome.CLOSED_AFTER_ACCEPT: "TWS at {host}:{port} accepted the connection and closed it at once.",
    Outcome.CLOSED_DURING_HANDSHAKE: "TWS at {host}:{port} closed the connection during the handshake after "
                                     "{messages} message(s), before the API session was usable.",
    Outcome.SILENT_AFTER_ACCEPT: "TWS at {host}:{port} accepted the connection but never answered the API "
                                 "handshake (an 'accept incoming connection' dialog, or TWS not ready).",
    Outcome.NOT_TWS: "The service on {host}:{port} does not speak the TWS API (not TWS / protocol error); it "
                     "sent {received}.",
    Outcome.HTTP_SERVER: "The service on {host}:{port} is an HTTP server, not TWS; it answered {received}.",
    Outcome.PROTOCOL_ERROR: "The service on {host}:{port} answered the TWS version handshake, then sent bytes no "
                            "TWS sends (not TWS / protocol error): {received}.",
    Outcome.VERSION_TOO_OLD: "TWS at {host}:{port} is too old for ib_async (server version {version} < 157).",
    Outcome.SILENT_AFTER_VERSION: "TWS at {host}:{port} answered the handshake but the API session never became "
                                  "ready: TWS / IB Gateway is not logged in or is waiting on a dialog.",
    Outcome.EMPTY_ACCOUNTS: "TWS at {host}:{port} sent an empty account list, so the API never becomes ready: "
                            "the session is not fully logged in.",
}


class Preflight:
    """One diagnosis run. Holds the evidence as it accumulates so every verdict shows how it was reached."""

    def __init__(self, settings: IBKRSettings, *, retry_client_id: bool, check_data: bool) -> None:
        self.settings = settings
        self.retry_client_id = retry_client_id
        self.check_data = check_data
        self.started = time.perf_counter()
        self.evidence: list[Evidence] = []
        self.warnings: list[tuple[FailureClass, str]] = []
        self.client_id = settings.client_id
        self.suggested_client_id: int | None = None
        self.open_ports: list[int] = []
        self.server_version: int | None = None
        self.accounts: list[str] = []
        self.notices: list[tuple[int, str]] = []
        self.http_server = False

    def note(self, step: str, observation: str) -> None:
        self.evidence.append(Evidence(step, observation, (time.perf_counter() - self.started) * 1000))

    async def run(self) -> Diagnosis:
        try:
            await self._socket_layers()
            await self._client_layers()
        except _Verdict as verdict:
            return self._diagnosis(Status.FAILED, verdict.cls, verdict.summary)
        self._note_session_risks()
        if self.warnings:
            cls, summary = self.warnings[0]
            return self._diagnosis(Status.WARNING, cls, summary)
        return self._diagnosis(
            Status.HEALTHY, FailureClass.NONE,
            f"TWS at {self.settings.host}:{self.settings.port} is ready: server version {self.server_version}, "
            f"historical data answers.",
        )

    # -- layer 1-3: raw socket ---------------------------------------------------------------------------------

    async def _socket_layers(self) -> None:
        s = self.settings
        result = await self._probe(self.client_id, check_read_only=True)
        if result.outcome is Outcome.REFUSED:
            await self._refused()
        if result.outcome is Outcome.CLIENT_ID_IN_USE:
            result = await self._client_id_in_use()
        if result.outcome is not Outcome.READY:
            self.http_server = result.outcome is Outcome.HTTP_SERVER
            raise _Verdict(_OUTCOME_CLASS[result.outcome], _OUTCOME_SUMMARY[result.outcome].format(
                host=s.host, port=s.port, version=result.server_version, received=result.received,
                messages=result.messages))
        self.server_version = result.server_version
        self.accounts = result.accounts
        self.notices = list(result.notices)
        if result.read_only:
            self.warnings.append((FailureClass.READ_ONLY_API, "TWS has 'Read-Only API' on; fine for this "
                                  "project, which only reads data."))
        self._check_connectivity_notices("start api")

    async def _probe(self, client_id: int, *, check_read_only: bool) -> ProbeResult:
        s = self.settings
        result = await probe(s.host, s.port, client_id, s.probe_timeout, check_read_only=check_read_only)
        offset = (time.perf_counter() - self.started) * 1000 - (result.steps[-1][2] if result.steps else 0)
        for step, observation, ms in result.steps:
            self.evidence.append(Evidence(f"{step} (id {client_id})" if step == "start api" else step,
                                          observation, offset + ms))
        return result

    async def _refused(self) -> None:
        s = self.settings
        others = [p for p in WELL_KNOWN_PORTS if p != s.port]
        found = await asyncio.gather(*(tcp_open(s.host, p, PORT_SCAN_TIMEOUT_S) for p in others))
        self.open_ports = [p for p, is_open in zip(others, found, strict=True) if is_open]
        self.note("port scan", "open: " + (", ".join(f"{p} ({port_label(p)})" for p in self.open_ports)
                                           if self.open_ports else "none of " + ", ".join(map(str, others))))
        if self.open_ports:
            raise _Verdict(FailureClass.WRONG_PORT,
                           f"Nothing listens on {s.host}:{s.port} ({port_label(s.port)}), but port "
                           f"{self.open_ports[0]} ({port_label(self.open_ports[0])}) is open: wrong port.")
        raise _Verdict(FailureClass.NOT_LISTENING,
                       f"Nothing listens on {s.host}:{s.port} ({port_label(s.port)}): TWS / IB Gateway is not "
                       "running, its API socket is disabled, or it uses another port.")

    async def _client_id_in_use(self) -> ProbeResult:
        taken = self.client_id
        for candidate in range(taken + 1, taken + 1 + FREE_ID_CANDIDATES):
            result = await self._probe(candidate, check_read_only=True)
            if result.outcome is Outcome.READY:
                self.suggested_client_id = candidate
                break
        if self.suggested_client_id is None or not self.retry_client_id:
            free = f"; client id {self.suggested_client_id} is free" if self.suggested_client_id else ""
            raise _Verdict(FailureClass.CLIENT_ID_IN_USE,
                           f"Client id {taken} is already in use on {self.settings.host}:{self.settings.port}{free}.")
        self.client_id = self.suggested_client_id
        self.warnings.append((FailureClass.CLIENT_ID_IN_USE,
                              f"Client id {taken} is in use; continued with free client id {self.client_id}."))
        return result

    # -- layer 4: the real client ------------------------------------------------------------------------------

    async def _client_layers(self) -> None:
        ib = IB()
        errors: list[tuple[int, int, str]] = []
        ib.errorEvent += lambda req_id, code, text, _contract: errors.append((req_id, code, text))
        try:
            await self._connect(ib, errors)
            if self.check_data:
                await self._historical_probe(ib, errors)
        finally:
            ib.disconnect()

    async def _connect(self, ib: IB, errors: list[tuple[int, int, str]]) -> None:
        s = self.settings
        with _peer_drops(ib) as drops:
            for attempt in range(2):
                try:
                    await ib.connectAsync(s.host, s.port, self.client_id, timeout=s.connect_timeout, readonly=True)
                except (TimeoutError, ConnectionError, OSError) as exc:
                    id_refused = any(code == ErrorCode.CLIENT_ID_IN_USE for _, code, _ in errors)
                    if id_refused and attempt == 0:
                        # TWS may not have released the id of the probe's socket yet; give it a moment once.
                        errors.clear()
                        drops.clear()
                        await asyncio.sleep(1.0)
                        continue
                    self.note("ib_async connect", f"{type(exc).__name__}: {exc or 'timed out'}; errors: {errors}")
                    if drops and not id_refused:
                        raise _Verdict(FailureClass.CONNECTION_DROPPED, _dropped_summary(s.host, s.port, drops[0])
                                       ) from exc
                    raise _Verdict(
                        FailureClass.CLIENT_ID_IN_USE if id_refused else FailureClass.API_NOT_READY,
                        f"The raw handshake succeeded but ib_async could not connect to {s.host}:{s.port} "
                        f"({type(exc).__name__}).",
                    ) from exc
                break
        watched = FARM_NOTICES | {ErrorCode.CONNECTIVITY_LOST}
        self.notices += [(code, text) for _, code, text in errors if code in watched]
        self.note("ib_async connect", f"connected read-only as client {self.client_id}, server version "
                                      f"{ib.client.serverVersion()}")
        self._check_connectivity_notices("ib_async connect")

    async def _historical_probe(self, ib: IB, errors: list[tuple[int, int, str]]) -> None:
        s = self.settings
        farm_broken = [text for code, text in self.notices if code in FARM_BROKEN]
        wait = min(s.data_timeout, 3.0) if farm_broken else s.data_timeout
        contract = Stock(s.probe_symbol, "SMART", "USD")

        async def ask(what: str, about: Contract, call: Callable[[Contract], Awaitable[T]]) -> T | None:
            try:
                answer = await answer_or_refusal(ib, about, call, wait)
            except TimeoutError:
                self.note(what, f"no answer within {wait:.1f} s" + (f" (farm notice: {farm_broken[0]})"
                                                                    if farm_broken else ""))
                self._check_connectivity_notices(what, errors)
                raise _Verdict(FailureClass.DATA_FARM_DOWN,
                               f"{what} got no answer within {wait:.0f} s: the IB data farm is down or "
                               "disconnected." + (f" TWS reported: {farm_broken[0]}." if farm_broken else "")
                               ) from None
            except ConnectionError as exc:
                self.note(what, f"{type(exc).__name__}: {exc}")
                raise _Verdict(FailureClass.CONNECTION_DROPPED,
                               f"TWS at {s.host}:{s.port} closed the connection during the doctor's {what} "
                               "request.") from exc
            if isinstance(answer, Refusal):
                self._refused_request(what, answer)
                return None
            return answer

        details = await ask("contract details", contract, ib.reqContractDetailsAsync)
        if not details:
            return
        contract = details[0].contract
        bars = await ask("historical data", contract, lambda about: ib.reqHistoricalDataAsync(
            about, endDateTime="", durationStr="1 W", barSizeSetting="1 day", whatToShow="TRADES",
            useRTH=True, timeout=wait + 1))
        if bars:
            self.note("historical data", f"{len(bars)} daily bars of {s.probe_symbol}, last {bars[-1].date}")

    def _refused_request(self, what: str, refusal: Refusal) -> None:
        """TWS refused the doctor's request: what its error class says about the data farm."""
        self.note(what, f"error {refusal.code} for request {refusal.req_id} ({refusal.error_class}): {refusal.text}")
        match refusal.error_class:
            case ErrorClass.PERMISSIONS:
                raise _Verdict(FailureClass.NO_DATA_PERMISSIONS,
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
                raise _Verdict(FailureClass.DATA_FARM_DOWN,
                               f"The {what} request failed with error {refusal.code}: {refusal.text}")

    def _check_connectivity_notices(self, step: str, errors: list[tuple[int, int, str]] | None = None) -> None:
        codes = [code for code, _ in self.notices] + [code for _, code, _ in errors or []]
        if ErrorCode.CONNECTIVITY_LOST in codes:
            self.note(step, "error 1100: connectivity between IB and TWS has been lost")
            raise _Verdict(FailureClass.IB_CONNECTIVITY_LOST,
                           "TWS is running but has lost its connection to IBKR's servers (error 1100).")

    # -- verdict -----------------------------------------------------------------------------------------------

    def _note_session_risks(self) -> None:
        s = self.settings
        live_accounts = [a for a in self.accounts if not a.startswith("D")]
        if s.port in LIVE_PORTS or live_accounts:
            why = f"port {s.port} is {port_label(s.port)}" if s.port in LIVE_PORTS else \
                f"account(s) {', '.join(live_accounts)} are not paper (DU...) accounts"
            self.warnings.insert(0, (FailureClass.LIVE_SESSION, f"This is a LIVE trading session: {why}."))
            if not _is_loopback(s.host):
                self.warnings.insert(0, (FailureClass.LIVE_SESSION,
                                         f"A LIVE trading session is reachable over the network at {s.host}: "
                                         "keep the API on 127.0.0.1 or restrict 'Trusted IPs'."))

    def _diagnosis(self, status: Status, cls: FailureClass, summary: str) -> Diagnosis:
        s = self.settings
        return Diagnosis(
            status=status,
            failure_class=cls,
            summary=summary,
            host=s.host,
            port=s.port,
            client_id=self.client_id,
            remediation=remediation(cls, host=s.host, port=s.port, client_id=s.client_id,
                                    open_ports=self.open_ports, suggested_client_id=self.suggested_client_id,
                                    http_server=self.http_server),
            evidence=self.evidence,
            warnings=[text for _, text in self.warnings],
            server_version=self.server_version,
            accounts=self.accounts,
            paper=all(a.startswith("D") for a in self.accounts) if self.accounts else None,
            open_ports=self.open_ports,
            suggested_client_id=self.suggested_client_id,
            farm_notices=[f"{code} {text}" for code, text in self.notices if code in FARM_NOTICES],
            elapsed_ms=(time.perf_counter() - self.started) * 1000,
        )


@contextlib.contextmanager
def _peer_drops(ib: IB) -> Iterator[list[ConnectionStats | None]]:
    """Each time the peer ends the live connection (closes or resets it), with ib_async's message counts when its
    API was ready. ib_async reports it through `apiError` while the client still counts as connected; its own
    teardown after a failed connect reports when it no longer does."""
    drops: list[ConnectionStats | None] = []

    def on_api_error(_message: str) -> None:
        if ib.client.isConnected():
            drops.append(ib.client.connectionStats() if ib.client.isReady() else None)

    ib.client.apiError += on_api_error
    try:
        yield drops
    finally:
        ib.client.apiError -= on_api_error


def _dropped_summary(host: str, port: int, stats: ConnectionStats | None) -> str:
    counts = (f" after {stats.numMsgRecv} message(s) from TWS ({stats.numMsgSent} sent)" if stats else "")
    return (f"TWS at {host}:{port} closed the connection during the handshake{counts}, while ib_async was starting "
            "the session.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def diagnose_async(settings: IBKRSettings | None = None, *, retry_client_id: bool = False,
                         check_data: bool = True) -> Diagnosis:
    """Diagnose TWS connectivity. `retry_client_id` continues with the next free id when the configured one is
    taken (the verdict then warns); `check_data=False` skips the historical-farm request."""
    return await Preflight(settings or IBKRSettings(), retry_client_id=retry_client_id,
                           check_data=check_data).run()


def diagnose(settings: IBKRSettings | None = None, *, retry_client_id: bool = False,
             check_data: bool = True) -> Diagnosis:
    """Synchronous `diagnose_async`, for scripts, the CLI and synchronous Prefect tasks."""
    return asyncio.run(diagnose_async(settings, retry_client_id=retry_client_id, check_data=check_data))
