"""Dask preload for the grid flow, for a standing cluster: its first grid runs as fast as its later ones.

On a worker it imports the flow, its tasks and Prefect's task engine, and warms every built-in numba kernel,
before the worker accepts a task (without it, each worker pays those imports and the warm-up inside its first
chunk). On the scheduler it only imports: the scheduler unpickles every task it is sent, so without it the first
grid waits while the scheduler imports Prefect and the flow (~1.5 s, measured). Start a cluster with it:

    dask scheduler --port 8786 --preload flows.grid_preload
    dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1 --preload flows.grid_preload

or `LocalCluster(..., preload=[PRELOAD], scheduler_kwargs={"preload": [PRELOAD]})`. The warm-ups land in
`tasks.grid.kernel_warmups`, marked "worker start"; the start-up's parts are kept in `startup` and logged."""

from __future__ import annotations

import logging
import time
from typing import Any

PRELOAD = __name__
"""The name to give `--preload` or `preload=`."""
startup: dict[str, float] = {}
"""This process's preload: seconds importing (`imports_s`) and, on a worker, warming the kernels (`warmup_s`);
empty without it."""
logger = logging.getLogger("distributed.preloading")  # shown in the scheduler's and workers' logs


def dask_setup(server: Any) -> None:
    """Called by distributed once per scheduler or worker process, before it serves."""
    from distributed import Worker

    started = time.perf_counter()
    import prefect.task_engine  # noqa: F401 - what runs each Prefect task in the worker
    import prefect_dask.client  # noqa: F401 - what hands it the task

    import flows.grid  # noqa: F401 - every task's context names the flow, which unpickling imports
    import tasks.grid

    startup["imports_s"] = time.perf_counter() - started
    if not isinstance(server, Worker):
        logger.info("grid preload: imported in %.2f s", startup["imports_s"])
        return
    warmed = time.perf_counter()
    warmups = tasks.grid.warm_every_kernel()
    startup["warmup_s"] = time.perf_counter() - warmed
    logger.info("worker %s: grid preload imported in %.2f s, %d numba kernels warm in %.2f s", server.name,
                startup["imports_s"], len(warmups), startup["warmup_s"])
