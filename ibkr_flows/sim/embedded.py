"""Run the simulator on its own event loop in a background thread.

Synchronous callers (Prefect flows, ib_async's sync API, the CLI) need a TWS that keeps answering while they
block; a thread with its own loop gives exactly that without a second process. Every control method hops onto
the simulator's loop, so it is safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import date
from typing import Any, Self, TypeVar

from ibkr_flows.sim.faults import Faults
from ibkr_flows.sim.server import TWSSimulator

T = TypeVar("T")


class EmbeddedSimulator:
    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tws-simulator", daemon=True)
        self.sim: TWSSimulator | None = None

    def start(self) -> Self:
        self._thread.start()
        self.sim = self._call(self._create())
        return self

    async def _create(self) -> TWSSimulator:
        sim = TWSSimulator(**self._kwargs)
        await sim.start()
        return sim

    def stop(self) -> None:
        if self.sim is not None and self._loop.is_running():
            self._call(self.sim.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _sync(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self._call(run())

    @property
    def _server(self) -> TWSSimulator:
        if self.sim is None:
            raise RuntimeError("simulator not started")
        return self.sim

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    # -- the same controls as TWSSimulator, callable from any thread ---------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        self._call(self._server.set_faults(faults))

    def update_faults(self, **changes: Any) -> Faults:
        return self._call(self._server.update_faults(**changes))

    def clear_faults(self) -> None:
        self.set_faults(Faults())

    def drop_connections(self) -> int:
        return self._call(self._server.drop_connections())

    def restart(self, down_for: float) -> None:
        """Blocks for `down_for` seconds while the simulated TWS is down; use `restart_in_background` to act."""
        self._call(self._server.restart(down_for), timeout=down_for + 30)

    def restart_in_background(self, down_for: float) -> None:
        asyncio.run_coroutine_threadsafe(self._server.restart(down_for), self._loop)

    def lose_connectivity(self, restore_after: float | None = None) -> None:
        asyncio.run_coroutine_threadsafe(self._server.lose_connectivity(restore_after), self._loop)

    def force_pacing_violations(self, count: int) -> None:
        """Answer the next `count` paced requests with 162, as when another program shares the TWS budget."""
        self._sync(lambda: setattr(self._server, "forced_pacing_violations", count))

    def set_as_of(self, day: date | None) -> None:
        """Live on `day` for historical data (None: the clock's day); see `TWSSimulator.as_of`."""
        self._sync(self._server.set_as_of, day)

    def restore_connectivity(self) -> None:
        self._sync(self._server.restore_connectivity)

    def snapshot(self) -> dict[str, Any]:
        return self._sync(self._server.snapshot)
