"""Does one client's large historical answer stall the simulator's other clients? Client A asks for the largest
answer the duration limits allow (68 Y of extended-hours daily bars: built from every generated minute since 1980)
while client B times small round trips in turn: the current time, contract details, a head timestamp, 30 one-minute
bars, and a whole new connection (handshake, startApi and ib_async's start-up requests).

    .venv/bin/python bench/sim_latency.py [--duration "68 Y"] [--bar-size "1 day"] [--repeats 2]

Three simulators in turn, each in its own process, and A in another (so neither the simulator's work nor A's
decoding shares an interpreter lock or event loop with B): B alone (the idle baseline), then B beside A with every
answer built on the event loop (`inline_answer_limit` beyond any window), then with the default limit (large
answers built in worker processes, `sim.answers`). The goal (issue 20): every one of B's round trips answered
within 50 ms while A's answer is built. B's garbage collector is held off during each timed trip (it collects in
between): a gen-2 pass in B (~50 ms, ib_async's clients are cyclic garbage) would otherwise be the worst "new
connection", a pause of the client, not of the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import statistics
import sys
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ib_async import IB, Stock
from ib_async.ib import StartupFetch

from ibkr_flows.sim.server import INLINE_ANSWER_LIMIT, TWSSimulator

NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)
MIDDAY = datetime(2024, 7, 12, 17, 0, tzinfo=UTC)
AAPL = Stock("AAPL", "SMART", "USD", conId=265598)
SPY = Stock("SPY", "SMART", "USD", conId=756733)
NEVER_OFF_LOOP = 10**15
TRIP_GAP_S = 0.03
"""Between B's round trips: ib_async holds a client to 45 requests per second (a faster B would time its own
throttle, not the simulator)."""
KINDS = ("current time", "contract details", "head timestamp", "30 1-min bars", "new connection")
IDLE_TRIPS = 50


def _fixed_now() -> datetime:
    return NOW


def _serve(inline_answer_limit: int, ports: multiprocessing.Queue, stop: Event) -> None:
    async def serve() -> None:
        sim = TWSSimulator(clock=_fixed_now, inline_answer_limit=inline_answer_limit)
        await sim.start()
        ports.put(sim.port)
        await asyncio.to_thread(stop.wait)
        await sim.stop()

    asyncio.run(serve())  # then the worker processes end with the interpreter


def _client_a(port: int, big: tuple[str, str], repeats: int, sent: Event, done: Event,
              results: multiprocessing.Queue) -> None:
    """Client A in its own process: decoding a large answer would otherwise stall B's loop in this one."""

    async def ask() -> None:
        a = IB()
        await a.connectAsync("127.0.0.1", port, clientId=1, readonly=True, timeout=10)
        try:
            for _ in range(repeats):
                started = time.perf_counter()
                large = asyncio.create_task(a.reqHistoricalDataAsync(AAPL, "", big[1], big[0], "TRADES", False,
                                                                     formatDate=2, timeout=600))
                await asyncio.sleep(0.05)  # the request is at the simulator
                sent.set()
                bars = len(await large)
                results.put((time.perf_counter() - started, bars))
                sent.clear()
        finally:
            a.disconnect()
            done.set()

    asyncio.run(ask())


async def _trip(b: IB, port: int, kind: str, count: int) -> None:
    if kind == "current time":
        await b.reqCurrentTimeAsync()
    elif kind == "contract details":
        await b.reqContractDetailsAsync(SPY)
    elif kind == "head timestamp":
        await b.reqHeadTimeStampAsync(SPY, "TRADES", True, 2)
    elif kind == "30 1-min bars":
        await b.reqHistoricalDataAsync(SPY, MIDDAY, "1800 S", "1 min", "TRADES", True, formatDate=2)
    else:
        fresh = IB()
        await fresh.connectAsync("127.0.0.1", port, clientId=100 + count, readonly=True, timeout=10,
                                 fetchFields=StartupFetch.POSITIONS)
        fresh.disconnect()


async def _trips(port: int, sent: Event | None, done: Event | None) -> dict[str, list[float]]:
    """B's round-trip latencies (s) per kind: while A's requests are out, or `IDLE_TRIPS` when there is no A."""
    b = IB()
    await b.connectAsync("127.0.0.1", port, clientId=2, readonly=True, timeout=10)
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        for count, kind in enumerate(KINDS):  # warm-up: the first request of a kind loads calendars, caches
            await _trip(b, port, kind, count)
        count = len(KINDS)
        while (done is not None and not done.is_set()) or (done is None and count < len(KINDS) + IDLE_TRIPS):
            if sent is not None and not sent.is_set():
                await asyncio.sleep(0.005)
                continue
            kind = KINDS[count % len(KINDS)]
            gc.disable()  # B's own collections run between trips: a gen-2 pass over B's objects takes ~50 ms
            started = time.perf_counter()
            await _trip(b, port, kind, count)
            latencies[kind].append(time.perf_counter() - started)
            gc.enable()
            count += 1
            await asyncio.sleep(TRIP_GAP_S)
    finally:
        b.disconnect()
    return latencies


def _run_variant(limit: int, big: tuple[str, str] | None, repeats: int
                 ) -> tuple[dict[str, list[float]], list[tuple[float, int]]]:
    """B's latencies and A's (answer time, bars) per large request, against a fresh simulator process."""
    ports: multiprocessing.Queue = multiprocessing.Queue()
    results: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(limit, ports, stop))  # a daemon could not start workers
    server.start()
    try:
        port = ports.get(timeout=30)
        if big is None:
            return asyncio.run(_trips(port, None, None)), []
        sent, done = multiprocessing.Event(), multiprocessing.Event()
        client = multiprocessing.Process(target=_client_a, args=(port, big, repeats, sent, done, results))
        client.start()
        latencies = asyncio.run(_trips(port, sent, done))
        client.join()
        return latencies, [results.get() for _ in range(repeats)]
    finally:
        stop.set()
        server.join(30)
        if server.is_alive():
            server.terminate()
            server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="68 Y")
    parser.add_argument("--bar-size", default="1 day")
    parser.add_argument("--repeats", type=int, default=2, help="large requests per variant")
    args = parser.parse_args()
    big = (args.bar_size, args.duration)

    print(f"sim latency: client A asks {args.duration} of '{args.bar_size}' ETH bars ({args.repeats}x); client B's "
          f"round trips meanwhile ({' / '.join(KINDS)})")
    print(f"  {'simulator':34} {'B trips':>8} {'B worst':>9} {'B median':>9} {'A answer':>9} {'A bars':>7}  "
          f"B worst per kind (ms)")
    for label, limit, large in (("B alone (idle baseline)", INLINE_ANSWER_LIMIT, None),
                                ("built on the loop (before)", NEVER_OFF_LOOP, big),
                                ("large answers off the loop (after)", INLINE_ANSWER_LIMIT, big)):
        by_kind, answers = _run_variant(limit, large, args.repeats)
        latencies = [t for trips in by_kind.values() for t in trips]
        answer = f"{max(t for t, _ in answers):8.2f}s" if answers else f"{'-':>9}"
        bars = answers[-1][1] if answers else "-"
        kinds = ", ".join(f"{kind} {max(trips) * 1000:.1f}" for kind, trips in by_kind.items() if trips)
        print(f"  {label:34} {len(latencies):8d} {max(latencies) * 1000:7.1f}ms "
              f"{statistics.median(latencies) * 1000:7.1f}ms {answer} {bars:>7}  {kinds}")


if __name__ == "__main__":
    main()
