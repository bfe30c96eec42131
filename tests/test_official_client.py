"""The simulator as IB's own Python client (`ibapi`) sees it: a second real client next to ib_async.

`ibapi` offers the widest version range (100..226, protobuf from 201) and decodes every field by the negotiated
server version, so it checks the handshake negotiation and the message formats independently of ib_async's
decoder. The client runs as IB documents it: `EClient.connect`, then `run()` on a thread of its own, with its
`EReader` thread feeding it; the test waits on events the callbacks set, never on sleeps.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from ibapi.client import EClient
from ibapi.common import BarData, TickAttrib
from ibapi.contract import Contract, ContractDescription, ContractDetails
from ibapi.wrapper import EWrapper

from ibkr_flows.ib.wire import client_greeting
from ibkr_flows.sim.embedded import EmbeddedSimulator
from ibkr_flows.sim.faults import Faults

FIXED_NOW = datetime(2024, 3, 8, 22, 0, tzinfo=UTC)  # a Friday evening, after the close
WAIT = 5.0


def stock(symbol: str) -> Contract:
    contract = Contract()
    contract.symbol = symbol
    contract.secType = "STK"
    contract.exchange = "SMART"
    contract.currency = "USD"
    return contract


class OfficialClient(EWrapper, EClient):
    """IB's EClient with an EWrapper that records what arrives; one `threading.Event` per request id is set
    when that request is complete (its end message or an error for it)."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.ready = threading.Event()
        self.accounts = ""
        self.next_order_id: int | None = None
        self.errors: list[tuple[int, int, str]] = []
        self.bars: dict[int, list[BarData]] = {}
        self.details: dict[int, list[ContractDetails]] = {}
        self.head_timestamps: dict[int, str] = {}
        self.symbol_samples: dict[int, list[ContractDescription]] = {}
        self.summary: dict[int, list[tuple[str, str, str, str]]] = {}
        self.ticks: dict[int, dict[int, float | Decimal | str]] = {}
        self.data_types: dict[int, int] = {}
        self._done: dict[int, threading.Event] = {}
        self._codes: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- running -------------------------------------------------------------------------------------------------

    def start(self, host: str, port: int, client_id: int) -> OfficialClient:
        self.connect(host, port, client_id)
        self._thread = threading.Thread(target=self.run, name="ibapi-client", daemon=True)
        self._thread.start()
        assert self.ready.wait(WAIT), "no managedAccounts + nextValidId"
        return self

    def stop(self) -> None:
        self.disconnect()
        if self._thread is not None:
            self._thread.join(WAIT)

    def done(self, req_id: int) -> threading.Event:
        with self._lock:
            return self._done.setdefault(req_id, threading.Event())

    def wait(self, req_id: int) -> None:
        assert self.done(req_id).wait(WAIT), f"request {req_id} got no answer within {WAIT} s"

    def code_seen(self, code: int) -> threading.Event:
        """Set once an error or notice with `code` has arrived (for notices, which no request waits for)."""
        with self._lock:
            return self._codes.setdefault(code, threading.Event())

    def request_errors(self, req_id: int) -> list[tuple[int, str]]:
        return [(code, text) for rid, code, text in self.errors if rid == req_id]

    # -- EWrapper ------------------------------------------------------------------------------------------------

    def managedAccounts(self, accountsList: str) -> None:
        self.accounts = accountsList
        if self.next_order_id is not None:
            self.ready.set()

    def nextValidId(self, orderId: int) -> None:
        self.next_order_id = orderId
        if self.accounts:
            self.ready.set()

    def error(self, reqId: int, errorTime: int, errorCode: int, errorString: str,
              advancedOrderRejectJson: str = "") -> None:
        self.errors.append((reqId, errorCode, errorString))
        self.code_seen(errorCode).set()
        if reqId >= 0 and errorCode not in {10167}:  # 10167 is a notice: delayed ticks follow
            self.done(reqId).set()

    def historicalData(self, reqId: int, bar: BarData) -> None:
        self.bars.setdefault(reqId, []).append(bar)

    def historicalDataEnd(self, reqId: int, start: str, end: str) -> None:
        self.done(reqId).set()

    def contractDetails(self, reqId: int, contractDetails: ContractDetails) -> None:
        self.details.setdefault(reqId, []).append(contractDetails)

    def contractDetailsEnd(self, reqId: int) -> None:
        self.done(reqId).set()

    def headTimestamp(self, reqId: int, headTimestamp: str) -> None:
        self.head_timestamps[reqId] = headTimestamp
        self.done(reqId).set()

    def symbolSamples(self, reqId: int, contractDescriptions: list[ContractDescription]) -> None:
        self.symbol_samples[reqId] = contractDescriptions
        self.done(reqId).set()

    def accountSummary(self, reqId: int, account: str, tag: str, value: str, currency: str) -> None:
        self.summary.setdefault(reqId, []).append((account, tag, value, currency))

    def accountSummaryEnd(self, reqId: int) -> None:
        self.done(reqId).set()

    def marketDataType(self, reqId: int, marketDataType: int) -> None:
        self.data_types[reqId] = marketDataType

    def tickPrice(self, reqId: int, tickType: int, price: float, attrib: TickAttrib) -> None:
        self.ticks.setdefault(reqId, {})[tickType] = price

    def tickSize(self, reqId: int, tickType: int, size: Decimal) -> None:
        self.ticks.setdefault(reqId, {})[tickType] = size

    def tickString(self, reqId: int, tickType: int, value: str) -> None:
        self.ticks.setdefault(reqId, {})[tickType] = value

    def tickSnapshotEnd(self, reqId: int) -> None:
        self.done(reqId).set()


