"""Time to verdict per failure class: the doctor vs plain ib_async, against the 1.5 s goal (issue 20).

For each failure the simulator (or a stand-in program on the port) can produce, run the doctor and, separately,
what a user without the doctor gets: a bare `ib_async.IB().connectAsync` (its `TimeoutError` after the timeout),
then, once connected, one `reqHistoricalDataAsync` like the doctor's (ib_async returns `[]` after its timeout).
Several runs each; medians side by side with what each one reported, and whether the doctor met the goal.

Run: `make bench` or `.venv/bin/python bench/doctor_verdicts.py [--runs N] [--patient]` (`--patient` runs the
doctor with `patient=True`, which waits the configured timeouts and measures a slow TWS's latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ib_async import IB, Stock

from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.doctor.timing import QUICK_BUDGET_S
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator

IB_TIMEOUT = 4.0
"""ib_async's default connect timeout."""
IB_DATA_TIMEOUT = 10.0
"""The baseline's historical request timeout: the doctor's own default `data_timeout` (ib_async's is 60 s)."""
SLOW_LATENCY_S = 12.0
"""The 'slow server' of issue 20: every data request answered after 12 s."""


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: dict[str, Any] = field(default_factory=dict)
    setup: Callable[[EmbeddedSimulator, contextlib.ExitStack], int | None] | None = None
    """Extra preparation; returns another port to diagnose (a program that is not the simulator) or None."""


def _lose_connectivity(sim: EmbeddedSimulator, stack: contextlib.ExitStack) -> None:
    sim.lose_connectivity()
    stack.callback(sim.restore_connectivity)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _http_server(_sim: EmbeddedSimulator, stack: contextlib.ExitStack) -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return server.server_address[1]


SCENARIOS: list[Scenario] = [
    Scenario("healthy"),
    Scenario("not listening", {"connect": "not-listening"}),
    Scenario("accept, then silence", {"connect": "accept-silence"}),
    Scenario("accept, then close", {"connect": "accept-close"}),
    Scenario("HTTP server on the port", setup=_http_server),
    Scenario("version, no session", {"connect": "version-silence"}),
    Scenario("empty account list", {"connect": "empty-accounts"}),
    Scenario("client id in use", {"busy_client_ids": {10}}),
    Scenario("read-only API", {"read_only": True}),
    Scenario("IB connectivity lost", setup=lambda sim, stack: _lose_connectivity(sim, stack)),
    Scenario("data farm down", {"farm_down": True}),
    Scenario(f"data {SLOW_LATENCY_S:.0f} s latency", {"latency_seconds": SLOW_LATENCY_S}),
    Scenario("no data permissions", {"no_permission_symbols": {"SPY"}}),
]


async def ib_async_alone(host: str, port: int) -> str:
    """What plain ib_async tells a user: its exception, or what its historical request returned."""
    ib = IB()
    refusals: list[int] = []
    ib.errorEvent += lambda req_id, code, _text, _contract: refusals.append(code) if req_id > 0 else None
    try:
        await ib.connectAsync(host, port, 10, timeout=IB_TIMEOUT, readonly=True)
        bars = await ib.reqHistoricalDataAsync(Stock("SPY", "SMART", "USD"), "", "1 W", "1 day", "TRADES", True,
                                               timeout=IB_DATA_TIMEOUT)
    except Exception as exc:  # the baseline's whole answer is the exception type
        return type(exc).__name__
    finally:
        ib.disconnect()
    if bars:
        return f"{len(bars)} bars"
    return f"[] (error {refusals[0]} logged)" if refusals else "[] (timed out)"


@contextlib.contextmanager
def _prepared(sim: EmbeddedSimulator, scenario: Scenario) -> Iterator[int]:
    with contextlib.ExitStack() as stack:
        sim.clear_faults()
        sim.update_faults(**scenario.faults)
        other = scenario.setup(sim, stack) if scenario.setup else None
        yield other or sim.port
    sim.clear_faults()


def measure(runs: int, patient: bool) -> list[dict[str, Any]]:
    rows = []
    with EmbeddedSimulator(port=0) as sim:
        for scenario in SCENARIOS:
            with _prepared(sim, scenario) as port:
                settings = IBKRSettings(host=sim.host, port=port, client_id=10)
                doctor_times, baseline_times = [], []
                verdict = baseline = ""
                for _ in range(runs):
                    started = time.perf_counter()
                    diagnosis = diagnose(settings, patient=patient)
                    doctor_times.append(time.perf_counter() - started)
                    verdict = f"{diagnosis.status}: {diagnosis.failure_class}"
                    started = time.perf_counter()
                    baseline = asyncio.run(ib_async_alone(sim.host, port))
                    baseline_times.append(time.perf_counter() - started)
            rows.append({
                "scenario": scenario.name,
                "doctor_s": statistics.median(doctor_times),
                "doctor_max_s": max(doctor_times),
                "doctor_verdict": verdict,
                "ib_async_s": statistics.median(baseline_times),
                "ib_async_says": baseline,
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    parser.add_argument("--patient", action="store_true", help="run the doctor with patient=True")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    rows = measure(args.runs, args.patient)
    goal_applies = not args.patient  # patient waits the configured timeouts on purpose
    mode = "patient (probe_timeout 2 s, connect_timeout 4 s, data_timeout 10 s)" if args.patient else \
        f"default (budget {QUICK_BUDGET_S} s)"
    print(f"\nTime to verdict, median (max) of {args.runs} runs. Doctor: {mode}. ib_async alone: connect timeout "
          f"{IB_TIMEOUT:.0f} s, then reqHistoricalData timeout {IB_DATA_TIMEOUT:.0f} s.\n")
    print(f"| {'scenario':<24} | {'doctor':>14} | {'<=1.5 s':<7} | {'doctor verdict':<30} | {'ib_async':>8} | "
          f"{'ib_async says':<22} |")
    print(f"|{'-' * 26}|{'-' * 16}|{'-' * 9}|{'-' * 32}|{'-' * 10}|{'-' * 24}|")
    for r in rows:
        goal = ("yes" if r["doctor_max_s"] <= QUICK_BUDGET_S else "NO") if goal_applies else "n/a"
        doctor = f"{r['doctor_s']:.2f}s ({r['doctor_max_s']:.2f})"
        print(f"| {r['scenario']:<24} | {doctor:>14} | {goal:<7} | {r['doctor_verdict']:<30} | "
              f"{r['ib_async_s']:>7.2f}s | {r['ib_async_says']:<22} |")
    worst = max(rows, key=lambda r: r["doctor_max_s"])
    print(f"\nSlowest doctor verdict: {worst['doctor_max_s']:.2f} s ({worst['scenario']})"
          + (f"; goal {QUICK_BUDGET_S} s." if goal_applies else "."))


if __name__ == "__main__":
    main()
