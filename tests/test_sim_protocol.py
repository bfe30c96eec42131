"""The simulator as the real ib_async client sees it (requests, replies, faults, counters), and on the raw wire:
version negotiation checked with IB's own decoder, refused handshakes, the handshake deadline, 320 for unreadable
requests."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from ib_async import IB, RequestError, Stock
from ibapi.decoder import Decoder
from ibapi.wrapper import EWrapper

from ibkr_flows.ib.pacing_rules import IDENTICAL_WINDOW_S
from ibkr_flows.ib.wire import FrameReader, client_greeting, encode_frame
from ibkr_flows.sim.embedded import EmbeddedSimulator

FIXED_NOW = datetime(2024, 3, 8, 22, 0, tzinfo=UTC)  # a Friday evening, after the close


@pytest.fixture
def fixed_sim() -> Iterator[EmbeddedSimulator]:
    with EmbeddedSimulator(clock=lambda: FIXED_NOW) as running:
        yield running


@pytest.fixture
def ib(fixed_sim: EmbeddedSimulator) -> Iterator[IB]:
    client = IB()
    client.RaiseRequestErrors = True
    client.connect(fixed_sim.host, fixed_sim.port, clientId=21, readonly=True, timeout=5)
    yield client
    client.disconnect()


def _wait_until(condition: Callable[[], bool], ib: IB, timeout: float = 5.0) -> None:
    """Run the client's event loop in short steps until `condition` holds, failing after `timeout` seconds.

    Waits exactly as long as the awaited event takes, where a fixed sleep is either too short on a slow machine
    or wasted time on a fast one; running ib's loop (not `time.sleep`) lets the client process what arrives.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        ib.sleep(0.01)


class _ManualClock:
    """A monotonic clock the test moves by hand, so a pacing window passes without waiting it out."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- raw wire ----------------------------------------------------------------------------------------------------


def _raw_connect(sim: EmbeddedSimulator) -> socket.socket:
    sock = socket.create_connection((sim.host, sim.port), timeout=5)
    return sock


def _read_frames(sock: socket.socket, reader: FrameReader, count: int) -> list[list[str]]:
    frames: list[list[str]] = []
    while len(frames) < count:
        frames += reader.feed(sock.recv(65536))
    return frames


def test_handshake_bytes_split_and_merged_frames(sim: EmbeddedSimulator) -> None:
    sock = _raw_connect(sim)
    greeting = client_greeting()
    assert greeting == b"API\0" + struct.pack(">I", 9) + b"v157..178"
    for byte in greeting:  # one byte per write: the server must reassemble split frames
        sock.sendall(bytes([byte]))
        time.sleep(0.001)
    reader = FrameReader()
    version, conn_time = _read_frames(sock, reader, 1)[0]
    assert version == "178"
    assert len(conn_time.split(" ")) == 3  # yyyymmdd hh:mm:ss ZONE
    # startApi and reqCurrentTime merged into one write: both must be answered
    sock.sendall(encode_frame([71, 2, 5, ""]) + encode_frame([49, 1]))
    frames = _read_frames(sock, reader, 6)
    ids = [f[0] for f in frames]
    assert ids[:2] == ["15", "9"]
    assert frames[0] == ["15", "1", "DU1234567"]
    assert [f[3] for f in frames[2:5]] == ["2104", "2106", "2158"]
    assert frames[5][0] == "49"
    sock.close()


def test_frame_reader_handles_partial_and_packed_input() -> None:
    payload = encode_frame([17, 1, "a"]) + encode_frame([4, 2, -1, 2104, "ok", ""])
    reader = FrameReader()
    assert reader.feed(payload[:3]) == []
    assert reader.feed(payload[3:10]) == []
    frames = reader.feed(payload[10:])
    assert frames == [["17", "1", "a"], ["4", "2", "-1", "2104", "ok", ""]]


def test_server_version_follows_client_max(sim: EmbeddedSimulator) -> None:
    sock = _raw_connect(sim)
    sock.sendall(client_greeting(100, 176))
    assert _read_frames(sock, FrameReader(), 1)[0][0] == "176"
    sock.close()


AAPL = [265598, "AAPL", "STK", "", 0.0, "", "", "SMART", "NASDAQ", "USD", "AAPL", "NMS"]
NOPE = [0, "NOPE", "STK", "", 0.0, "", "", "SMART", "", "USD", "", ""]


class _Recorder(EWrapper):
    """IB's EWrapper recording the callbacks its own decoder makes, to read frames the way `ibapi` reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def error(self, *args: object) -> None:
        self.calls.append(("error", args))

    def contractDetails(self, *args: object) -> None:
        self.calls.append(("contractDetails", args))

    def historicalData(self, *args: object) -> None:
        self.calls.append(("historicalData", args))

    def historicalDataEnd(self, *args: object) -> None:
        self.calls.append(("historicalDataEnd", args))

    def tickPrice(self, *args: object) -> None:
        self.calls.append(("tickPrice", args))

    def tickSize(self, *args: object) -> None:
        self.calls.append(("tickSize", args))


