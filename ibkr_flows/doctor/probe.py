"""A raw-socket walk through the TWS handshake, one layer at a time.

ib_async reports every failure after the TCP connect as the same `TimeoutError`, after its full timeout. Speaking
the first three protocol steps ourselves tells the layers apart (refused / closed / silent / version only /
client id refused / ready) in milliseconds where the socket already knows the answer.

Whatever the peer sends, the probe ends with an `Outcome` within `probe_budget(timeout)` (and by `within`
seconds when given): it is the doctor's first contact with an unknown program on a port (a web server, a
half-dead gateway), so bytes that are not the TWS API are a verdict, quoted as evidence, never an exception.

No step waits a fixed time once it has its answer: the farm notices TWS sends right behind nextValidId are read
while the open-orders request (sent at once) is answered, since TWS answers it after them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from ibkr_flows.doctor.peer import HTTP_NUDGE, excerpt, is_http_reply
from ibkr_flows.ib.codes import ErrorCode
from ibkr_flows.ib.message_ids import ClientMessage, ServerMessage
from ibkr_flows.ib.wire import FrameReader, ProtocolError, client_greeting, decode_payload, encode_frame

MIN_SERVER_VERSION = 157
"""ib_async 2.1's minimum; older TWS builds cannot be used."""
HTTP_NUDGE_WINDOW_S = 0.3
"""After a silent greeting, how long an HTTP server gets to answer `HTTP_NUDGE` at most (a local one answers in
a millisecond, a remote one in a round trip)."""
_FRAME_HEADER = 4
"""The wire's big-endian length prefix in front of every frame."""
_HEAD_BYTES = 256
"""How much of the stream's start to keep for the verdict (an excerpt shows less)."""
_MAX_NUMBER_DIGITS = 10
"""TWS's numbers are 32-bit; a longer digit string is not a TWS field (and int() refuses > 4300 digits)."""


class Outcome(StrEnum):
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    CLOSED_AFTER_ACCEPT = "closed-after-accept"
    SILENT_AFTER_ACCEPT = "silent-after-accept"
    SLOW_HANDSHAKE = "slow-handshake"
    """The version reply came, but only after the greeting's deadline: a TWS that answers slowly, not silence."""
    NOT_TWS = "not-tws"
    HTTP_SERVER = "http-server"
    VERSION_TOO_OLD = "version-too-old"
    PROTOCOL_ERROR = "protocol-error"
    """It answered the version handshake, then sent bytes no TWS sends."""
    CLOSED_DURING_HANDSHAKE = "closed-during-handshake"
    """It answered the version handshake, then closed before the session was usable (without 326)."""
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
    messages: int = 0
    """Frames the server sent, its version included: how far a dropped handshake got."""
    received: str | None = None
    """A printable excerpt of the bytes that were not the TWS API (NOT_TWS, HTTP_SERVER, PROTOCOL_ERROR)."""
    greeting_s: float | None = None
    """Seconds from sending the API greeting to the version reply: the handshake's measured latency."""


def probe_budget(timeout: float) -> float:
    """The longest `probe` takes: four waits bounded by `timeout` (TCP connect, greeting, startApi, read-only
    check); the HTTP nudge only follows a silent greeting, which ends the walk after at most three."""
    return 4 * timeout


class _Garbage(Exception):
    """The peer sent bytes no TWS sends; carries them so the verdict can quote them."""

    def __init__(self, what: str, data: bytes) -> None:
        super().__init__(what)
        self.what = what
        self.data = data


class _Conversation:
    """One raw connection with a stopwatch; every observation is recorded as evidence."""

    def __init__(self, result: ProbeResult, within: float | None) -> None:
        self.result = result
        self.started = time.perf_counter()
        self.end = None if within is None else asyncio.get_running_loop().time() + within
        """Loop time by which the whole walk ends, whatever each step's own timeout says."""
        self.step = "tcp connect"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames = FrameReader()
        self.unparsed = bytearray()
        """The bytes `frames` holds: what to quote when they turn out not to be a frame."""
        self.head = b""
        """The first bytes the server sent: what to quote when it never spoke TWS at all."""
        self.last_payload = b""
        self.queue: deque[tuple[list[str], bytes]] = deque()
        self.garbage: _Garbage | None = None
        """Bytes that cannot be a frame, raised once the frames before them have been read."""

    def note(self, observation: str) -> None:
        self.result.steps.append((self.step, observation, (time.perf_counter() - self.started) * 1000))

    def deadline(self, timeout: float) -> float:
        """Loop time at which a wait of `timeout` seconds gives up (earlier when the walk's `end` comes first)."""
        at = asyncio.get_running_loop().time() + timeout
        return at if self.end is None else min(at, self.end)

    def left(self, timeout: float) -> float:
        return max(0.0, self.deadline(timeout) - asyncio.get_running_loop().time())

    async def next_frame(self, deadline: float) -> list[str] | None:
        """The next frame's fields, None once `deadline` (loop time) passes. Raises EOFError when the peer
        closes, `_Garbage` when its bytes cannot be a TWS frame."""
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        while not self.queue:
            if self.garbage is not None:
                raise self.garbage
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                return None
            except OSError as exc:  # reset or aborted: the peer is gone either way
                raise EOFError from exc
            if not data:
                raise EOFError
            self._take(data)
        fields, self.last_payload = self.queue.popleft()
        self.result.messages += 1
        return fields

    def _take(self, data: bytes) -> None:
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]
        self.unparsed += data
        self.frames.append(data)
        try:
            while (payload := self.frames.take_raw_frame()) is not None:
                del self.unparsed[: _FRAME_HEADER + len(payload)]
                self.queue.append((decode_payload(payload), payload))
        except ProtocolError as exc:
            self.garbage = _Garbage(f"bytes that are not a TWS frame ({exc})", bytes(self.unparsed))

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


