"""How the grid's numba code is compiled: one decorator, so every kernel function shares the same options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


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