def _decode_exactly(frame: list[str], version: int) -> _Recorder:
    """Decode one server frame with ibapi's `Decoder` at `version` and check it consumed every field: a field too
    many or too few means the simulator sent another version's format."""
    recorder = _Recorder()
    decoder = Decoder(recorder, version)
    processors = {1: decoder.processTickPriceMsg, 2: decoder.processTickSizeMsg, 4: decoder.processErrorMsg,
                  10: decoder.processContractDataMsg, 17: decoder.processHistoricalDataMsg}
    fields = iter([field.encode() for field in frame[1:]])
    processors[int(frame[0])](fields)
    assert next(fields, None) is None, f"fields left over after decoding {frame[:2]} at v{version}"
    return recorder


def _api_session(sim: EmbeddedSimulator, client_max: int = 178,
                 client_id: int = 3) -> tuple[socket.socket, FrameReader]:
    """A raw connection through startApi, its startup frames (accounts, next id, 3 farm notices) read."""
    sock = _raw_connect(sim)
    reader = FrameReader()
    sock.sendall(client_greeting(100, client_max))
    assert _read_frames(sock, reader, 1)[0][0] == str(min(client_max, 178))
    sock.sendall(encode_frame([71, 2, client_id, ""]))
    _read_frames(sock, reader, 5)
    return sock, reader


@pytest.mark.parametrize("version", [151, 163, 178])
def test_negotiated_version_format_as_ibapi_decodes_it(fixed_sim: EmbeddedSimulator, version: int) -> None:
    """An older client (ibapi 9.76 offered v100..151, 9.81 v100..163) gets every message in its version's
    format: contract details with the version field and mdSizeMultiplier, errors without advancedOrderRejectJson."""
    sock, reader = _api_session(fixed_sim, version)
    issuer = [""] if version >= 176 else []
    sock.sendall(encode_frame([9, 8, 1, *AAPL, 0, "", "", *issuer]))
    data, end = _read_frames(sock, reader, 2)
    assert end == ["52", "1", "1"]
    ((_, (req_id, details)),) = _decode_exactly(data, version).calls
    assert req_id == 1 and details.contract.conId == 265598 and details.longName == "APPLE INC"
    assert details.timeZoneId == "US/Eastern" and details.secIdList[0].value == "US0378331005"
    assert details.stockType == ("COMMON" if version >= 152 else "")
    sock.sendall(encode_frame([9, 8, 2, *NOPE, 0, "", "", *issuer]))
    ((_, error_args),) = _decode_exactly(_read_frames(sock, reader, 1)[0], version).calls
    assert error_args[0] == 2 and 200 in error_args
    sock.sendall(encode_frame([20, 3, *AAPL, 0, "20240307-20:00:00", "5 mins", "3600 S", 1, "TRADES", 2, 0, ""]))
    calls = _decode_exactly(_read_frames(sock, reader, 1)[0], version).calls
    assert [name for name, _ in calls] == ["historicalData"] * 12 + ["historicalDataEnd"]
    sock.sendall(encode_frame([59, 1, 3]) + encode_frame([1, 11, 4, *AAPL, 0, "", 1, 0, ""]))
    frames = _read_frames(sock, reader, 3 + 9 + 1)  # tickReqParams, 10167, type; 9 ticks; snapshot end
    _decode_exactly(frames[1], version)
    bid_size = next(args[2] for name, args in _decode_exactly(frames[3], version).calls if name == "tickSize")
    assert bid_size == (300 if version >= 159 else 3)  # shares from 159, round lots before
    volume = _decode_exactly(frames[8], version).calls[0][1]
    assert volume[1] == 74 and volume[2] > 0
    sock.close()


