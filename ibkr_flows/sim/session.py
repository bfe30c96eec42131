"""One client connection: the API handshake, then the framing loop that hands each request to its handler.

The per-socket protocol lives here, apart from the server (which only accepts and tracks connections) and from
the handlers (which only answer requests), so the order of bytes a client sees can be read in one place: the
negotiated server version (every message is sent in its format), the handshake deadline, and TWS's 320 for a
request it cannot read (the connection stays up: frames are length-prefixed, so the next one is intact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import PROTOCOL_CLIENT_MESSAGES, ServerMessage, api_name
from ibkr_flows.ib.wire import API_PREFIX, FrameReader, ProtocolError, encode_frame, parse_version_range
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.faults import ConnectFault
from ibkr_flows.sim.handlers import HANDLERS, ORDER_MESSAGES, orders
from ibkr_flows.sim.versions import SERVER_VERSION, for_version, negotiate

if TYPE_CHECKING:
    from ibkr_flows.sim.server import TWSSimulator

log = logging.getLogger("ibkr.sim")

class Session:
    """One client connection of `sim`; handlers answer through `send` and run slow work through `spawn`."""

    def __init__(self, sim: TWSSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader()
        self.client_id: int | None = None
        self.server_version = SERVER_VERSION
        """The version negotiated at the handshake; `send` writes every message in its format."""
        self.market_data_type = 1
        """What reqMarketDataType last asked for: 1 live (the default), 2 frozen, 3 delayed, 4 delayed frozen."""
        self.ready = False
        self.messages_received = 0
        self.pending: dict[int, asyncio.Task[None]] = {}

    # -- transport -------------------------------------------------------------------------------------------

    def send(self, fields: list[object]) -> None:
        if self.writer.is_closing():
            return
        if fields and fields[0] == ServerMessage.ERR_MSG:
            self.sim.counters.errors_sent[int(fields[3])] += 1  # type: ignore[call-overload]
        self._write(encode_frame(for_version(fields, self.server_version)))

    def send_frame(self, frame: bytes) -> None:
        """Send an already encoded frame (a long answer encoded in slices; errors go through `send`, which counts
        them)."""
        if not self.writer.is_closing():
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        self.sim.counters.bytes_sent += len(frame)
        self.writer.write(frame)

    def close(self) -> None:
        for task in self.pending.values():
            task.cancel()
        self.pending.clear()
        if not self.writer.is_closing():
            self.writer.close()

    async def _read(self) -> bytes:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("client closed the connection")
        self.sim.counters.bytes_received += len(data)
        return data

    # -- protocol --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        fault = self.sim.faults.connect
        if fault is ConnectFault.ACCEPT_CLOSE:
            return
        if fault is ConnectFault.ACCEPT_SILENCE:
            await self._swallow()
            return
        deadline = asyncio.get_running_loop().time() + self.sim.handshake_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._handshake()
        except TimeoutError:
            log.info("dropping a client that sent no complete API greeting within %.1f s", self.sim.handshake_timeout)
            return
        if self.sim.faults.connect is ConnectFault.VERSION_SILENCE:
            await self._swallow()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._serve(until=lambda: self.client_id is not None)
        except TimeoutError:
            log.info("dropping a client that sent no startApi within %.1f s", self.sim.handshake_timeout)
            return
        if not self.writer.is_closing():  # startApi refused (client id in use) closes the session
            await self._serve(until=lambda: False)

    async def _swallow(self) -> None:
        """Read and ignore until the client gives up: what a TWS behind a modal dialog looks like."""
        while True:
            await self._read()

    async def _serve(self, until: Callable[[], bool]) -> None:
        """Dispatch frames, those already buffered first, until `until()` holds or the session closes.

        Buffered frames come first because a client may send its greeting and startApi (or several requests) in
        one TCP write: waiting for more bytes before handling them would stall the session.
        """
        while True:
            for fields in self.frames.pop_frames():
                await self._dispatch(fields)
                if self.writer.is_closing():
                    return
            if until():
                return
            self.frames.append(await self._read())

    async def _handshake(self) -> None:
        """`API\\0`, the client's version range, then our version and connection time, or a silent close (as TWS
        closes on a range it does not share or cannot parse)."""
        while (prefix := self.frames.take_raw(len(API_PREFIX))) is None:
            self.frames.append(await self._read())
        if prefix != API_PREFIX:
            raise ProtocolError(f"expected the API greeting, got {prefix!r}")
        while (body := self.frames.take_raw_frame()) is None:
            self.frames.append(await self._read())
        client_min, client_max, _ = parse_version_range(body)
        version = negotiate(client_min, client_max)
        if version is None:
            raise ProtocolError(f"client versions {client_min}..{client_max} not supported")
        self.server_version = version
        now = datetime.now(self.sim.tws_zone)
        self._write(encode_frame([version, now.strftime("%Y%m%d %H:%M:%S ") + (now.tzname() or "EST")]))
        await self.writer.drain()

    async def _dispatch(self, fields: list[str]) -> None:
        if not fields:
            return
        self.messages_received += 1
        head = fields[0]
        msg_id = int(head) if head.isdigit() else -1
        name = orders.ORDER_CALLS.get(msg_id) or api_name(msg_id) if msg_id >= 0 else f"msg{head!r}"
        self.sim.counters.requests[name] += 1
        faults = self.sim.faults
        if msg_id not in PROTOCOL_CLIENT_MESSAGES:
            self.send(msg.error(msg.NO_REQUEST, msg.unknown_message_id(head)))
        elif faults.read_only and msg_id in ORDER_MESSAGES:
            self._refuse_read_only(msg_id, fields)
        elif (handler := HANDLERS.get(msg_id)) is not None:
            try:
                handler(self, fields)
            except (ValueError, IndexError) as exc:
                log.info("unreadable %s %s: %s", name, fields, exc)
                self.send(msg.error(msg.NO_REQUEST, msg.unreadable_request(msg_id, f"{type(exc).__name__}: {exc}")))
        else:
            log.debug("ignoring %s: %s", name, fields)
        if faults.drop_after_messages is not None and self.messages_received >= faults.drop_after_messages:
            log.info("dropping client %s after %d messages (fault)", self.client_id, self.messages_received)
            self.close()
            return
        await self.writer.drain()

    def _refuse_read_only(self, msg_id: int, fields: list[str]) -> None:
        """321 for an order request; placeOrder's refusal names its order id."""
        req_id = orders.order_id(fields, self.server_version) if msg_id == orders.PLACE_ORDER else msg.NO_REQUEST
        self.send(msg.error(req_id, msg.READ_ONLY))

    # -- data requests ---------------------------------------------------------------------------------------

    def spawn(self, req_id: int, work: Callable[[], Awaitable[None]], *, paced: bool = False) -> None:
        """Answer a data request in its own task so slow answers do not block the socket and cancels work.

        A paced request stays 'open' (IB's 50-open limit) until its task ends, however it ends.
        """

        async def answer() -> None:
            with contextlib.suppress(ConnectionError):
                if self.sim.faults.latency_seconds:
                    await asyncio.sleep(self.sim.faults.latency_seconds)
                await work()
                await self.writer.drain()

        task = asyncio.create_task(answer())
        self.pending[req_id] = task

        def finished(_: asyncio.Task[None]) -> None:
            if self.pending.get(req_id) is task:
                del self.pending[req_id]
            if paced:
                self.sim.pacing.open_requests -= 1

        task.add_done_callback(finished)

    def cancel(self, req_id: int) -> None:
        """The client's cancel: the answer's task stops and nothing more is sent for `req_id`."""
        task = self.pending.pop(req_id, None)
        if task is not None:
            task.cancel()
