"""What a peer that is not (or no longer) speaking the TWS API sent us, made fit to show a user.

A verdict quotes the bytes that broke the handshake so the user can recognise the program on the port (an HTTP
status line, a banner, a TLS alert). Those bytes are arbitrary: they go into terminals, JSON, Markdown artifacts
and alerts, so they are shown as a short Python bytes literal: printable ASCII only, no control characters.
"""

from __future__ import annotations

EXCERPT_CHARS = 64
"""Enough to recognise a banner or a status line, short enough for one evidence row."""
HTTP_NUDGE = b" / HTTP/1.0\r\n\r\n"
"""Sent after a silent greeting: completes `API\\0v157..178` into a (malformed) HTTP/1.0 request line, so an HTTP
server that waits for a full request answers it with a status line. A TWS behind an accept dialog has not read
anything yet; the probe closes the socket before it would."""
_HTTP_REPLY = b"HTTP/"


def excerpt(data: bytes, limit: int = EXCERPT_CHARS) -> str:
    """`data`'s first bytes as a printable literal of at most `limit` characters (an escaped byte takes up to
    four), followed by `...` when it was cut."""
    shown = min(len(data), limit)
    while shown and len(repr(bytes(data[:shown]))) > limit:
        shown -= 1
    text = repr(bytes(data[:shown]))
    return text if shown == len(data) else f"{text}..."


def is_http_reply(data: bytes) -> bool:
    """An HTTP/1.x server's answer starts with its status line, `HTTP/1.1 400 Bad Request` and the like."""
    return bytes(data[: len(_HTTP_REPLY)]) == _HTTP_REPLY
