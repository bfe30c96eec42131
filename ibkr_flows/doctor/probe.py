"""A raw-socket walk through the TWS handshake, one layer at a time.

ib_async reports every failure after the TCP connect as the same `TimeoutError`, after its full timeout. Speaking
the first three protocol steps ourselves tells the layers apart (refused / closed / silent / version only /
client id refused / ready) in milliseconds where the socket already knows the answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.message_ids import ClientMessage, ServerMessage
from ibkr_flows.ib.wire import FrameReader, ProtocolError, client_greeting, encode_frame

MIN_SERVER_VERSION = 157
"""ib_async 2.1's minimum; older TWS builds cannot be used."""
READY_NOTICE_WINDOW_S = 0.3
"""After the API is ready, how long to collect the farm notices TWS sends right behind nextValidId."""


class Outcome(StrEnum):
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    CLOSED_AFTER_ACCEPT = "closed-after-accept"
    SILENT_AFTER_ACCEPT = "silent-after-accept"
    NOT_TWS = "not-tws"
    VERSION_TOO_OLD = "version-too-old"
    CLOSED_AFTER_VERSION = "closed-after-version"
    SILENT_AFTER_VERSION = "silent-after-version"
    EMPTY_ACCOUNTS = "empty-accounts"
    CLIENT_ID_IN_USE = "client-id-in-use"
    READY = "ready"


@dataclass
class ProbeResult:
    outcome: Outcome
    steps: list[tuple[str, str, float]] = field(default_factory=list)
    """(step, observation, elapsed ms) in order."""
    server_version: int | None = None
    accounts: list[str] = field(default_factory=list)
    notices: list[tuple[int, str]] = field(default_factory=list)
    read_only: bool | None = None


class _Conversation:
    """One raw connection with a stopwatch; every observation is recorded as evidence."""

    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.started = time.perf_counter()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames = FrameReader()
        self.queue: deque[list[str]] = deque()

    def note(self, step: str, observation: str) -> None:
        self.result.steps.append((step, observation, (time.perf_counter() - self.started) * 1000))

    async def next_frame(self, timeout: float) -> list[str] | None:
        """The next frame, None on silence; raises EOFError when the peer closes."""
        assert self.reader is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.queue:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                return None
            except ConnectionResetError as exc:
                raise EOFError from exc
            if not data:
                raise EOFError
            self.queue.extend(self.frames.feed(data))
        return self.queue.popleft()

    def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()


async def tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def probe(host: str, port: int, client_id: int, timeout: float, *, check_read_only: bool = True
                ) -> ProbeResult:
    """Walk TCP connect -> greeting -> startApi -> (optionally) a read-only check, stopping at the first layer
    that fails. The socket is closed before returning so the client id is free for the real client."""
    result = ProbeResult(Outcome.READY)
    talk = _Conversation(result)
    try:
        result.outcome = await _walk(talk, host, port, client_id, timeout, check_read_only)
    finally:
        talk.close()
    return result


async def _walk(talk: _Conversation, host: str, port: int, client_id: int, timeout: float,
                check_read_only: bool) -> Outcome:
    try:
        talk.reader, talk.writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        talk.note("tcp connect", f"refused by {host}:{port} (nothing listens there)")
        return Outcome.REFUSED
    except socket.gaierror as exc:
        talk.note("tcp connect", f"cannot resolve host {host!r}: {exc.strerror}")
        return Outcome.UNREACHABLE
    except TimeoutError:
        talk.note("tcp connect", f"no answer from {host}:{port} within {timeout:.1f} s (dropped by a firewall?)")
        return Outcome.UNREACHABLE
    except OSError as exc:
        refused = "refused" in str(exc).lower()
        talk.note("tcp connect", f"{exc.strerror or exc}")
        return Outcome.REFUSED if refused else Outcome.UNREACHABLE
    talk.note("tcp connect", "accepted")

    talk.writer.write(client_greeting())
    try:
        frame = await talk.next_frame(timeout)
    except EOFError:
        talk.note("handshake", "connection closed by the server before it sent anything")
        return Outcome.CLOSED_AFTER_ACCEPT
    except ProtocolError as exc:
        talk.note("handshake", f"reply is not a TWS frame: {exc}")
        return Outcome.NOT_TWS
    if frame is None:
        talk.note("handshake", f"no reply to the API greeting within {timeout:.1f} s")
        return Outcome.SILENT_AFTER_ACCEPT
    if len(frame) != 2 or not frame[0].isdigit():
        talk.note("handshake", f"unexpected reply {frame[:3]!r}: not the TWS API")
        return Outcome.NOT_TWS
    talk.result.server_version = int(frame[0])
    talk.note("handshake", f"server version {frame[0]}, connection time {frame[1]!r}")
    if talk.result.server_version < MIN_SERVER_VERSION:
        return Outcome.VERSION_TOO_OLD

    talk.writer.write(encode_frame([ClientMessage.START_API, 2, client_id, ""]))
    return await _await_ready(talk, timeout, check_read_only)


