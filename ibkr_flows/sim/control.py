"""A line-based JSON control channel so `ibkr sim set/status/...` can steer a simulator in another process.

One request per connection: a JSON object with `cmd` and its arguments; one JSON reply. Binds loopback only:
anyone who can reach it can break the simulated TWS on purpose.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from typing import TYPE_CHECKING, Any

from ibkr_flows.sim.faults import Faults

if TYPE_CHECKING:  # the CLI's client side (`ibkr sim set`) must not load the server and its bar generator
    from ibkr_flows.sim.server import TWSSimulator

COMMANDS = ("status", "set", "reset", "drop", "restart", "lose-connectivity", "restore-connectivity", "as-of")


class ControlError(RuntimeError):
    """The control channel refused or failed a command."""


_background: set[asyncio.Task[None]] = set()
"""Keeps fire-and-forget events (restart, connectivity loss) alive until they finish."""


def _in_background(coro: Any) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _execute(sim: TWSSimulator, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "status":
        return sim.snapshot()
    if cmd == "set":
        faults = await sim.update_faults(**request.get("faults", {}))
        return {"faults": faults.to_json()}
    if cmd == "reset":
        await sim.set_faults(Faults())
        return {"faults": sim.faults.to_json()}
    if cmd == "drop":
        return {"dropped": await sim.drop_connections()}
    if cmd == "restart":
        _in_background(sim.restart(float(request.get("down_for", 5.0))))
        return {"restarting": True}
    if cmd == "lose-connectivity":
        restore = request.get("restore_after")
        _in_background(sim.lose_connectivity(None if restore is None else float(restore)))
        return {"connectivity_lost": True}
    if cmd == "restore-connectivity":
        sim.restore_connectivity()
        return {"connectivity_lost": False}
    if cmd == "as-of":  # {"cmd": "as-of", "day": "2020-08-28"}; null or "" returns to the clock's day
        day = request.get("day")
        sim.set_as_of(date.fromisoformat(day) if day else None)
        return {"as_of": day or None}
    raise ValueError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")


async def serve_control(sim: TWSSimulator, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            reply: dict[str, Any] = {"ok": True, **await _execute(sim, request)}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


def send_command(host: str, port: int, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Client side, synchronous (used by the CLI and by tests that run the simulator as a subprocess)."""

    async def roundtrip() -> dict[str, Any]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return json.loads(line)

    try:
        reply = asyncio.run(roundtrip())
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"no simulator control port at {host}:{port} ({exc})") from exc
    if not reply.pop("ok", False):
        raise ControlError(reply.get("error", "command failed"))
    return reply
