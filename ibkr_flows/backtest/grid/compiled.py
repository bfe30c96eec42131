"""How the grid's numba code is compiled: one decorator, so every kernel function shares the same options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import polars as pl


def jit(function: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Compile with an on-disk cache (compilation takes seconds and would otherwise be paid by every process,
    e.g. each Prefect task); without a writable cache location, compile per process instead of failing. The GIL
    is released so that threads (the evaluator's, Prefect's thread task runner) run pairs on every core: numba's
    own `parallel=True` is not used because its default threading layer aborts when called from two threads.
    `options` go to numba (`@jit(fastmath=...)`)."""
    if function is None:
        return lambda f: jit(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, **options)(function)


def kernel_column(bars: pl.DataFrame, name: str) -> np.ndarray:
    """A column as a kernel takes it: contiguous, read-only, float64 (datetimes: their int64 ticks); a view, no
    copy, where polars' array already is one.

    Read-only is part of an array's numba type, and numba compiles a kernel once per combination of argument
    types. Polars hands out a column held in one chunk as a read-only view and one held in several (a sliced or
    concatenated frame: the grid flow's bars) as a writable copy, so the same kernels were compiled twice, once
    per kind, and a Dask worker's preload (which warms them on bars of one chunk) warmed the other kind's."""
    values = bars[name].to_numpy()
    values = values.view(np.int64) if values.dtype.kind == "M" else values.astype(np.float64, copy=False)
    array = np.ascontiguousarray(values).view()
    array.flags.writeable = False
    return array
