"""Time to verdict per failure class: the doctor vs plain `ib_async.IB().connectAsync`.

For each fault the simulator can inject, run the doctor and, separately, a bare ib_async connect (the peer
baseline: what a user without the doctor gets), several times each, and print the medians side by side with
what each one reported. Run: `make bench` or `.venv/bin/python bench/doctor_verdicts.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

from ib_async import IB

from ibkr_flows.doctor.preflight import diagnose
from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator

SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("healthy", {}),
    ("not listening", {"connect": "not-listening"}),
    ("accept, then silence", {"connect": "accept-silence"}),
    ("accept, then close", {"connect": "accept-close"}),
    ("version, no session", {"connect": "version-silence"}),
    ("empty account list", {"connect": "empty-accounts"}),
    ("client id in use", {"busy_client_ids": {10}}),
    ("read-only API", {"read_only": True}),
    ("data farm down", {"farm_down": True}),
    ("no data permissions", {"no_permission_symbols": {"SPY"}}),
]
IB_TIMEOUT = 4.0
"""ib_async's default connect timeout."""


async def ib_async_connect(host: str, port: int) -> str:
    ib = IB()
    try:
        await ib.connectAsync(host, port, 10, timeout=IB_TIMEOUT, readonly=True)
    except Exception as exc:  # the baseline's whole answer is the exception type
        return type(exc).__name__
    finally:
        ib.disconnect()
    return "connected"


def measure(runs: int) -> list[dict[str, Any]]:
    rows = []
    with EmbeddedSimulator(port=0) as sim:
        port = sim.port
        settings = IBKRSettings(host=sim.host, port=port, client_id=10)
        for name, faults in SCENARIOS:
            sim.clear_faults()
            sim.update_faults(**faults)
            doctor_times, baseline_times = [], []
            verdict = baseline = ""
            for _ in range(runs):
                started = time.perf_counter()
                diagnosis = diagnose(settings)
                doctor_times.append(time.perf_counter() - started)
                verdict = f"{diagnosis.status}: {diagnosis.failure_class}"
                started = time.perf_counter()
                baseline = asyncio.run(ib_async_connect(sim.host, port))
                baseline_times.append(time.perf_counter() - started)
            rows.append({
                "scenario": name,
                "doctor_s": statistics.median(doctor_times),
                "doctor_verdict": verdict,
                "ib_async_s": statistics.median(baseline_times),
                "ib_async_says": baseline,
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    rows = measure(args.runs)
    print(f"\nTime to verdict, median of {args.runs} runs (doctor: probe_timeout 2 s, data_timeout 10 s; "
          f"ib_async: timeout {IB_TIMEOUT:.0f} s)\n")
    print(f"| {'scenario':<22} | {'doctor':>8} | {'doctor verdict':<32} | {'ib_async':>8} | {'ib_async says':<18} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 34}|{'-' * 10}|{'-' * 20}|")
    for r in rows:
        print(f"| {r['scenario']:<22} | {r['doctor_s']:>7.2f}s | {r['doctor_verdict']:<32} | "
              f"{r['ib_async_s']:>7.2f}s | {r['ib_async_says']:<18} |")


if __name__ == "__main__":
    main()
