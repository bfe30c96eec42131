"""The TWS simulator: a loopback asyncio server speaking the TWS API (server version 178).

It is meant to be indistinguishable from a real TWS / IB Gateway for the unmodified `ib_async` client, for the
requests this project makes (connect, contract details, head timestamp, historical bars), and to reproduce each
real failure mode on demand (see `faults.Faults`). Everything is answered from a `BarSource`, so the data is
deterministic and tests can compare what was stored with what was served.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import polars as pl

from ibkr_flows.ib.historical import BAR_SIZES, SMALL_BAR_MAX, InvalidDuration
from ibkr_flows.ib.message_ids import ORDER_MESSAGES, ClientMessage, ServerMessage, api_name
from ibkr_flows.ib.wire import API_PREFIX, FrameReader, ProtocolError, encode_frame, parse_version_range
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.bars import BarSource, InvalidBarSize, SyntheticBars, request_window
from ibkr_flows.sim.faults import BadBarKind, ConnectFault, Faults
from ibkr_flows.sim.pacing import PacedRequest, PacingMonitor
from ibkr_flows.sim.requests import (
    ContractDetailsRequest,
    HeadTimestampRequest,
    HistoricalRequest,
    format_bar_time,
    format_header_time,
    parse_end_datetime,
)
from ibkr_flows.sim.universe import Instrument, Universe, contract_data_fields

log = logging.getLogger("ibkr.sim")

SERVER_VERSION = 178
"""ib_async 2.1's maximum: 194+ changes ERR_MSG, 196+ adds HISTORICAL_DATA_END, 201+ is protobuf."""
MAX_BARS_PER_REPLY = 100_000
"""TWS refuses requests far beyond its duration steps with 'Time length exceed max.'; this is the simulator's
equivalent ceiling, generous enough for every duration/bar-size pair IB documents."""



@dataclass
class Counters:
    """What the simulator observed; tests read these instead of trusting the client's view."""

    connections_total: int = 0
    connections_open: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    errors_sent: Counter[int] = field(default_factory=Counter)
    pacing_violations: int = 0
    injected_bad_bars: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "requests": dict(self.requests),
            "errors_sent": {str(k): v for k, v in self.errors_sent.items()},
            "pacing_violations": self.pacing_violations,
            "injected_bad_bars": list(self.injected_bad_bars),
        }


class TWSSimulator:
    """One simulated TWS/Gateway. Create, `await start()`, point clients at `port`, `await stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Faults | None = None,
        bar_source: BarSource | None = None,
        universe: Universe | None = None,
        accounts: Iterable[str] = ("DU1234567",),
        tws_timezone: str = "America/New_York",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.faults = faults or Faults()
        self.bar_source = bar_source or SyntheticBars()
        self.universe = universe or Universe()
        self.accounts = list(accounts)
        self.tws_zone = ZoneInfo(tws_timezone)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.counters = Counters()
        self.pacing = PacingMonitor(time_scale=self.faults.time_scale)
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._order_ids = itertools.count(1)
        self.connectivity_lost = False
        self.forced_pacing_violations = 0
        """The next this-many paced requests get 162 whatever the rules say: another program on the same TWS login
        has used up the budget this client cannot see."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.faults.connect is not ConnectFault.NOT_LISTENING:
            await self._listen()
        elif not self.port:
            raise ValueError("a simulator that starts not listening needs an explicit port")

    async def stop(self) -> None:
        await self._unlisten()
        await self.drop_connections()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port or self._requested_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("TWS simulator listening on %s:%d", self.host, self.port)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- run-time control --------------------------------------------------------------------------------------

    async def set_faults(self, faults: Faults) -> None:
        """Replace the failure configuration; listening starts/stops to match `connect`."""
        self.faults = faults
        self.pacing.time_scale = faults.time_scale
        if faults.connect is ConnectFault.NOT_LISTENING:
            await self._unlisten()
        else:
            await self._listen()

    async def update_faults(self, **changes: Any) -> Faults:
        await self.set_faults(self.faults.updated(changes))
        return self.faults

    async def drop_connections(self) -> int:
        """Close every client socket at once, as a crashing or restarting TWS does. Returns how many."""
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        return len(sessions)

    async def restart(self, down_for: float) -> None:
        """TWS's nightly restart: every socket drops, nothing listens for `down_for` seconds, then it is back."""
        await self._unlisten()
        await self.drop_connections()
        await asyncio.sleep(down_for)
        if self.faults.connect is not ConnectFault.NOT_LISTENING:
            await self._listen()

    async def lose_connectivity(self, restore_after: float | None) -> None:
        """IB's servers become unreachable while TWS stays up: 1100 to every client, historical requests go
        unanswered, then (after `restore_after` seconds) 1102 'data maintained'."""
        self.connectivity_lost = True
        self._broadcast(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_LOST))
        if restore_after is not None:
            await asyncio.sleep(restore_after)
            self.restore_connectivity()

    def restore_connectivity(self) -> None:
        if self.connectivity_lost:
            self.connectivity_lost = False
            self._broadcast(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_RESTORED))

    def _broadcast(self, fields: list[object]) -> None:
        for session in list(self._sessions):
            if session.ready:
                session.send(fields)

    def snapshot(self) -> dict[str, Any]:
        data = self.counters.snapshot()
        data.update(
            listening=self.listening,
            port=self.port,
            faults=self.faults.to_json(),
            live_client_ids=sorted(s.client_id for s in self._sessions if s.ready and s.client_id is not None),
            pacing_violations_by_rule=dict(self.pacing.violations),
            connectivity_lost=self.connectivity_lost,
        )
        return data

    # -- connections -----------------------------------------------------------------------------------------

    def live_client_ids(self) -> set[int]:
        return {s.client_id for s in self._sessions if s.client_id is not None}

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections_total += 1
        self.counters.connections_open += 1
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, ProtocolError) as exc:
            log.info("connection ended: %s", exc)
        finally:
            self._sessions.discard(session)
            self.counters.connections_open -= 1
            session.close()

    def next_order_id(self) -> int:
        return next(self._order_ids)