class VersionCap:
    """A one-connection TCP relay that rewrites the client's greeting to offer at most `max_version`.

    That is how an older ibapi release (9.76 offered v100..151, 9.81 v100..163) connects, without touching this
    ibapi's module constants: everything after the greeting passes through unchanged, both ways.
    """

    def __init__(self, sim: EmbeddedSimulator, max_version: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._upstream = (sim.host, sim.port)
        self._max_version = max_version
        self._thread = threading.Thread(target=self._relay, name="version-cap", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self._upstream, timeout=WAIT)
        with client, upstream:
            header = _recv_exactly(client, len(b"API\0") + 4)
            body = _recv_exactly(client, struct.unpack(">I", header[4:])[0]).decode()
            low = int(body.partition("..")[0].removeprefix("v"))
            upstream.sendall(client_greeting(low, self._max_version))
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(WAIT)

    def close(self) -> None:
        self.listener.close()
        self._thread.join(WAIT)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed mid-greeting")
        data += chunk
    return data


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until `source` closes, then close `sink`'s sending side so the far end sees the EOF too."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def fixed_sim() -> Iterator[EmbeddedSimulator]:
    """IB's client has no read-only switch (ib_async's `readonly=True` only skips order requests at connect), so
    the simulated TWS has its 'Read-Only API' box ticked: the server side refuses any order request."""
    with EmbeddedSimulator(clock=lambda: FIXED_NOW, faults=Faults(read_only=True)) as running:
        yield running


@pytest.fixture
def app(fixed_sim: EmbeddedSimulator) -> Iterator[OfficialClient]:
    client = OfficialClient().start(fixed_sim.host, fixed_sim.port, client_id=31)
    yield client
    client.stop()


# -- handshake -----------------------------------------------------------------------------------------------------


def test_handshake_negotiates_down_to_178(app: OfficialClient, fixed_sim: EmbeddedSimulator) -> None:
    """ibapi 10.50 offers v100..226 (protobuf from 201): the simulator answers 178 and the client speaks text."""
    assert app.serverVersion() == 178
    assert app.accounts == "DU1234567"
    assert app.next_order_id is not None and app.next_order_id >= 1
    assert app.code_seen(2158).wait(WAIT)
    assert [code for rid, code, _ in app.errors if rid == -1][:3] == [2104, 2106, 2158]
    assert fixed_sim.snapshot()["live_client_ids"] == [31]


@pytest.mark.parametrize("max_version", [151, 163])
def test_older_client_versions_get_their_format(fixed_sim: EmbeddedSimulator, max_version: int) -> None:
    """The official client offering at most 151 or 163 is served that version's messages, end to end: contract
    details (version field, mdSizeMultiplier, no size rules), errors (no advancedOrderRejectJson), bars."""
    cap = VersionCap(fixed_sim, max_version)
    app = OfficialClient().start("127.0.0.1", cap.port, client_id=32)
    try:
        assert app.serverVersion() == max_version
        app.reqContractDetails(1, stock("SPY"))
        app.reqContractDetails(2, stock("NOPE"))
        app.reqHistoricalData(3, stock("SPY"), "20240307-21:00:00", "1 D", "1 hour", "TRADES", 1, 2, False, [])
        for req_id in (1, 2, 3):
            app.wait(req_id)
        (cd,) = app.details[1]
        assert cd.contract.conId == 756733 and cd.longName == "SPDR S&P 500 ETF TRUST"
        assert cd.stockType == ("ETF" if max_version >= 152 else "")
        assert app.request_errors(2) == [(200, "No security definition has been found for the request")]
        assert len(app.bars[3]) == 7
        assert not [code for _, code, _ in app.errors if code >= 500 and code < 600]  # no client-side decode errors
    finally:
        app.stop()
        cap.close()


# -- historical data -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bar_size", "duration", "what", "end", "expected"),
    [
        ("1 min", "1800 S", "TRADES", "20240307-20:00:00", 30),
        ("5 mins", "1 D", "MIDPOINT", "20240307-21:00:00", 78),
        ("1 hour", "1 D", "BID", "20240307-21:00:00", 7),
        ("1 hour", "1 D", "ASK", "20240307-21:00:00", 7),
        ("30 mins", "1 D", "BID_ASK", "20240307-21:00:00", 13),
        ("1 day", "5 D", "ADJUSTED_LAST", "", 5),
    ],
)
def test_historical_bars(app: OfficialClient, bar_size: str, duration: str, what: str, end: str,
                         expected: int) -> None:
    req_id = 100
    app.reqHistoricalData(req_id, stock("AAPL"), end, duration, bar_size, what, 1, 2, False, [])
    app.wait(req_id)
    assert app.request_errors(req_id) == []
    bars = app.bars[req_id]
    assert len(bars) == expected
    assert all(bar.high >= bar.low for bar in bars)
    if bar_size == "1 day":
        assert bars[-1].date == date(2024, 3, 8).strftime("%Y%m%d")
    else:  # formatDate 2: epoch seconds
        first = datetime.fromtimestamp(int(bars[0].date), UTC)
        assert first.date() == date(2024, 3, 7)
    if what in {"MIDPOINT", "BID", "ASK", "BID_ASK"}:
        assert all(bar.volume == Decimal(-1) for bar in bars)