async def _await_ready(talk: _Conversation, timeout: float, check_read_only: bool) -> Outcome:
    result = talk.result
    have_id = have_accounts = False
    while not (have_id and have_accounts):
        try:
            frame = await talk.next_frame(timeout)
        except EOFError:
            if any(code == ErrorCode.CLIENT_ID_IN_USE for code, _ in result.notices):
                talk.note("start api", "client id refused (326), connection closed")
                return Outcome.CLIENT_ID_IN_USE
            talk.note("start api", "connection closed by the server after the version exchange")
            return Outcome.CLOSED_AFTER_VERSION
        if frame is None:
            if have_id and not result.accounts:
                talk.note("start api", "managed accounts list is empty; the API never becomes ready")
                return Outcome.EMPTY_ACCOUNTS
            talk.note("start api", f"no account list / next order id within {timeout:.1f} s")
            return Outcome.SILENT_AFTER_VERSION
        match [_message_id(frame), *frame[1:]]:
            case [ServerMessage.MANAGED_ACCTS, _, accounts]:
                result.accounts = [a for a in accounts.split(",") if a]
                have_accounts = bool(result.accounts)
            case [ServerMessage.NEXT_VALID_ID, _, _]:
                have_id = True
            case [ServerMessage.ERR_MSG, _, _, code, text, *_]:
                result.notices.append((int(code), text))
                if code == str(ErrorCode.CLIENT_ID_IN_USE):
                    talk.note("start api", f"error 326: {text}")
    talk.note("start api", f"API ready; accounts {', '.join(result.accounts)}")
    await _collect_notices(talk, READY_NOTICE_WINDOW_S)
    if check_read_only:
        result.read_only = await _read_only(talk, timeout)
    return Outcome.READY


def _message_id(frame: list[str]) -> int | None:
    """A frame's message id; None for a first field that is not a number (a peer that is not TWS)."""
    return int(frame[0]) if frame and frame[0].isdigit() else None


async def _collect_notices(talk: _Conversation, window: float) -> None:
    deadline = asyncio.get_running_loop().time() + window
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frame = await talk.next_frame(remaining)
        except EOFError:
            return
        if frame is None:
            return
        if _message_id(frame) == ServerMessage.ERR_MSG and len(frame) >= 5:
            talk.result.notices.append((int(frame[3]), frame[4]))


async def _read_only(talk: _Conversation, timeout: float) -> bool | None:
    """Ask for open orders (a read request, it places nothing): TWS answers 321 when 'Read-Only API' is on."""
    assert talk.writer is not None
    talk.writer.write(encode_frame([ClientMessage.REQ_OPEN_ORDERS, 1]))
    deadline = asyncio.get_running_loop().time() + timeout
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frame = await talk.next_frame(remaining)
        except EOFError:
            return None
        if frame is None:
            break
        if _message_id(frame) == ServerMessage.OPEN_ORDER_END:
            talk.note("read-only check", "open orders answered: Read-Only API is off")
            return False
        if (_message_id(frame) == ServerMessage.ERR_MSG and len(frame) >= 5
                and frame[3] == str(ErrorCode.REQUEST_INVALID)):
            talk.note("read-only check", f"error 321: {frame[4]}")
            return True
    talk.note("read-only check", "no answer to the open-orders request")
    return None