async def probe(host: str, port: int, client_id: int, timeout: float, *, check_read_only: bool = True,
                within: float | None = None) -> ProbeResult:
    """Walk TCP connect -> greeting -> startApi -> (optionally) a read-only check, stopping at the first layer
    that fails; each step waits at most `timeout`, the whole walk at most `within` seconds. The socket is closed
    before returning so the client id is free for the real client."""
    result = ProbeResult(Outcome.READY)
    talk = _Conversation(result, within)
    try:
        result.outcome = await _walk(talk, host, port, client_id, timeout, check_read_only)
    except EOFError:
        result.outcome = _closed(talk)
    except _Garbage as garbage:
        result.outcome = _garbled(talk, garbage)
    finally:
        talk.close()
    return result


async def _walk(talk: _Conversation, host: str, port: int, client_id: int, timeout: float,
                check_read_only: bool) -> Outcome:
    try:
        wait = talk.left(timeout)
        talk.reader, talk.writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except ConnectionRefusedError:
        talk.note(f"refused by {host}:{port} (nothing listens there)")
        return Outcome.REFUSED
    except socket.gaierror as exc:
        talk.note(f"cannot resolve host {host!r}: {exc.strerror}")
        return Outcome.UNREACHABLE
    except ValueError as exc:  # IDNA refuses the name (a label over 63 characters): UnicodeError
        talk.note(f"invalid host name {host!r}: {exc}")
        return Outcome.UNREACHABLE
    except TimeoutError:
        talk.note(f"no answer from {host}:{port} within {wait:.1f} s (dropped by a firewall?)")
        return Outcome.UNREACHABLE
    except OSError as exc:
        refused = "refused" in str(exc).lower()
        talk.note(f"{exc.strerror or exc}")
        return Outcome.REFUSED if refused else Outcome.UNREACHABLE
    talk.note("accepted")

    talk.step = "handshake"
    talk.writer.write(client_greeting())
    greeted = time.perf_counter()
    wait = talk.left(timeout)
    frame = await talk.next_frame(talk.deadline(timeout))
    if frame is None and talk.head:
        raise _Garbage("an incomplete frame", talk.head)
    if frame is None:
        return await _silent_greeting(talk, wait, greeted)
    version = _version(talk, frame)
    talk.result.greeting_s = time.perf_counter() - greeted
    talk.note(f"server version {version}, connection time {frame[1]!r}")
    if version < MIN_SERVER_VERSION:
        return Outcome.VERSION_TOO_OLD

    talk.step = "start api"
    talk.writer.write(encode_frame([ClientMessage.START_API, 2, client_id, ""]))
    return await _await_ready(talk, timeout, check_read_only)


def _version(talk: _Conversation, frame: list[str]) -> int:
    """The server version of TWS's first frame `version, connection time`; anything else is not TWS."""
    version = _number(frame[0]) if len(frame) == 2 else None
    if version is None:
        raise _Garbage("a reply that is not the TWS version handshake", talk.last_payload)
    talk.result.server_version = version
    return version


async def _silent_greeting(talk: _Conversation, waited: float, greeted: float) -> Outcome:
    """Silence is a TWS behind its accept dialog, or an HTTP server waiting for a whole request: complete the
    greeting into an HTTP request line and see whether an HTTP status line comes back. A TWS version reply in
    that window is a slow TWS (its latency measured), not a silent one."""
    assert talk.writer is not None
    talk.note(f"no reply to the API greeting within {waited:.1f} s; sent an HTTP request line to tell an HTTP "
              "server from a waiting TWS")
    talk.writer.write(HTTP_NUDGE)
    try:
        late = await talk.next_frame(talk.deadline(min(waited, HTTP_NUDGE_WINDOW_S)))
    except EOFError:
        if talk.head:
            raise
        talk.note("connection closed without a reply")
        return Outcome.SILENT_AFTER_ACCEPT
    if late is None and talk.head:
        raise _Garbage("an incomplete frame", talk.head)
    if late is None:
        talk.note("still no reply")
        return Outcome.SILENT_AFTER_ACCEPT
    version = _version(talk, late)
    talk.result.greeting_s = time.perf_counter() - greeted
    talk.note(f"server version {version} arrived after {talk.result.greeting_s:.2f} s, past the {waited:.1f} s "
              "limit: TWS answers, slowly")
    return Outcome.SLOW_HANDSHAKE


