"""Building historical answers, on the event loop or in worker processes, and their wire encoding.

One simulator serves every client from one event loop. Years of daily bars are millions of generated minutes
(seconds of work); a worker thread was not enough to keep the loop responsive: the build holds the interpreter
lock in numpy, pandas and Python code, and every polars call of a small answer built on the loop meanwhile gives
the lock up and waits up to a switch interval (5 ms) to get it back, so a 3 ms answer took 40-65 ms
(`bench/sim_latency.py`). Large answers are therefore built, and encoded, in worker processes (`off_loop`): the
worker rebuilds the bar source from a recipe (bars are deterministic, so it serves exactly what the loop would)
and sends back the encoded frame. A source that cannot be rebuilt in another process (it does not pickle) is
served from a worker thread, as before.

Frames are encoded with one polars string build for the bars (`historical_frame`), byte-identical to encoding
each field in Python (`wire.encode_field`): polars prints floats as Python does except below 1e-4 in magnitude,
and a frame holding such a value (or a NaN or null) is encoded field by field.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import multiprocessing.util
import os
import pickle
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import polars as pl

from ibkr_flows.ib.historical import BAR_SIZES
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.wire import encode_field, encode_frame, encode_payload
from ibkr_flows.sim.bad_bars import inject_bad_bars
from ibkr_flows.sim.bars import BarSource, SyntheticBars, as_listed
from ibkr_flows.sim.faults import BadBarKind
from ibkr_flows.sim.requests import HistoricalRequest, format_bar_time, format_header_time
from ibkr_flows.sim.universe import Instrument

T = TypeVar("T")

ANSWER_WORKERS = max(2, min(4, os.cpu_count() or 2))
"""Worker processes building large answers (started on demand, shared by every simulator of the process): two
large requests build side by side, as they did on threads."""
MAX_RECIPE_BYTES = 16 * 1024 * 1024
"""A source whose pickle is larger (a big replay file) is served from a thread: shipping it with every request
would cost more than it saves."""
WORKER_SOURCES = 8
"""Bar sources a worker keeps (with their caches of generated sessions) between requests."""
WORKER_NICENESS = 10
"""Workers run at a lower priority: on a busy machine the event loop answering small requests gets the CPU before
the bulk work of a large answer (which only waits longer)."""
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "wap", "count")
"""A bar's fields after its time, in wire order."""


@dataclass(frozen=True)
class AnswerJob:
    """Everything a HISTORICAL_DATA answer is built from besides the bar source (picklable: it is sent to a worker
    process)."""

    inst: Instrument
    req: HistoricalRequest
    start: datetime
    """The window's start as the header states it (the first bar may be later: `first`)."""
    first: datetime
    end: datetime
    as_of: date
    bad_bars: dict[BadBarKind, int]
    zone: ZoneInfo


def historical_answer(source: BarSource, job: AnswerJob) -> tuple[bytes | None, list[dict[str, Any]]]:
    """The encoded HISTORICAL_DATA frame (None for an empty window) and the bars corrupted on purpose: the whole
    costly part of an answer, which touches nothing of the simulator's (so it can run anywhere)."""
    req, inst = job.req, job.inst
    injected: list[dict[str, Any]] = []
    bars = as_listed(source.bars(inst.series, req.bar_size, req.what_to_show, req.use_rth, job.first, job.end,
                                 job.as_of), inst)
    if bars.is_empty():
        return None, injected
    bars = inject_bad_bars(inst.symbol, req, bars, job.bad_bars, injected)
    return historical_frame(req, job.start, job.end, bars, job.zone), injected


def latest_bar(source: BarSource, inst: Instrument, req: HistoricalRequest, start: datetime, end: datetime,
               as_of: date) -> dict[str, Any] | None:
    """The last bar of [start, end) (a keepUpToDate update), None when there is none."""
    bars = as_listed(source.bars(inst.series, req.bar_size, req.what_to_show, req.use_rth, start, end, as_of), inst)
    return bars.row(-1, named=True) if bars.height else None


# --- encoding ---------------------------------------------------------------------------------------------------

def historical_frame(req: HistoricalRequest, start: datetime, end: datetime, bars: pl.DataFrame,
                     zone: ZoneInfo) -> bytes:
    """The HISTORICAL_DATA frame: header (request id, window, bar count), then eight fields per bar (one format in
    every server version). The bars are printed by polars in one pass, unless a value prints differently there."""
    header = [ServerMessage.HISTORICAL_DATA, req.req_id, format_header_time(start, zone), format_header_time(end, zone),
              bars.height]
    daily = BAR_SIZES[req.bar_size] >= timedelta(days=1)
    if not _prints_as_python(bars):
        return encode_frame(header + historical_bar_fields(bars, daily, req.format_date, zone))
    ts = pl.col("ts")
    if daily:
        when = ts.dt.strftime("%Y%m%d")
    elif req.format_date == 2:
        when = ts.dt.epoch("s").cast(pl.String)
    else:
        when = ts.dt.convert_time_zone(zone.key).dt.strftime(f"%Y%m%d %H:%M:%S {zone.key}")
    rows = bars.select(pl.concat_str([when, *(pl.col(c).cast(pl.String) for c in BAR_COLUMNS)], separator="\0"))
    text = "".join(encode_field(f) + "\0" for f in header) + rows.to_series().str.join("\0").item() + "\0"
    return encode_payload(text.encode("ascii", errors="backslashreplace"))


