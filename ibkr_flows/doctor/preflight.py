"""The connectivity preflight: raw probe first, then the real client, then one tiny historical request.

Order matters: the raw probe (doctor.probe) names the failing layer in milliseconds; only once the socket layers
are fine does the real `ib_async` client connect (read-only) and ask the historical farm for a week of daily bars
(doctor.data_check), which proves what a pipeline needs and nothing more. Every wait comes out of one
`timing.Budget`: by default the verdict is in within 1.5 s, `patient=True` waits the configured timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Iterator

from ib_async import IB, ConnectionStats

from ibkr_flows.doctor.data_check import DataCheck
from ibkr_flows.doctor.diagnosis import Diagnosis, Evidence, FailureClass, Status
from ibkr_flows.doctor.probe import Outcome, ProbeResult, probe, tcp_open
from ibkr_flows.doctor.remediation import remediation
from ibkr_flows.doctor.timing import ID_RELEASE_WAIT_S, Budget
from ibkr_flows.doctor.verdict import Verdict
from ibkr_flows.ib.codes import FARM_NOTICES, ErrorCode
from ibkr_flows.ib.ports import LIVE_PORTS, WELL_KNOWN_PORTS, port_label
from ibkr_flows.settings import IBKRSettings

PORT_SCAN_TIMEOUT_S = 0.5
"""A closed port refuses at once; only a firewalled host makes the scan wait this long."""
FREE_ID_CANDIDATES = 10
MIN_CONNECT_S = 0.01
"""ib_async reads a connect timeout of 0 as 'wait forever': a spent budget still gets a bounded attempt."""
_WATCHED = FARM_NOTICES | {ErrorCode.CONNECTIVITY_LOST}

_OUTCOME_CLASS = {
    Outcome.UNREACHABLE: FailureClass.HOST_UNREACHABLE,
    Outcome.CLOSED_AFTER_ACCEPT: FailureClass.CONNECTION_REJECTED,
    Outcome.CLOSED_DURING_HANDSHAKE: FailureClass.CONNECTION_DROPPED,
    Outcome.SILENT_AFTER_ACCEPT: FailureClass.HANDSHAKE_SILENT,
    Outcome.SLOW_HANDSHAKE: FailureClass.SLOW,
    Outcome.NOT_TWS: FailureClass.NOT_TWS,
    Outcome.HTTP_SERVER: FailureClass.NOT_TWS,
    Outcome.PROTOCOL_ERROR: FailureClass.NOT_TWS,
    Outcome.VERSION_TOO_OLD: FailureClass.NOT_TWS,
    Outcome.SILENT_AFTER_VERSION: FailureClass.API_NOT_READY,
    Outcome.EMPTY_ACCOUNTS: FailureClass.API_NOT_READY,
}
_BOUNDED_OUTCOMES = frozenset({Outcome.SILENT_AFTER_ACCEPT, Outcome.SLOW_HANDSHAKE, Outcome.SILENT_AFTER_VERSION,
                               Outcome.EMPTY_ACCOUNTS})
"""Verdicts reached by a wait running out: the quick mode says how to wait longer."""
_OUTCOME_SUMMARY = {
    Outcome.UNREACHABLE: "Cannot reach {host}:{port}.",
    Outcome.CLOSED_AFTER_ACCEPT: "TWS at {host}:{port} accepted the connection and closed it at once.",
    Outcome.CLOSED_DURING_HANDSHAKE: "TWS at {host}:{port} closed the connection during the handshake after "
                                     "{messages} message(s), before the API session was usable.",
    Outcome.SILENT_AFTER_ACCEPT: "TWS at {host}:{port} accepted the connection but never answered the API "
                                 "handshake (an 'accept incoming connection' dialog, or TWS not ready).",
    Outcome.SLOW_HANDSHAKE: "TWS at {host}:{port} answered the API handshake only after {greeting:.2f} s (a "
                            "healthy TWS answers in milliseconds): slow, not silent, and too slow to finish the "
                            "diagnosis in time.",
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

    def __init__(self, settings: IBKRSettings, *, retry_client_id: bool, check_data: bool, patient: bool) -> None:
        self.settings = settings
        self.retry_client_id = retry_client_id
        self.check_data = check_data
        self.budget = Budget.for_run(patient)
        self.started = self.budget.started
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
        except Verdict as verdict:
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
            self.server_version = result.server_version
            bounded = result.outcome in _BOUNDED_OUTCOMES
            raise Verdict(_OUTCOME_CLASS[result.outcome], _OUTCOME_SUMMARY[result.outcome].format(
                host=s.host, port=s.port, version=result.server_version, received=result.received,
                messages=result.messages, greeting=result.greeting_s or 0.0)
                + (self.budget.patience_hint() if bounded else ""))
        self.server_version = result.server_version
        self.accounts = result.accounts
        self.notices = list(result.notices)
        if result.read_only:
            self.warnings.append((FailureClass.READ_ONLY_API, "TWS has 'Read-Only API' on; fine for this "
                                  "project, which only reads data."))
        self._check_connectivity_notices("start api")

    async def _probe(self, client_id: int, *, check_read_only: bool) -> ProbeResult:
        s = self.settings
        within = None if self.budget.patient else self.budget.left()
        result = await probe(s.host, s.port, client_id, self.budget.step_s(s), check_read_only=check_read_only,
                             within=within)
        offset = (time.perf_counter() - self.started) * 1000 - (result.steps[-1][2] if result.steps else 0)
        for step, observation, ms in result.steps:
            self.evidence.append(Evidence(f"{step} (id {client_id})" if step == "start api" else step,
                                          observation, offset + ms))
        return result

    async def _refused(self) -> None:
        s = self.settings
        others = [p for p in WELL_KNOWN_PORTS if p != s.port]
        wait = self.budget.wait(PORT_SCAN_TIMEOUT_S)
        found = await asyncio.gather(*(tcp_open(s.host, p, wait) for p in others))
        self.open_ports = [p for p, is_open in zip(others, found, strict=True) if is_open]
        self.note("port scan", "open: " + (", ".join(f"{p} ({port_label(p)})" for p in self.open_ports)
                                           if self.open_ports else "none of " + ", ".join(map(str, others))))
        if self.open_ports:
            raise Verdict(FailureClass.WRONG_PORT,
                          f"Nothing listens on {s.host}:{s.port} ({port_label(s.port)}), but port "
                          f"{self.open_ports[0]} ({port_label(self.open_ports[0])}) is open: wrong port.")
        raise Verdict(FailureClass.NOT_LISTENING,
                      f"Nothing listens on {s.host}:{s.port} ({port_label(s.port)}): TWS / IB Gateway is not "
                      "running, its API socket is disabled, or it uses another port.")

    async def _client_id_in_use(self) -> ProbeResult:
        taken = self.client_id
        for candidate in range(taken + 1, taken + 1 + FREE_ID_CANDIDATES):
            if not self.budget.left():
                self.note("free client id", f"no time left to probe client id {candidate} and beyond")
                break
            result = await self._probe(candidate, check_read_only=True)
            if result.outcome is Outcome.READY:
                self.suggested_client_id = candidate
                break
        if self.suggested_client_id is None or not self.retry_client_id:
            free = f"; client id {self.suggested_client_id} is free" if self.suggested_client_id else ""
            raise Verdict(FailureClass.CLIENT_ID_IN_USE,
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
                seen = len(errors)
                check = DataCheck(ib, self.settings, self.budget, note=self.note,
                                  notices=lambda: self.notices + [(code, text) for _, code, text in errors[seen:]],
                                  connectivity=lambda what: self._check_connectivity_notices(what, errors))
                try:
                    found = await check.run()
                    self.warnings[:0] = [w for w in found if w[0] is FailureClass.SLOW]  # outranks read-only
                    self.warnings += [w for w in found if w[0] is not FailureClass.SLOW]
                finally:
                    self.notices += [(code, text) for _, code, text in errors[seen:] if code in _WATCHED]
        finally:
            ib.disconnect()

    async def _connect(self, ib: IB, errors: list[tuple[int, int, str]]) -> None:
        s = self.settings
        with _peer_drops(ib) as drops:
            for attempt in range(2):
                timeout = max(self.budget.connect_s(s), MIN_CONNECT_S)
                connecting = ib.connectAsync(s.host, s.port, self.client_id, timeout=timeout, readonly=True)
                try:
                    # ib_async's timeout bounds each of its phases; the budget bounds them together
                    await (connecting if self.budget.patient else asyncio.wait_for(connecting, timeout))
                except (TimeoutError, ConnectionError, OSError) as exc:
                    id_refused = any(code == ErrorCode.CLIENT_ID_IN_USE for _, code, _ in errors)
                    if id_refused and attempt == 0 and self.budget.left():
                        # TWS may not have released the id of the probe's socket yet; give it a moment once.
                        errors.clear()
                        drops.clear()
                        await asyncio.sleep(self.budget.wait(ID_RELEASE_WAIT_S, keep=MIN_CONNECT_S * 10))
                        continue
                    self.note("ib_async connect", f"{type(exc).__name__}: {exc or f'timed out after {timeout:.2f} s'}"
                                                  f"; errors: {errors}")
                    if drops and not id_refused:
                        raise Verdict(FailureClass.CONNECTION_DROPPED, _dropped_summary(s.host, s.port, drops[0])
                                      ) from exc
                    if isinstance(exc, TimeoutError) and not id_refused and not self.budget.patient:
                        raise Verdict(FailureClass.SLOW, _slow_start_summary(s.host, s.port, timeout)
                                      + self.budget.patience_hint()) from exc
                    raise Verdict(
                        FailureClass.CLIENT_ID_IN_USE if id_refused else FailureClass.API_NOT_READY,
                        f"The raw handshake succeeded but ib_async could not connect to {s.host}:{s.port} "
                        f"({type(exc).__name__}).",
                    ) from exc
                break
        self.notices += [(code, text) for _, code, text in errors if code in _WATCHED]
        self.note("ib_async connect", f"connected read-only as client {self.client_id}, server version "
                                      f"{ib.client.serverVersion()}")
        self._check_connectivity_notices("ib_async connect")

    def _check_connectivity_notices(self, step: str, errors: list[tuple[int, int, str]] | None = None) -> None:
        codes = [code for code, _ in self.notices] + [code for _, code, _ in errors or []]
        if ErrorCode.CONNECTIVITY_LOST in codes:
            self.note(step, "error 1100: connectivity between IB and TWS has been lost")
            raise Verdict(FailureClass.IB_CONNECTIVITY_LOST,
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


def _slow_start_summary(host: str, port: int, waited: float) -> str:
    """The raw probe just had every handshake answer, so a session start that outlasts the wait is slow."""
    return (f"TWS at {host}:{port} answered the raw API handshake, but ib_async's session start (its account, "
            f"position and execution requests) did not finish within {waited:.2f} s: slow, not down.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def diagnose_async(settings: IBKRSettings | None = None, *, retry_client_id: bool = False,
                         check_data: bool = True, patient: bool = False) -> Diagnosis:
    """Diagnose TWS connectivity. `retry_client_id` continues with the next free id when the configured one is
    taken (the verdict then warns); `check_data=False` skips the historical-farm request. The verdict comes within
    `timing.QUICK_BUDGET_S` (1.5 s); `patient=True` waits the settings' timeouts instead, to measure a slow TWS."""
    return await Preflight(settings or IBKRSettings(), retry_client_id=retry_client_id,
                           check_data=check_data, patient=patient).run()


def diagnose(settings: IBKRSettings | None = None, *, retry_client_id: bool = False,
             check_data: bool = True, patient: bool = False) -> Diagnosis:
    """Synchronous `diagnose_async`, for scripts, the CLI and synchronous Prefect tasks."""
    return asyncio.run(diagnose_async(settings, retry_client_id=retry_client_id, check_data=check_data,
                                      patient=patient))