class _Session:
    """One client connection: the handshake, then request dispatch."""

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
            handler = self._handlers.get(msg_id)
            if handler is not None:
                handler(self, fields)
            else:
                log.debug("ignoring %s: %s", name, fields)
        if faults.drop_after_messages is not None and self.messages_received >= faults.drop_after_messages:
            log.info("dropping client %s after %d messages (fault)", self.client_id, self.messages_received)
            self.close()
            return
        await self.writer.drain()

    # -- startup requests ------------------------------------------------------------------------------------

    def _start_api(self, fields: list[str]) -> None:
        client_id = int(fields[2])
        if client_id in self.sim.live_client_ids() or client_id in self.sim.faults.busy_client_ids:
            self.send(msg.error(msg.NO_REQUEST, msg.CLIENT_ID_IN_USE))
            self.close()
            return
        self.client_id = client_id
        accounts = "" if self.sim.faults.connect is ConnectFault.EMPTY_ACCOUNTS else ",".join(self.sim.accounts)
        self.send([ServerMessage.MANAGED_ACCTS, 1, accounts])
        self.send([ServerMessage.NEXT_VALID_ID, 1, self.sim.next_order_id()])
        for notice in msg.FARM_OK:
            if notice[0] == 2106 and self.sim.faults.farm_down:
                notice = msg.FARM_HMDS_BROKEN
            self.send(msg.error(msg.NO_REQUEST, notice))
        self.ready = True
        if self.sim.connectivity_lost:
            self.send(msg.error(msg.NO_REQUEST, msg.CONNECTIVITY_LOST))
        if self.sim.faults.drop_after_seconds is not None:
            asyncio.get_running_loop().call_later(self.sim.faults.drop_after_seconds, self._drop_on_time)

    def _drop_on_time(self) -> None:
        log.info("dropping client %s: its connection time is up (fault)", self.client_id)
        self.close()

    def _current_time(self, fields: list[str]) -> None:
        self.send([ServerMessage.CURRENT_TIME, 1, int(self.sim.clock().timestamp())])

    def _positions(self, fields: list[str]) -> None:
        self.send([ServerMessage.POSITION_END, 1])

    def _open_orders(self, fields: list[str]) -> None:
        self.send([ServerMessage.OPEN_ORDER_END, 1])

    def _completed_orders(self, fields: list[str]) -> None:
        self.send([ServerMessage.COMPLETED_ORDERS_END])

    def _account_updates(self, fields: list[str]) -> None:
        account = fields[3] if len(fields) > 3 else ""
        if fields[2] == "1":
            local_time = self.sim.clock().astimezone(self.sim.tws_zone)
            self.send([ServerMessage.ACCT_UPDATE_TIME, 1, local_time.strftime("%H:%M")])
            self.send([ServerMessage.ACCT_DOWNLOAD_END, 1, account])

    def _account_updates_multi(self, fields: list[str]) -> None:
        self.send([ServerMessage.ACCOUNT_UPDATE_MULTI_END, 1, int(fields[2])])

    def _executions(self, fields: list[str]) -> None:
        self.send([ServerMessage.EXECUTION_DATA_END, 1, int(fields[2])])

    def _account_summary(self, fields: list[str]) -> None:
        self.send([ServerMessage.ACCOUNT_SUMMARY_END, 1, int(fields[2])])

    def _req_ids(self, fields: list[str]) -> None:
        self.send([ServerMessage.NEXT_VALID_ID, 1, self.sim.next_order_id()])

    def _reject_order(self, fields: list[str]) -> None:
        """A client's placeOrder message (id 3) gets error 201: the simulator, like this project, never trades."""
        self.send(msg.error(int(fields[1]) if fields[1].isdigit() else msg.NO_REQUEST, msg.ORDER_REJECTED))

    # -- data requests ---------------------------------------------------------------------------------------

    def _spawn(self, req_id: int, work: Callable[[], Any], *, paced: bool = False) -> None:
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

    def _resolve(self, req_id: int, contract_symbol: str, con_id: int) -> Instrument | None:
        inst = self.sim.universe.resolve(contract_symbol, con_id)
        if inst is None:
            self.send(msg.error(req_id, msg.UNKNOWN_CONTRACT))
        return inst

    def _contract_details(self, fields: list[str]) -> None:
        req = ContractDetailsRequest.from_fields(fields)

        async def work() -> None:
            inst = self._resolve(req.req_id, req.contract.symbol, req.contract.con_id)
            if inst is not None:
                self.send(contract_data_fields(req.req_id, inst))
                self.send([ServerMessage.CONTRACT_DATA_END, 1, req.req_id])

        self._spawn(req.req_id, work)

    def _head_timestamp(self, fields: list[str]) -> None:
        req = HeadTimestampRequest.from_fields(fields)
        paced = PacedRequest(req.contract.con_id, req.contract.exchange, req.what_to_show, "head", "", "",
                             req.use_rth)
        if not self._admit_paced(req.req_id, paced, small_bars=True):
            return

        async def work() -> None:
            inst = self._resolve(req.req_id, req.contract.symbol, req.contract.con_id)
            if inst is None or self._refuse_data(req.req_id, inst, req.what_to_show):
                return
            ts = self.sim.bar_source.head_timestamp(inst.symbol, req.what_to_show, req.use_rth)
            text = str(int(ts.timestamp())) if req.format_date == 2 else ts.strftime("%Y%m%d-%H:%M:%S")
            self.send([ServerMessage.HEAD_TIMESTAMP, req.req_id, text])

        self._spawn(req.req_id, work, paced=True)

    def _cancel_head_timestamp(self, fields: list[str]) -> None:
        self._cancel(int(fields[1]))

    def _historical_data(self, fields: list[str]) -> None:
        req = HistoricalRequest.from_fields(fields)
        if req.bar_size not in BAR_SIZES:
            self.send(msg.error(req.req_id, msg.invalid_bar_size(req.bar_size, ", ".join(BAR_SIZES))))
            return
        paced = PacedRequest(req.contract.con_id, req.contract.exchange, req.what_to_show, req.end, req.duration,
                             req.bar_size, req.use_rth)
        small_bars = BAR_SIZES[req.bar_size] <= SMALL_BAR_MAX
        if not self._admit_paced(req.req_id, paced, small_bars=small_bars):
            return
        self._spawn(req.req_id, lambda: self._answer_historical(req), paced=True)

    def _cancel_historical(self, fields: list[str]) -> None:
        self._cancel(int(fields[2]))

    def _cancel(self, req_id: int) -> None:
        task = self.pending.pop(req_id, None)
        if task is not None:
            task.cancel()

    def _admit_paced(self, req_id: int, request: PacedRequest, *, small_bars: bool) -> bool:
        """Apply IB's pacing rules (when enforced) and count the request as open; False = answered with 162."""
        faults = self.sim.faults
        if self.sim.forced_pacing_violations > 0:
            self.sim.forced_pacing_violations -= 1
            self.sim.counters.pacing_violations += 1
            self.send(msg.error(req_id, msg.PACING_VIOLATION))
            return False
        if faults.enforce_pacing and (small_bars or faults.pacing_all_bar_sizes):
            violation = self.sim.pacing.admit(request)
            if violation is not None:
                self.sim.counters.pacing_violations += 1
                log.info("pacing violation for request %d: %s", req_id, violation)
                self.send(msg.error(req_id, msg.PACING_VIOLATION))
                return False
        self.sim.pacing.open_requests += 1
        return True

    def _refuse_data(self, req_id: int, inst: Instrument, what_to_show: str) -> bool:
        """Answer the account- and farm-level refusals; True when the request is answered (or swallowed)."""
        faults = self.sim.faults
        if faults.farm_down or self.sim.connectivity_lost:
            return True  # a broken HMDS farm or lost IB connectivity leaves requests unanswered
        if inst.symbol in faults.no_permission_symbols:
            self.send(msg.error(req_id, msg.no_permissions(inst.primary_exchange)))
            return True
        if inst.symbol in faults.no_data_symbols:
            self.send(msg.error(req_id, msg.no_data(inst.symbol, inst.exchange, what_to_show)))
            return True
        return False

    async def _answer_historical(self, req: HistoricalRequest) -> None:
        inst = self._resolve(req.req_id, req.contract.symbol, req.contract.con_id)
        if inst is None or self._refuse_data(req.req_id, inst, req.what_to_show):
            return
        if req.what_to_show == "ADJUSTED_LAST" and req.end.strip():
            self.send(msg.error(req.req_id, msg.invalid_request("End date not supported with adjusted last")))
            return
        try:
            end = parse_end_datetime(req.end, self.sim.tws_zone, self.sim.clock())
        except ValueError:
            self.send(msg.error(req.req_id, msg.invalid_end_date(req.end)))
            return
        try:
            start, end = request_window(end, req.duration, bar_size=req.bar_size, use_rth=req.use_rth)
        except InvalidDuration as exc:
            self.send(msg.error(req.req_id, msg.invalid_request(f"Invalid duration string: {exc}")))
            return
        try:
            bars = self.sim.bar_source.bars(inst.symbol, req.bar_size, req.what_to_show, req.use_rth, start, end)
        except (InvalidBarSize, ValueError) as exc:
            self.send(msg.error(req.req_id, msg.invalid_request(str(exc))))
            return
        if bars.height > MAX_BARS_PER_REPLY:
            self.send(msg.error(req.req_id, msg.time_length_exceeded()))
            return
        if bars.is_empty():
            self.send(msg.error(req.req_id, msg.no_data(inst.symbol, inst.exchange, req.what_to_show)))
            return
        bars = self._inject_bad_bars(inst.symbol, req, bars)
        self.send(self._historical_fields(req, start, end, bars))

    def _historical_fields(self, req: HistoricalRequest, start: datetime, end: datetime,
                           bars: pl.DataFrame) -> list[object]:
        daily = BAR_SIZES[req.bar_size] >= timedelta(days=1)
        zone = self.sim.tws_zone
        fields: list[object] = [
            ServerMessage.HISTORICAL_DATA, req.req_id, format_header_time(start, zone), format_header_time(end, zone),
            bars.height,
        ]
        for ts, o, h, low, c, v, wap, count in bars.select(
            "ts", "open", "high", "low", "close", "volume", "wap", "count"
        ).iter_rows():
            fields += [format_bar_time(ts, daily, req.format_date, zone), o, h, low, c, v, wap, count]
        return fields

    def _inject_bad_bars(self, symbol: str, req: HistoricalRequest, bars: pl.DataFrame) -> pl.DataFrame:
        """Corrupt every Nth bar per configured kind (one corruption per bar) and record exactly which."""
        if not self.sim.faults.bad_bars:
            return bars
        rows = bars.to_dicts()
        step = BAR_SIZES[req.bar_size]
        extra: list[dict[str, Any]] = []
        corrupted: set[int] = set()
        for kind, every in self.sim.faults.bad_bars.items():
            if kind is BadBarKind.MISALIGNED_TS and (step >= timedelta(days=1) or step < timedelta(seconds=2)):
                continue  # dates and 1-second bars cannot be misaligned on the wire
            for index in range(every - 1, len(rows), every):
                if index in corrupted:
                    continue
                corrupted.add(index)
                row = rows[index]
                if kind is BadBarKind.HIGH_BELOW_LOW:
                    row["high"], row["low"] = row["low"] - 0.01, row["high"]
                elif kind is BadBarKind.NEGATIVE_VOLUME:
                    row["volume"] = -abs(row["volume"]) - 100.0
                elif kind is BadBarKind.DUPLICATE_TS:
                    bump = round(row["close"] + 0.05, 2)
                    extra.append({**row, "close": bump, "high": max(row["high"], bump)})
                elif kind is BadBarKind.MISALIGNED_TS:
                    row["ts"] = row["ts"] + step / 2
                self.sim.counters.injected_bad_bars.append({
                    "symbol": symbol, "bar_size": req.bar_size, "what_to_show": req.what_to_show,
                    "use_rth": req.use_rth, "ts": row["ts"].isoformat(), "kind": str(kind),
                })
        return pl.DataFrame(rows + extra, schema=bars.schema).sort("ts", maintain_order=True)

    _handlers: ClassVar[dict[int, Callable[[_Session, list[str]], None]]] = {
        3: _reject_order,
        5: _open_orders,
        6: _account_updates,
        7: _executions,
        8: _req_ids,
        9: _contract_details,
        20: _historical_data,
        25: _cancel_historical,
        49: _current_time,
        61: _positions,
        62: _account_summary,
        71: _start_api,
        76: _account_updates_multi,
        87: _head_timestamp,
        90: _cancel_head_timestamp,
        99: _completed_orders,
    }


@contextlib.asynccontextmanager
async def running_simulator(**kwargs: Any):  # type: ignore[no-untyped-def]
    """`async with running_simulator(faults=...) as sim:` for async tests and scripts."""
    sim = TWSSimulator(**kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
