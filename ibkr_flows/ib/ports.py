"""The API ports TWS and IB Gateway listen on by default, and which of them reach live (real-money) accounts."""

from __future__ import annotations

WELL_KNOWN_PORTS: dict[int, str] = {
    7497: "TWS paper trading",
    7496: "TWS live trading",
    4002: "IB Gateway paper trading",
    4001: "IB Gateway live trading",
}
LIVE_PORTS = frozenset({7496, 4001})


def port_label(port: int) -> str:
    return WELL_KNOWN_PORTS.get(port, "a non-standard port")