@pytest.mark.parametrize(
    "body",
    [b"v1..5", b"v10..v5", b"v178..157", b"v-3..178", b"vabc..def", b"v100..123", b"v179..226", b"157..178",
     b"v157..178x"],
)
def test_unusable_version_ranges_are_refused(sim: EmbeddedSimulator, body: bytes) -> None:
    """Ranges that are not ranges, and ranges with no version in 124..178, get the socket closed unanswered."""
    sock = _raw_connect(sim)
    sock.sendall(b"API\0" + struct.pack(">I", len(body)) + body)
    assert sock.recv(65536) == b""
    sock.close()


def test_greeting_and_start_api_in_one_write(sim: EmbeddedSimulator) -> None:
    sock = _raw_connect(sim)
    sock.sendall(client_greeting() + encode_frame([71, 2, 4, ""]))
    frames = _read_frames(sock, FrameReader(), 6)
    assert frames[0][0] == "178"
    assert frames[1] == ["15", "1", "DU1234567"] and frames[2][0] == "9"
    sock.close()


@pytest.mark.parametrize("says", [b"", client_greeting()])
def test_silent_client_is_dropped_after_handshake_timeout(says: bytes) -> None:
    """Nothing at all, or a greeting without startApi: the connection is closed once the handshake time is up."""
    with EmbeddedSimulator(handshake_timeout=0.3) as short:
        sock = _raw_connect(short)
        sock.sendall(says)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert 0.2 < time.monotonic() - started < 3
        assert bool(received) == bool(says)  # the version frame, when the greeting came
        sock.close()
        client = IB()  # a well-behaved client is unaffected
        client.connect(short.host, short.port, clientId=42, readonly=True, timeout=5)
        assert client.isConnected()
        client.disconnect()


def test_unreadable_requests_get_320_and_the_connection_stays(fixed_sim: EmbeddedSimulator) -> None:
    sock, reader = _api_session(fixed_sim)
    sock.sendall(encode_frame([20, "x7", *AAPL, 0, "", "1 hour", "1 D", 1, "TRADES", 2, 0, ""]))  # bad reqId
    error = _read_frames(sock, reader, 1)[0]
    assert error[:4] == ["4", "2", "-1", "320"] and error[4].startswith("Error reading request. Message id 20.")
    sock.sendall(encode_frame([20, 8, *AAPL[:5]]))  # truncated
    assert _read_frames(sock, reader, 1)[0][3] == "320"
    sock.sendall(encode_frame([999, 1, 2]))  # no such message
    error = _read_frames(sock, reader, 1)[0]
    assert error[3] == "320" and "Unknown message id '999'" in error[4]
    sock.sendall(encode_frame([20, 9, *AAPL, 0, "20240307-21:00:00", "1 hour", "1 D", 1, "TRADES", 2, 0, ""]))
    bars = _read_frames(sock, reader, 1)[0]
    assert bars[:2] == ["17", "9"] and bars[4] == "7"
    assert fixed_sim.snapshot()["errors_sent"]["320"] == 3
    sock.close()


# -- data requests through ib_async --------------------------------------------------------------------------------