def _closed(talk: _Conversation) -> Outcome:
    """The peer closed the connection: before a word, after a 326, or part-way through the session start."""
    result = talk.result
    if result.server_version is None and talk.head:
        return _garbled(talk, _Garbage("bytes that are not a TWS frame, then the connection closed", talk.head))
    if result.server_version is None:
        talk.note("connection closed by the server before it sent anything")
        return Outcome.CLOSED_AFTER_ACCEPT
    if any(code == ErrorCode.CLIENT_ID_IN_USE for code, _ in result.notices):
        talk.note("client id refused (326), connection closed")
        return Outcome.CLIENT_ID_IN_USE
    talk.note(f"connection closed by the server during the handshake, after {result.messages} message(s)")
    return Outcome.CLOSED_DURING_HANDSHAKE


def _garbled(talk: _Conversation, garbage: _Garbage) -> Outcome:
    result = talk.result
    if result.server_version is None and is_http_reply(talk.head):
        result.received = excerpt(talk.head)
        talk.note(f"an HTTP server answered: {result.received}")
        return Outcome.HTTP_SERVER
    result.received = excerpt(garbage.data)
    talk.note(f"received {garbage.what}: {result.received}")
    return Outcome.NOT_TWS if result.server_version is None else Outcome.PROTOCOL_ERROR


async def _await_ready(talk: _Conversation, timeout: float, check_read_only: bool) -> Outcome:
    result = talk.result
    wait = talk.left(timeout)
    deadline = talk.deadline(timeout)
    have_id = have_accounts = False
    while not (have_id and have_accounts):
        frame = await talk.next_frame(deadline)
        if frame is None:
            if have_id and not result.accounts:
                talk.note("managed accounts list is empty; the API never becomes ready")
                return Outcome.EMPTY_ACCOUNTS
            talk.note(f"no account list / next order id within {wait:.1f} s")
            return Outcome.SILENT_AFTER_VERSION
        match [_message_id(talk, frame), *frame[1:]]:
            case [ServerMessage.MANAGED_ACCTS, _, accounts]:
                result.accounts = [a for a in accounts.split(",") if a]
                have_accounts = bool(result.accounts)
            case [ServerMessage.NEXT_VALID_ID, _, _]:
                have_id = True
            case [ServerMessage.ERR_MSG, *_]:
                code, text = _error(talk, frame)
                if code == ErrorCode.CLIENT_ID_IN_USE:
                    talk.note(f"error 326: {text}")
    talk.note(f"API ready; accounts {', '.join(result.accounts)}")
    if check_read_only:
        result.read_only = await _read_only(talk, timeout)
    return Outcome.READY


def _number(text: str) -> int | None:
    """A TWS integer field, None for anything else (a peer that is not TWS)."""
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_NUMBER_DIGITS):
        return None
    return int(text)


def _message_id(talk: _Conversation, frame: list[str]) -> int:
    """A frame's message id; every TWS message starts with one."""
    msg_id = _number(frame[0]) if frame else None
    if msg_id is None:
        raise _Garbage("a message without a numeric message id", talk.last_payload)
    return msg_id


def _error(talk: _Conversation, frame: list[str]) -> tuple[int, str]:
    """(code, text) of an ERR_MSG frame `4, 2, id, code, text, ...`, recorded as a notice."""
    code = _number(frame[3]) if len(frame) >= 5 else None
    if code is None:
        raise _Garbage("an error message whose code is not a number", talk.last_payload)
    talk.result.notices.append((code, frame[4]))
    return code, frame[4]


async def _read_only(talk: _Conversation, timeout: float) -> bool | None:
    """Ask for open orders (a read request, it places nothing): TWS answers 321 when 'Read-Only API' is on. The
    farm notices TWS queued behind nextValidId arrive before that answer and are recorded on the way."""
    assert talk.writer is not None
    talk.step = "read-only check"
    talk.writer.write(encode_frame([ClientMessage.REQ_OPEN_ORDERS, 1]))
    deadline = talk.deadline(timeout)
    while (frame := await talk.next_frame(deadline)) is not None:
        msg_id = _message_id(talk, frame)
        if msg_id == ServerMessage.OPEN_ORDER_END:
            talk.note("open orders answered: Read-Only API is off")
            return False
        if msg_id == ServerMessage.ERR_MSG and _error(talk, frame)[0] == ErrorCode.REQUEST_INVALID:
            talk.note(f"error 321: {frame[4]}")
            return True
    talk.note("no answer to the open-orders request")
    return None