def test_bid_below_ask(app: OfficialClient) -> None:
    for req_id, what in ((1, "BID"), (2, "ASK")):
        app.reqHistoricalData(req_id, stock("MSFT"), "20240307-21:00:00", "1 D", "1 hour", what, 1, 2, False, [])
        app.wait(req_id)
    assert all(bid.close < ask.close for bid, ask in zip(app.bars[1], app.bars[2], strict=True))


def test_head_timestamp(app: OfficialClient, fixed_sim: EmbeddedSimulator) -> None:
    assert fixed_sim.sim is not None
    app.reqHeadTimeStamp(7, stock("MSFT"), "TRADES", 1, 2)
    app.wait(7)
    head = datetime.fromtimestamp(int(app.head_timestamps[7]), UTC)
    assert head == fixed_sim.sim.bar_source.head_timestamp("MSFT", "TRADES", True)
    assert head < FIXED_NOW


def test_contract_details(app: OfficialClient) -> None:
    app.reqContractDetails(8, stock("AAPL"))
    app.wait(8)
    (cd,) = app.details[8]
    assert cd.contract.conId == 265598 and cd.contract.primaryExchange == "NASDAQ"
    assert cd.minTick == 0.01 and cd.timeZoneId == "US/Eastern" and cd.stockType == "COMMON"
    assert cd.longName == "APPLE INC" and cd.secIdList[0].value == "US0378331005"
    assert cd.minSize == Decimal("0.0001") and cd.suggestedSizeIncrement == Decimal(100)


def test_unknown_contract_is_200_for_the_request(app: OfficialClient) -> None:
    app.reqContractDetails(9, stock("NOPE"))
    app.wait(9)
    assert app.request_errors(9) == [(200, "No security definition has been found for the request")]
    assert 9 not in app.details


# -- what used to go unanswered --------------------------------------------------------------------------------------


def test_matching_symbols(app: OfficialClient) -> None:
    app.reqMatchingSymbols(11, "NV")
    app.wait(11)
    (match,) = app.symbol_samples[11]
    assert (match.contract.symbol, match.contract.conId, match.contract.primaryExchange) == ("NVDA", 4815747, "NASDAQ")
    assert "OPT" in match.derivativeSecTypes and match.contract.description == "NVIDIA CORP"


def test_account_summary(app: OfficialClient) -> None:
    app.reqAccountSummary(12, "All", "NetLiquidation,TotalCashValue,BuyingPower,AccountType")
    app.wait(12)
    rows = {tag: (account, value, currency) for account, tag, value, currency in app.summary[12]}
    assert rows["NetLiquidation"] == ("DU1234567", "1000000.00", "USD")
    assert rows["TotalCashValue"][1] == "1000000.00" and float(rows["BuyingPower"][1]) > 0
    assert rows["AccountType"][2] == ""


def test_market_data_live_is_354_delayed_streams(app: OfficialClient) -> None:
    app.reqMktData(13, stock("AAPL"), "", False, False, [])
    app.wait(13)
    assert [code for code, _ in app.request_errors(13)] == [354]
    app.reqMarketDataType(3)
    app.reqMktData(14, stock("AAPL"), "", True, False, [])  # a snapshot ends with tickSnapshotEnd
    app.wait(14)
    assert [code for code, _ in app.request_errors(14)] == [10167]
    assert app.data_types[14] == 3
    ticks = app.ticks[14]
    assert ticks[66] < ticks[68] < ticks[67]  # delayed bid < last < ask
    assert ticks[69] == Decimal(300) and int(ticks[88]) == int(FIXED_NOW.timestamp()) - 15 * 60


def test_real_time_bars_need_permissions(app: OfficialClient) -> None:
    app.reqRealTimeBars(15, stock("SPY"), 5, "TRADES", True, [])
    app.wait(15)
    assert app.request_errors(15) == [(420, "Invalid Real-time Query:No market data permissions for ARCA STK")]
