"""One client connection: the API handshake, then the framing loop that hands each request to its handler.

The per-socket protocol lives here, apart from the server (which only accepts and tracks connections) and from
the handlers (which only answer requests), so the order of bytes a client sees can be read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ibkr_flows.ib.message_ids import ClientMessage, ServerMessage, api_name
from ibkr_flows.ib.wire import API_PREFIX, FrameReader, ProtocolError, encode_frame, parse_version_range
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.faults import ConnectFault
from ibkr_flows.sim.handlers import HANDLERS, ORDER_MESSAGES

if TYPE_CHECKING:
    from ibkr_flows.sim.server import TWSSimulator

log = logging.getLogger("ibkr.sim")

SERVER_VERSION = 178
"""ib_async 2.1's maximum: 194+ changes ERR_MSG, 196+ adds HISTORICAL_DATA_END, 201+ is protobuf."""


class Session:
    """One client connection of `sim`; handlers answer through `send` and run slow work through `spawn`."""

    def __init__(self, sim: TWSSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader()
        self.client_id: int | None = None
        self.ready = False
        self.messages_received = 0
        self.pending: dict[int, asyncio.Task[None]] = {}

    # -- transport -------------------------------------------------------------------------------------------

    def send(self, fields: list[object]) -> None:
        if self.writer.is_closing():
            return
        frame = encode_frame(fields)
        self.sim.counters.bytes_sent += len(frame)
        if fields and fields[0] == ServerMessage.ERR_MSG:
            self.sim.counters.errors_sent[int(fields[3])] += 1  # type: ignore[call-overload]
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
        await self._handshake()
        if self.sim.faults.connect is ConnectFault.VERSION_SILENCE:
            await self._swallow()
            return
        while True:
            for fields in self.frames.feed(await self._read()):
                await self._dispatch(fields)
                if self.writer.is_closing():
                    return

    async def _swallow(self) -> None:
        """Read and ignore until the client gives up: what a TWS behind a modal dialog looks like."""
        while True:
            await self._read()

    async def _handshake(self) -> None:
        while (prefix := self.frames.take_raw(len(API_PREFIX))) is None:
            self.frames.append(await self._read())
        if prefix != API_PREFIX:
            raise ProtocolError(f"expected the API greeting, got {prefix!r}")
        while (body := self.frames.take_raw_frame()) is None:
            self.frames.append(await self._read())
        _, client_max, _ = parse_version_range(body)
        version = min(client_max, SERVER_VERSION)
        now = datetime.now(self.sim.tws_zone)
        self.send([version, now.strftime("%Y%m%d %H:%M:%S ") + (now.tzname() or "EST")])
        await self.writer.drain()

    async def _dispatch(self, fields: list[str]) -> None:
        if not fields:
            return
        self.messages_received += 1
        msg_id = int(fields[0])
        name = api_name(msg_id)
        self.sim.counters.requests[name] += 1
        faults = self.sim.faults
        if faults.read_only and msg_id in ORDER_MESSAGES:
            req_id = int(fields[2]) if msg_id == ClientMessage.PLACE_ORDER else msg.NO_REQUEST
            self.send(msg.error(req_id, msg.READ_ONLY))
        else:
            handler = HANDLERS.get(msg_id)
            if handler is not None:
                handler(self, fields)
            else:
                log.debug("ignoring %s: %s", name, fields)
        if faults.drop_after_messages is not None and self.messages_received >= faults.drop_after_messages:
            log.info("dropping client %s after %d messages (fault)", self.client_id, self.messages_received)
            self.close()
            return
        await self.writer.drain()

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