def test_contract_details_and_unknown_symbol(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    details = ib.reqContractDetails(Stock("AAPL", "SMART", "USD"))
    assert len(details) == 1
    cd = details[0]
    assert cd.contract.conId == 265598 and cd.contract.primaryExchange == "NASDAQ"
    assert cd.minTick == 0.01 and cd.timeZoneId == "US/Eastern" and cd.stockType == "COMMON"
    assert cd.secIdList[0].value == "US0378331005"
    ib.RaiseRequestErrors = False
    assert ib.qualifyContracts(Stock("NOPE", "SMART", "USD")) == [None]
    assert fixed_sim.snapshot()["errors_sent"]["200"] == 1


def test_head_timestamp(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    assert fixed_sim.sim is not None
    contract = ib.qualifyContracts(Stock("MSFT", "SMART", "USD"))[0]
    head = ib.reqHeadTimeStamp(contract, whatToShow="TRADES", useRTH=True, formatDate=2)
    assert isinstance(head, datetime) and head.tzinfo is not None
    assert head == fixed_sim.sim.bar_source.head_timestamp("MSFT", "TRADES", True) and head < FIXED_NOW


@pytest.mark.parametrize(
    ("bar_size", "duration", "expected"),
    [("1 min", "1 D", 390), ("5 mins", "1 D", 78), ("1 hour", "1 D", 7), ("1 day", "5 D", 5),
     ("30 secs", "1800 S", 60), ("1 secs", "60 S", 60)],
)
def test_historical_bars_sizes(ib: IB, bar_size: str, duration: str, expected: int) -> None:
    contract = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    end = "" if duration.endswith("D") else datetime(2024, 3, 8, 20, 0, tzinfo=UTC)
    bars = ib.reqHistoricalData(contract, endDateTime=end, durationStr=duration, barSizeSetting=bar_size,
                                whatToShow="TRADES", useRTH=True, formatDate=2)
    assert len(bars) == expected
    for bar in bars:
        assert bar.high >= max(bar.open, bar.close) and bar.low <= min(bar.open, bar.close)
    if bar_size == "1 day":
        assert isinstance(bars[0].date, date) and bars[-1].date == date(2024, 3, 8)
    else:
        assert bars[0].date.tzinfo is not None


def test_end_datetime_forms_agree(ib: IB) -> None:
    """Aware UTC, the `yyyymmdd-hh:mm:ss` UTC form and a zoned string give the same bars."""
    contract = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    forms = [datetime(2024, 3, 7, 20, 0, tzinfo=UTC), "20240307-20:00:00", "20240307 15:00:00 US/Eastern"]
    results = [
        ib.reqHistoricalData(contract, endDateTime=end, durationStr="3600 S", barSizeSetting="5 mins",
                             whatToShow="TRADES", useRTH=True, formatDate=1)
        for end in forms
    ]
    assert len(results[0]) == 12
    assert list(results[0]) == list(results[1]) == list(results[2])
    assert results[0][0].date.utcoffset() is not None  # formatDate 1 carries the zone name


def test_format_date_1_and_2_same_instants(ib: IB) -> None:
    contract = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    kw = dict(endDateTime="20240307-20:00:00", durationStr="1800 S", barSizeSetting="1 min",
              whatToShow="TRADES", useRTH=True)
    zoned = ib.reqHistoricalData(contract, formatDate=1, **kw)
    epoch = ib.reqHistoricalData(contract, formatDate=2, **kw)
    assert [b.date.astimezone(UTC) for b in zoned] == [b.date for b in epoch]


@pytest.mark.parametrize("what", ["MIDPOINT", "BID_ASK", "ADJUSTED_LAST"])
def test_what_to_show(ib: IB, what: str) -> None:
    contract = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    end = "" if what == "ADJUSTED_LAST" else "20240307-20:00:00"
    bars = ib.reqHistoricalData(contract, endDateTime=end, durationStr="1 D", barSizeSetting="1 hour",
                                whatToShow=what, useRTH=True, formatDate=2)
    assert bars
    if what in {"MIDPOINT", "BID_ASK"}:
        assert all(b.volume == -1 for b in bars)
    if what == "BID_ASK":
        assert all(b.high >= b.low for b in bars)


def test_use_rth_false_includes_extended_hours(ib: IB) -> None:
    contract = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    kw = dict(endDateTime="20240309-02:00:00", durationStr="1 D", barSizeSetting="1 hour", whatToShow="TRADES",
              formatDate=2)
    rth = ib.reqHistoricalData(contract, useRTH=True, **kw)
    eth = ib.reqHistoricalData(contract, useRTH=False, **kw)
    assert len(eth) == 16 and len(rth) == 7
    assert eth[0].date == datetime(2024, 3, 8, 9, 0, tzinfo=UTC)  # 04:00 New York
    assert eth[-1].date == datetime(2024, 3, 9, 0, 0, tzinfo=UTC)  # the 19:00-20:00 New York bar


def test_errors_no_data_permissions_invalid(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    contract = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    fixed_sim.update_faults(no_data_symbols={"AAPL"})
    with pytest.raises(RequestError, match="HMDS query returned no data"):
        ib.reqHistoricalData(contract, "", "1 D", "1 hour", "TRADES", True)
    fixed_sim.update_faults(no_data_symbols=set(), no_permission_symbols={"AAPL"})
    with pytest.raises(RequestError, match="No market data permissions for NASDAQ STK"):
        ib.reqHistoricalData(contract, "", "2 D", "1 hour", "TRADES", True)
    fixed_sim.clear_faults()
    with pytest.raises(RequestError, match=r"10314|End Date/Time"):
        ib.reqHistoricalData(contract, "2024-03-07T20:00", "1 D", "1 hour", "TRADES", True)
    # a holiday window has no bars: TWS says 'no data' rather than sending an empty list
    with pytest.raises(RequestError, match="HMDS query returned no data"):
        ib.reqHistoricalData(contract, "20240101-23:00:00", "3600 S", "1 min", "TRADES", True)


def test_invalid_bar_size_is_321(fixed_sim: EmbeddedSimulator) -> None:
    sock = _raw_connect(fixed_sim)
    sock.sendall(client_greeting())
    reader = FrameReader()
    _read_frames(sock, reader, 1)
    sock.sendall(encode_frame([71, 2, 3, ""]))
    _read_frames(sock, reader, 5)
    contract = [265598, "AAPL", "STK", "", 0.0, "", "", "SMART", "NASDAQ", "USD", "AAPL", "NMS"]
    sock.sendall(encode_frame([20, 7, *contract, 0, "", "7 mins", "1 D", 1, "TRADES", 1, 0, ""]))
    error = _read_frames(sock, reader, 1)[0]
    assert error[:4] == ["4", "2", "7", "321"] and "bar size setting is invalid" in error[4]
    sock.close()


def test_cancel_historical_request(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    """A slow answer cancelled by ib_async's own timeout sends cancelHistoricalData and no reply follows."""
    fixed_sim.update_faults(latency_seconds=3.0)
    contract = Stock("AAPL", "SMART", "USD", conId=265598)
    ib.RaiseRequestErrors = False
    bars = ib.reqHistoricalData(contract, "", "1 D", "1 hour", "TRADES", True, timeout=0.5)
    assert not bars
    _wait_until(lambda: "cancelHistoricalData" in fixed_sim.snapshot()["requests"], ib)
    snap = fixed_sim.snapshot()
    assert snap["requests"]["cancelHistoricalData"] == 1


# -- market data, symbol search, account summary -------------------------------------------------------------------


def test_market_data_live_is_354_delayed_after_type_3(ib: IB) -> None:
    """Without live subscriptions TWS refuses type-1 data with 354; after reqMarketDataType(3) it says 10167 and
    streams delayed ticks."""
    errors: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, *_: errors.append((req_id, code))
    aapl = Stock("AAPL", "SMART", "USD", conId=265598)
    live = ib.reqMktData(aapl)
    _wait_until(lambda: any(code == 354 for _, code in errors), ib)
    assert math.isnan(live.last) and live.marketDataType == 1  # no ticks came
    ib.cancelMktData(aapl)
    ib.reqMarketDataType(3)
    delayed = ib.reqMktData(Stock("MSFT", "SMART", "USD", conId=272093))
    _wait_until(lambda: delayed.delayedLastTimestamp is not None, ib)
    assert any(code == 10167 for _, code in errors)
    assert delayed.marketDataType == 3
    assert delayed.bid < delayed.last < delayed.ask and delayed.bidSize == 300
    assert delayed.low <= delayed.last <= delayed.high and delayed.volume > 0 and delayed.close > 0
    assert delayed.delayedLastTimestamp == FIXED_NOW - timedelta(minutes=15)


def test_real_time_bars_are_420(ib: IB) -> None:
    errors: list[tuple[int, str]] = []
    ib.errorEvent += lambda req_id, code, text, *_: errors.append((code, text))
    bars = ib.reqRealTimeBars(Stock("IBM", "SMART", "USD", conId=8314), 5, "TRADES", True)
    _wait_until(lambda: bool(errors and errors[-1][0] == 420), ib)
    assert errors[-1] == (420, "Invalid Real-time Query:No market data permissions for NYSE STK")
    assert not bars


def test_matching_symbols(ib: IB) -> None:
    found = ib.reqMatchingSymbols("Q")
    assert [d.contract.symbol for d in found] == ["QQQ"]
    assert found[0].contract.conId == 320227571 and found[0].contract.description == "INVESCO QQQ TRUST SERIES 1"
    by_name = ib.reqMatchingSymbols("microsoft")
    assert [d.contract.symbol for d in by_name] == ["MSFT"]
    assert ib.reqMatchingSymbols("ZZZZ") == []


def test_account_summary(ib: IB) -> None:
    values = {(v.tag, v.currency): v.value for v in ib.accountSummary("DU1234567")}
    assert values[("NetLiquidation", "USD")] == "1000000.00"
    assert values[("TotalCashValue", "USD")] == "1000000.00"
    assert float(values[("BuyingPower", "USD")]) >= 1_000_000
    assert values[("AccountType", "")] == "INDIVIDUAL"
    assert values[("CashBalance", "BASE")] == values[("CashBalance", "USD")] == "1000000.00"  # $LEDGER:ALL


# -- faults while connected --------------------------------------------------------------------------------------------


def test_pacing_counter_against_a_burst(fixed_sim: EmbeddedSimulator, ib: IB) -> None:
    """Ten 1-second-bar requests for one contract inside 2 s: the 6th onwards break the 6-per-2-s rule."""
    fixed_sim.update_faults(enforce_pacing=True)
    contract = Stock("AAPL", "SMART", "USD", conId=265598)
    ib.RaiseRequestErrors = False

    async def burst() -> list[list]:
        ends = [f"20240307-{15 + i // 60:02d}:{i % 60:02d}:00" for i in range(10)]
        return await asyncio.gather(*(
            ib.reqHistoricalDataAsync(contract, end, "60 S", "1 secs", "TRADES", True, formatDate=2) for end in ends
        ))

    results = ib.run(burst())
    snap = fixed_sim.snapshot()
    assert sum(1 for bars in results if bars) == 5
    assert snap["pacing_violations"] == 5
    assert snap["errors_sent"]["162"] == 5
    assert snap["pacing_violations_by_rule"] == {"6 or more requests for one contract and tick type within 2 s": 5}


def test_pacing_identical_request_and_time_scale(fixed_sim: EmbeddedSimulator, ib: IB) -> None:
    """The identical-request rule (15 s) with time_scale=0.1 clears after 1.5 s (of the simulator's pacing clock)."""
    fixed_sim.update_faults(enforce_pacing=True, time_scale=0.1)
    assert fixed_sim.sim is not None
    clock = _ManualClock()
    fixed_sim.sim.pacing.clock = clock
    contract = Stock("AAPL", "SMART", "USD", conId=265598)
    ib.RaiseRequestErrors = False
    args = (contract, "20240307-16:00:00", "60 S", "5 secs", "TRADES", True)
    assert ib.reqHistoricalData(*args)
    assert not ib.reqHistoricalData(*args)
    clock.now += IDENTICAL_WINDOW_S * 0.1  # the rule is 'within' the window: at its end it no longer applies
    assert ib.reqHistoricalData(*args)
    assert fixed_sim.snapshot()["pacing_violations_by_rule"] == {"identical request within 15 s": 1}


def test_drop_after_n_messages(fixed_sim: EmbeddedSimulator) -> None:
    fixed_sim.update_faults(drop_after_messages=8)
    client = IB()
    client.connect(fixed_sim.host, fixed_sim.port, clientId=30, readonly=True, timeout=5)
    contract = Stock("AAPL", "SMART", "USD", conId=265598)
    with pytest.raises(ConnectionError):
        for _ in range(5):
            client.reqHistoricalData(contract, "", "1 D", "1 hour", "TRADES", True, timeout=5)
    assert not client.isConnected()
    client.disconnect()


def test_drop_at_a_given_time(fixed_sim: EmbeddedSimulator) -> None:
    fixed_sim.update_faults(drop_after_seconds=0.3)
    client = IB()
    client.connect(fixed_sim.host, fixed_sim.port, clientId=32, readonly=True, timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        client.sleep(2)
    assert 0.2 < time.monotonic() - started < 1.5
    assert not client.isConnected()
    client.disconnect()


def test_connectivity_lost_then_restored_events(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    codes: list[int] = []
    ib.errorEvent += lambda _req, code, _msg, _c: codes.append(code)
    fixed_sim.lose_connectivity(restore_after=0.3)
    _wait_until(lambda: len(codes) >= 2, ib)
    assert codes[:2] == [1100, 1102]


def test_restart_drops_and_comes_back(fixed_sim: EmbeddedSimulator, ib: IB) -> None:
    fixed_sim.restart(down_for=0.3)
    with pytest.raises(ConnectionError, match="Socket disconnect"):  # ib_async surfaces the drop in its loop
        ib.sleep(0.1)
    assert not ib.isConnected()
    client = IB()
    client.connect(fixed_sim.host, fixed_sim.port, clientId=31, readonly=True, timeout=5)
    assert client.isConnected()
    client.disconnect()


def test_bad_bars_are_injected_and_recorded(ib: IB, fixed_sim: EmbeddedSimulator) -> None:
    """Every recorded injection is visible in what the client received, and nothing else is bad."""
    fixed_sim.update_faults(bad_bars={"high-below-low": 11, "negative-volume": 7, "duplicate-ts": 23,
                                      "misaligned-ts": 29})
    contract = Stock("AAPL", "SMART", "USD", conId=265598)
    bars = ib.reqHistoricalData(contract, "20240307-21:00:00", "1 D", "1 min", "TRADES", True, formatDate=2)
    injected = fixed_sim.snapshot()["injected_bad_bars"]
    by_kind: dict[str, set[datetime]] = {}
    for item in injected:
        by_kind.setdefault(item["kind"], set()).add(datetime.fromisoformat(item["ts"]))
    assert {k: len(v) for k, v in by_kind.items()} == {
        "high-below-low": 35, "negative-volume": 50, "duplicate-ts": 13, "misaligned-ts": 11}
    timestamps = [b.date for b in bars]
    assert len(bars) == 390 + 13
    assert {b.date for b in bars if b.high < b.low} == by_kind["high-below-low"]
    assert {b.date for b in bars if b.volume < 0} == by_kind["negative-volume"]
    assert {t for t in timestamps if timestamps.count(t) > 1} == by_kind["duplicate-ts"]
    assert {t for t in timestamps if t.second != 0} == by_kind["misaligned-ts"]


def test_counters_connections_and_bytes(fixed_sim: EmbeddedSimulator) -> None:
    client = IB()
    client.connect(fixed_sim.host, fixed_sim.port, clientId=40, readonly=True, timeout=5)
    snap = fixed_sim.snapshot()
    assert snap["connections_open"] == 1 and snap["connections_total"] == 1
    assert snap["bytes_received"] > 20 and snap["bytes_sent"] > 50
    assert snap["live_client_ids"] == [40]
    assert snap["requests"]["startApi"] == 1
    client.disconnect()


def test_replay_round_trip(tmp_path: Path) -> None:
    """Bars written to a CSV come back through the wire unchanged."""
    start = datetime(2024, 3, 7, 14, 30, tzinfo=UTC)
    frame = pl.DataFrame({
        "symbol": ["AAPL"] * 30,
        "ts": [start + timedelta(minutes=i) for i in range(30)],
        "open": [100.0 + i for i in range(30)],
        "high": [101.0 + i for i in range(30)],
        "low": [99.0 + i for i in range(30)],
        "close": [100.5 + i for i in range(30)],
        "volume": [1000.0 + i for i in range(30)],
    })
    path = tmp_path / "bars.csv"
    frame.write_csv(path)
    from ibkr_flows.sim.replay_bars import ReplayBars

    with EmbeddedSimulator(bar_source=ReplayBars(path)) as sim:
        client = IB()
        client.connect(sim.host, sim.port, clientId=41, readonly=True, timeout=5)
        contract = Stock("AAPL", "SMART", "USD", conId=265598)
        bars = client.reqHistoricalData(contract, "20240307-15:00:00", "1800 S", "1 min", "TRADES", True,
                                        formatDate=2)
        client.disconnect()
    assert [b.date for b in bars] == frame["ts"].to_list()
    assert [b.close for b in bars] == frame["close"].to_list()
    assert [b.volume for b in bars] == frame["volume"].to_list()
