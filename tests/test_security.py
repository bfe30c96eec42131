"""The project only reads: no order API anywhere in its code, every connection read-only, loopback by default."""

from __future__ import annotations

import ast
from pathlib import Path

from ibkr_flows.settings import IBKRSettings
from ibkr_flows.sim.embedded import EmbeddedSimulator

ROOT = Path(__file__).resolve().parents[1]
SERVER_PACKAGES = (ROOT / "ibkr_flows" / "sim",)
"""The simulator is the server side: it must know order message ids (to reject them). Everything else is client."""
ORDER_APIS = {"placeOrder", "cancelOrder", "reqGlobalCancel", "bracketOrder", "oneCancelsAll", "whatIfOrder",
              "whatIfOrderAsync", "exerciseOptions", "MarketOrder", "LimitOrder", "StopOrder", "StopLimitOrder",
              "Order", "reqAutoOpenOrders"}
CONNECT_CALLS = {"connect", "connectAsync"}
OTHER_PROTOCOL_CLIENTS = {"asyncpg"}
"""Modules whose `connect` talks to something other than TWS (Postgres for the Prefect server): not IB connections."""


def _client_modules() -> list[Path]:
    """Every Python file of the project outside the simulator, found rather than listed, so a new package (or a
    bench script, or a test) is covered the day it is added."""
    return [p for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")
            for p in top.rglob("*.py") if not any(p.is_relative_to(server) for server in SERVER_PACKAGES)]


def test_no_order_api_is_referenced() -> None:
    offenders = []
    for path in _client_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ORDER_APIS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


READ_ONLY_BY_SERVER = {"tests/test_official_client.py"}
"""IB's own client has no read-only flag: its tests run against a simulator with Read-Only API ticked (orders are
refused with 321), and `test_no_order_api_is_referenced` keeps order calls out of the file."""


def test_every_ib_connection_is_read_only() -> None:
    calls = []
    for path in _client_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CONNECT_CALLS
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in OTHER_PROTOCOL_CLIENTS)):
                readonly = {k.arg: k.value for k in node.keywords}.get("readonly")
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}",
                              isinstance(readonly, ast.Constant) and readonly.value is True))
    assert calls, "the scan found no ib_async connect call: it is looking in the wrong place"
    assert [where for where, read_only in calls
            if not read_only and where.split(":")[0] not in READ_ONLY_BY_SERVER] == []


def test_defaults_bind_and_point_to_loopback() -> None:
    assert IBKRSettings().host == "127.0.0.1"
    with EmbeddedSimulator() as sim:
        assert sim.host == "127.0.0.1"