def historical_bar_fields(bars: pl.DataFrame, daily: bool, format_date: int, zone: ZoneInfo) -> list[object]:
    """Eight fields per bar, formatted one by one in Python (the reference `historical_frame` must equal)."""
    fields: list[object] = []
    for ts, *values in bars.select("ts", *BAR_COLUMNS).iter_rows():
        fields += [format_bar_time(ts, daily, format_date, zone), *values]
    return fields


def _prints_as_python(bars: pl.DataFrame) -> bool:
    """Whether polars prints every bar as Python does: times in UTC, values 64-bit floats or integers, no null, no
    NaN, no float below 1e-4 but zero (Python writes `5e-05`, polars `0.00005`)."""
    schema = bars.schema
    ts = schema["ts"]
    if not isinstance(ts, pl.Datetime) or ts.time_zone != "UTC":
        return False
    if not all(schema[c] == pl.Float64 or schema[c].is_integer() for c in BAR_COLUMNS):
        return False
    floats = [c for c in BAR_COLUMNS if schema[c] == pl.Float64]
    odd = [pl.col(c).is_nan() | pl.col(c).abs().is_between(0.0, 1e-4, closed="none") for c in floats]
    nulls = [pl.col(c).is_null() for c in ("ts", *BAR_COLUMNS)]
    return not bars.select(pl.any_horizontal(*odd, *nulls).any()).item()


# --- off the loop -----------------------------------------------------------------------------------------------

async def off_loop(source: BarSource, fn: Callable[..., T], *args: Any) -> T:
    """`fn(source, *args)` in a worker process (`fn` a module-level function, the arguments picklable), or on a
    worker thread when `source` cannot be rebuilt in another process or this process may not start any (a
    daemonic `multiprocessing` process). Jobs are handed to the pool from `_SUBMITTER`'s thread: a submit may
    start a worker (a fork, and the new interpreter's imports, ~1 CPU-second), which so starts at low priority
    and off the loop."""
    recipe = None if multiprocessing.current_process().daemon else source_recipe(source)
    if recipe is not None:
        loop = asyncio.get_running_loop()
        try:
            job = await loop.run_in_executor(_SUBMITTER, functools.partial(_pool().submit, _in_worker, recipe, fn,
                                                                           args))
            return await asyncio.wrap_future(job)
        except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool next time, a thread now
            _discard_pool()
        except RuntimeError as exc:  # the interpreter is shutting down: no new work for the pool
            if "shutdown" not in str(exc):
                raise
    return await asyncio.to_thread(fn, source, *args)


def _lower_priority() -> None:
    """This thread (on Linux, where niceness is per thread; elsewhere the whole process: then left alone), and
    whatever it starts, at `WORKER_NICENESS`."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


_SUBMITTER = ThreadPoolExecutor(1, thread_name_prefix="sim-answer-submitter", initializer=_lower_priority)


_RECIPES: weakref.WeakKeyDictionary[Any, bytes | None] = weakref.WeakKeyDictionary()
_RECIPES_LOCK = threading.Lock()


def source_recipe(source: BarSource) -> bytes | None:
    """A pickled callable that rebuilds `source` in a worker (taken once per source: a source must not change
    once served), or None when it cannot be shipped. The generator is rebuilt from its settings (its caches do
    not pickle); any other source from its own pickle."""
    with _RECIPES_LOCK:
        try:
            if source in _RECIPES:
                return _RECIPES[source]
        except TypeError:  # not weakly referable: taken again each time
            return _recipe(source)
        recipe = _RECIPES[source] = _recipe(source)
        return recipe


def _recipe(source: BarSource) -> bytes | None:
    factory: Callable[[], BarSource]
    if type(source) is SyntheticBars:
        factory = functools.partial(SyntheticBars, seed=source.seed, calendar_name=source.calendar_name,
                                    first_date=source.first_date, anchors=source.anchors, calendars=source.calendars)
    else:
        factory = functools.partial(_same, source)
    try:
        recipe = pickle.dumps(factory, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PickleError, TypeError, AttributeError, ValueError):
        return None
    return recipe if len(recipe) <= MAX_RECIPE_BYTES else None


def _same(source: BarSource) -> BarSource:
    return source


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ProcessPoolExecutor:
    """The worker processes, created on first use. Spawned, not forked: the simulator may run beside other
    threads (`EmbeddedSimulator`), and a fork would copy their locks mid-use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(ANSWER_WORKERS, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_started)
            # a process started by multiprocessing waits for its children before the executor's own exit hook
            # would stop them: stop them first (multiprocessing runs its finalizers before that wait)
            multiprocessing.util.Finalize(None, _discard_pool, kwargs={"wait": True}, exitpriority=100)
        return _POOL


def _discard_pool(*, wait: bool = False) -> None:
    """Stop the workers (`wait`: until they have ended; a build under way is finished first); the next large
    answer starts new ones."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True)


def _worker_started() -> None:
    """A worker yields the CPU to the simulator (`WORKER_NICENESS`) and ends with the process that started it,
    however that ends (a terminated simulator leaves none)."""
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)  # started niced on Linux; elsewhere from here
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="exit-with-parent", daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(0)


_SOURCES: OrderedDict[bytes, BarSource] = OrderedDict()
"""In a worker: the sources rebuilt so far, most recently used last."""


def _in_worker(recipe: bytes, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    source = _SOURCES.pop(recipe, None)
    if source is None:
        source = pickle.loads(recipe)()
    _SOURCES[recipe] = source
    while len(_SOURCES) > WORKER_SOURCES:
        _SOURCES.popitem(last=False)
    return fn(source, *args)
