"""TWS API framing: 4-byte big-endian length prefix, then NUL-terminated ASCII fields.

Shared by the simulator and the doctor's raw-socket probe so that both speak byte-for-byte what a real TWS and
`ib_async` exchange. TCP delivers frames split across reads or several per read;
`FrameReader` absorbs both.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

API_PREFIX = b"API\0"
"""The only unframed bytes in the protocol: the client's greeting before its version-range frame."""

_LENGTH = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024
"""TWS refuses larger messages; a length beyond this means the peer is not speaking the TWS protocol."""


class ProtocolError(ValueError):
    """The peer sent bytes that are not a valid TWS API frame."""


def encode_field(value: object) -> str:
    """Render one field the way TWS does: bools as 1/0, None as empty, floats via str()."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def encode_frame(fields: Iterable[object]) -> bytes:
    payload = "".join(encode_field(f) + "\0" for f in fields).encode("ascii", errors="backslashreplace")
    return _LENGTH.pack(len(payload)) + payload


def encode_payload(payload: bytes) -> bytes:
    """Frame an already-built payload (the client's `v157..178` greeting is framed without field NULs)."""
    return _LENGTH.pack(len(payload)) + payload


def client_greeting(min_version: int = 157, max_version: int = 178, options: str = "") -> bytes:
    """The bytes a client sends first: `API\\0` plus one frame holding `v<min>..<max>[ <options>]`."""
    body = f"v{min_version}..{max_version}" + (f" {options}" if options else "")
    return API_PREFIX + encode_payload(body.encode("ascii"))


class FrameReader:
    """Incremental decoder: feed raw bytes, get complete frames as field lists."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[str]]:
        self.append(data)
        return self.pop_frames()

    def append(self, data: bytes) -> None:
        """Buffer bytes without decoding, for the handshake whose first bytes are not a frame."""
        self._buffer += data

    def pop_frames(self) -> list[list[str]]:
        frames: list[list[str]] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME} bytes")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            frames.append(decode_payload(payload))
        return frames

    def take_raw(self, count: int) -> bytes | None:
        """Consume `count` unframed bytes (the `API\\0` prefix) once they have arrived."""
        if len(self._buffer) < count:
            return None
        raw = bytes(self._buffer[:count])
        del self._buffer[:count]
        return raw

    def take_raw_frame(self) -> bytes | None:
        """Consume one frame's payload without splitting it into fields (the greeting's version range)."""
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME} bytes")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return payload


def decode_payload(payload: bytes) -> list[str]:
    fields = payload.decode("ascii", errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


_VERSION_RANGE = re.compile(r"v([0-9]{1,9})(?:\.\.([0-9]{1,9}))?")


def parse_version_range(body: bytes) -> tuple[int, int, str]:
    """Parse the greeting body `v157..178 +PACEAPI` into (min, max, options).

    Only what IB's clients send is a range: `v<min>..<max>` (or a single `v<n>`) with plain decimal numbers and
    min <= max. Anything else (`v10..v5`, negative or non-numeric bounds, a reversed range) raises ProtocolError:
    TWS closes such a connection without an answer.
    """
    text = body.decode("ascii", errors="replace").strip()
    head, _, options = text.partition(" ")
    match = _VERSION_RANGE.fullmatch(head)
    if match is None:
        raise ProtocolError(f"expected a version range like 'v157..178', got {text!r}")
    min_version = int(match[1])
    max_version = int(match[2]) if match[2] is not None else min_version
    if min_version > max_version:
        raise ProtocolError(f"reversed version range {text!r}")
    return min_version, max_version, options.strip()
