"""The doctor never crashes: programs on the port that are not (or not quite) TWS each get a verdict.

Every peer here is a real server on 127.0.0.1 with an ephemeral port: scripted asyncio servers that send garbage,
absurd length prefixes or malformed messages, Python's own HTTP server, the simulator dropping connections; and a
hypothesis property over random byte streams and random closes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ib_async import IB, Stock
from typer.testing import CliRunner

from ibkr_flows.cli.app import app
from ibkr_flows.doctor.diagnosis import Diagnosis, FailureClass, Status
from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.doctor.probe import Outcome, probe, probe_budget
from ibkr_flows.ib.codes import ErrorClass
from ibkr_flows.ib.refusals import Refusal, answer_or_refusal
from ibkr_flows.ib.wire import encode_frame
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator
from tests.conftest import settings_for
from tests.helpers_cli import cli_env

VERSION = encode_frame([178, "20260105 10:00:00 EST"])
ACCOUNTS = encode_frame([15, 1, "DU1234567"])
NEXT_ID = encode_frame([9, 1, 1])


@dataclass(frozen=True)
class Script:
    """What a fake server does with each connection: optionally wait for the client's first bytes, send chunks
    (each after a pause), then close, reset (RST) or hang until the client leaves."""

    chunks: Sequence[tuple[bytes, float]]
    read_first: bool = True
    ending: str = "close"


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        if script.read_first:
            await reader.read(1)
        for data, pause in script.chunks:
            await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()
        if script.ending == "hang":
            while await reader.read(65536):
                pass
        elif script.ending == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except ConnectionError:
        pass  # the probe may leave first
    finally:
        writer.close()


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    """A real loopback server following `script` on every connection; yields its port. On exit it lets its
    connections finish (the client has closed them) so no handler is cancelled mid-way."""
    handlers: set[asyncio.Task[None]] = set()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.create_task(_serve(script, reader, writer)))

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if handlers:
            await asyncio.wait(handlers, timeout=2)


@contextmanager
def background_server(script: Script) -> Iterator[int]:
    """`scripted_server` on its own loop in a thread, for the synchronous doctor and the CLI."""
    loop = asyncio.new_event_loop()
    listening: Future[int] = Future()
    stop = asyncio.Event()

    async def run() -> None:
        async with scripted_server(script) as port:
            listening.set_result(port)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        yield listening.result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=5)
        loop.close()


def fast(port: int) -> IBKRSettings:
    return IBKRSettings(host="127.0.0.1", port=port, probe_timeout=0.5, connect_timeout=1.0, data_timeout=1.0)


def _observed(diagnosis: Diagnosis) -> str:
    return " ".join(e.observation for e in diagnosis.evidence)


GARBAGE = {
    # the version, then (after the client's startApi) bytes that are no frame at all
    "version-then-garbage": Script([(VERSION, 0), (b"\xff\xfe garbage [/bold] \x1b[31m\x07", 0.05)]),
    # a length prefix of 2^31
    "length-2^31": Script([(struct.pack(">I", 2**31) + b"zzzz", 0)]),
    "version-then-length-2^31": Script([(VERSION, 0), (struct.pack(">I", 2**31), 0.05)], ending="hang"),
    # an error message whose code is not a number
    "error-code-not-a-number": Script([(VERSION, 0), (encode_frame([4, 2, -1, "abc", "oops", ""]), 0.05)],
                                      ending="hang"),
    # half a frame, then the connection closes
    "half-a-frame-then-close": Script([(b"\x00\x00\x01\x00178\x00", 0)]),
    # a banner (SSH-style) sent before the client says anything
    "banner": Script([(b"SSH-2.0-OpenSSH_9.6\r\n", 0)], read_first=False, ending="hang"),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_is_a_not_tws_verdict_quoting_what_was_received(name: str) -> None:
    started = time.perf_counter()
    with background_server(GARBAGE[name]) as port:
        diagnosis = diagnose(fast(port))
    assert time.perf_counter() - started < 5
    assert diagnosis.status is Status.FAILED and diagnosis.failure_class is FailureClass.NOT_TWS, diagnosis.summary
    assert diagnosis.exit_code == 13
    assert "not TWS / protocol error" in diagnosis.summary
    assert "b'" in diagnosis.summary or 'b"' in diagnosis.summary  # the excerpt of what was received
    assert diagnosis.summary.isascii() and diagnosis.summary.isprintable()
    assert "ib_async connect" not in [e.step for e in diagnosis.evidence]


def test_version_then_garbage_says_the_handshake_was_answered() -> None:
    with background_server(GARBAGE["version-then-garbage"]) as port:
        diagnosis = diagnose(fast(port))
    assert "answered the TWS version handshake" in diagnosis.summary
    assert "server version 178" in _observed(diagnosis)
    assert "garbage" in diagnosis.summary


@contextmanager
def http_server() -> Iterator[int]:
    """Python's own HTTP server: it waits for a whole request line before it answers anything."""
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_plain_http_server_is_named_as_such() -> None:
    with http_server() as port:
        diagnosis = diagnose(fast(port))
    assert diagnosis.failure_class is FailureClass.NOT_TWS and diagnosis.exit_code == 13
    assert "an HTTP server, not TWS" in diagnosis.summary
    assert "HTTP/1.0 400" in diagnosis.summary
    assert "check the port" in diagnosis.remediation[0]
    assert "accept" not in " ".join(diagnosis.remediation).lower()  # not the accept-dialog advice


def test_an_http_server_that_answers_at_once_is_named_too() -> None:
    script = Script([(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 0)])
    with background_server(script) as port:
        diagnosis = diagnose(fast(port))
    assert "an HTTP server, not TWS" in diagnosis.summary


def test_a_silent_server_is_still_the_accept_dialog() -> None:
    """Silent even after the HTTP request line: what a TWS behind its 'accept incoming connection' dialog does."""
    with background_server(Script([], read_first=False, ending="hang")) as port:
        diagnosis = diagnose(fast(port))
    assert diagnosis.failure_class is FailureClass.HANDSHAKE_SILENT


def test_a_close_after_two_messages_is_named_honestly() -> None:
    with background_server(Script([(VERSION, 0), (ACCOUNTS, 0.05)])) as port:
        diagnosis = diagnose(fast(port))
    assert diagnosis.failure_class is FailureClass.CONNECTION_DROPPED, diagnosis.summary
    assert diagnosis.exit_code == 21
    assert "closed the connection during the handshake after 2 message(s)" in diagnosis.summary
    assert "restarting" in diagnosis.remediation[0]


@pytest.mark.parametrize("after", [1, 2, 6])
def test_the_simulator_dropping_connections_is_named_honestly(sim: EmbeddedSimulator, after: int) -> None:
    """The simulator closes each connection after `after` client messages: during the probe (1), during
    ib_async's startup (2), or during the doctor's own data requests (6); never 'API not ready', never a crash."""
    sim.update_faults(drop_after_messages=after)
    diagnosis = diagnose(settings_for(sim))
    assert diagnosis.failure_class is FailureClass.CONNECTION_DROPPED, diagnosis.to_markdown()
    assert "closed the connection during" in diagnosis.summary


@pytest.mark.parametrize("name", ["version-then-garbage", "error-code-not-a-number"])
def test_data_connect_json_is_strict_json_and_the_doctor_exit_code(name: str, tmp_path: Path) -> None:
    with background_server(GARBAGE[name]) as port:
        result = subprocess.run(
            [sys.executable, "-m", "ibkr_flows.cli.app", "data", "connect", "--json"],
            capture_output=True, text=True, timeout=120,
            env=cli_env(tmp_path, IBKR_PORT=str(port), IBKR_PROBE_TIMEOUT="0.5"))
    assert "Traceback" not in result.stderr, result.stderr
    verdict = json.loads(result.stdout, parse_constant=lambda token: pytest.fail(f"non-standard JSON {token}"))
    assert verdict["failure_class"] == "not-tws" and verdict["ok"] is False
    assert result.returncode == verdict["exit_code"] == 13


def test_data_connect_renders_received_bytes_that_look_like_markup() -> None:
    """The excerpt goes into a rich table: `[/bold]` in it is text, not a markup error."""
    with background_server(GARBAGE["version-then-garbage"]) as port:
        result = CliRunner().invoke(app, ["data", "connect", "--port", str(port)], env={
            "COLUMNS": "200", "IBKR_PROBE_TIMEOUT": "0.5"})
    assert result.exit_code == 13, result.output
    assert "[/bold]" in result.output and "protocol error" in result.output


def test_the_markdown_artifact_keeps_its_table_when_a_peer_sends_pipes() -> None:
    with background_server(Script([(b"|a|b|\n|c|", 0)])) as port:
        markdown = diagnose(fast(port)).to_markdown()
    evidence_rows = [line for line in markdown.splitlines() if line.startswith("| handshake")]
    assert evidence_rows and all(row.count(" | ") == 2 for row in evidence_rows), markdown


# -- the historical probe ends a refused request at once --------------------------------------------------------


@pytest.mark.parametrize(("bar_size", "what_to_show", "end"), [
    ("2 weeks", "TRADES", ""),  # not an IB bar size: 321 before the request is even admitted
    ("1 day", "ADJUSTED_LAST", "20240105 16:00:00 US/Eastern"),  # ADJUSTED_LAST takes no end date: 321
])
def test_a_refused_request_ends_at_once_with_its_code(sim: EmbeddedSimulator, bar_size: str, what_to_show: str,
                                                      end: str) -> None:
    """ib_async takes 321 for a warning and would wait out its own timeout; the doctor's watch ends at once."""
    async def ask() -> tuple[object, float]:
        ib = IB()
        await ib.connectAsync(sim.host, sim.port, 31, readonly=True, timeout=4)
        try:
            [details] = await ib.reqContractDetailsAsync(Stock("SPY", "SMART", "USD"))
            contract = details.contract
            started = time.perf_counter()
            answer = await answer_or_refusal(ib, contract, lambda own: ib.reqHistoricalDataAsync(
                own, end, "1 W", bar_size, what_to_show, True, timeout=30), timeout=20)
            return answer, time.perf_counter() - started
        finally:
            ib.disconnect()

    answer, elapsed = asyncio.run(ask())
    assert isinstance(answer, Refusal), answer
    assert answer.code == 321 and answer.error_class is ErrorClass.REQUEST and answer.req_id > 0
    assert elapsed < 3


def test_the_doctor_ends_its_data_check_on_an_error_for_its_request(sim: EmbeddedSimulator) -> None:
    started = time.perf_counter()
    diagnosis = diagnose(settings_for(sim, probe_symbol="NOSUCHSYM", data_timeout=20.0))
    assert time.perf_counter() - started < 5
    assert diagnosis.status is Status.WARNING and "IBKR_PROBE_SYMBOL" in diagnosis.warnings[0]
    assert "error 200 for request" in _observed(diagnosis)


# -- property: random peers, always a verdict within the budget -------------------------------------------------

PROBE_TIMEOUT = 0.1


def _frame(fields: list[str]) -> bytes:
    return encode_frame(fields)


_fields = st.lists(st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=8), max_size=6)
_tws_frames = st.sampled_from([VERSION, ACCOUNTS, NEXT_ID, encode_frame([4, 2, -1, 326, "in use", ""]),
                               encode_frame([4, 2, -1, 2104, "farm OK", ""]), encode_frame([53, 1]),
                               encode_frame([4, 2, -1, 321, "read only", ""]), encode_frame([15, 1, ""])])
_chunks = st.one_of(
    _tws_frames, _tws_frames, _tws_frames,  # mostly what TWS sends, in any order: reaches the later layers
    st.binary(max_size=48),
    st.builds(_frame, _fields),
    st.just(b"HTTP/1.1 200 OK\r\n\r\n"),
    st.builds(lambda length, tail: struct.pack(">I", length) + tail, st.integers(0, 2**32 - 1),
              st.binary(max_size=8)),
    st.builds(lambda code, text: _frame(["4", "2", "-1", code, text, ""]), _fields.map("".join), st.text(max_size=5)),
)
_openings = st.sampled_from([(), (VERSION,), (VERSION, ACCOUNTS), (VERSION, ACCOUNTS, NEXT_ID)])
"""How far into a correct handshake the peer gets before its random part: reaches every layer of the probe."""
_scripts = st.builds(
    lambda opening, rest, read_first, ending: Script([(data, 0.0) for data in opening] + rest, read_first, ending),
    _openings,
    st.lists(st.tuples(_chunks, st.sampled_from([0.0, 0.0, 0.01, 0.04])), max_size=4),
    st.booleans(),
    st.sampled_from(["close", "reset", "hang", "hang"]),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(script=_scripts)
def test_the_probe_always_ends_with_a_verdict_within_its_budget(script: Script) -> None:
    async def run() -> tuple[Outcome, float, str | None]:
        async with scripted_server(script) as port:
            started = time.perf_counter()
            result = await probe("127.0.0.1", port, 10, PROBE_TIMEOUT)
            return result.outcome, time.perf_counter() - started, result.received

    outcome, elapsed, received = asyncio.run(run())
    event(str(outcome))
    assert isinstance(outcome, Outcome)
    assert elapsed <= probe_budget(PROBE_TIMEOUT) + 1.0, (outcome, elapsed)
    assert received is None or (received.isascii() and received.isprintable() and len(received) < 100)
