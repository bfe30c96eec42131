"""reqHeadTimeStamp and reqHistoricalData (and their cancels): pacing, refusals, then bars from the `BarSource`,
and for keepUpToDate the updates of the bar being built until the client cancels.

Every refusal carries the code and text TWS uses for it (321, 162, 200, 10314); a broken HMDS farm or lost IB
connectivity leaves requests unanswered, as with the real TWS. Both requests count against IB's pacing rules,
which one simulator applies across all its clients. The rules themselves (duration per bar size, how far back
small bars go, which whatToShow / endDateTime / keepUpToDate combinations exist) are read from `ib.historical`,
the table the ingestion plans by.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ibkr_flows.ib.codes import HMDS_PREFIX, ErrorCode
from ibkr_flows.ib.historical import (
    BAR_SIZES,
    InvalidDuration,
    duration_exceeds_max,
    oldest_available,
    request_conflict,
)
from ibkr_flows.ib.instruments import REFUSED_WHAT_TO_SHOW, InstrumentClass
from ibkr_flows.ib.message_ids import ServerMessage
from ibkr_flows.ib.pacing_rules import hard_limits_apply
from ibkr_flows.ib.sessions import bar_start, session_bounds, sessions_before
from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.answers import AnswerJob, historical_answer, latest_bar, off_loop
from ibkr_flows.sim.bars import InvalidBarSize, request_window, series_calendar
from ibkr_flows.sim.handlers.contracts import include_expired, resolve
from ibkr_flows.sim.pacing import PacedRequest
from ibkr_flows.sim.requests import (
    HeadTimestampRequest,
    HistoricalRequest,
    format_bar_time,
    parse_end_datetime,
)
from ibkr_flows.sim.universe import Instrument

if TYPE_CHECKING:
    from ibkr_flows.sim.server import TWSSimulator
    from ibkr_flows.sim.session import Session

log = logging.getLogger("ibkr.sim")

LIVE_UPDATE_SECONDS = 5.0
"""How often a keepUpToDate subscription gets the bar being built (IB does not document the period; updates are
seen every few seconds). `Faults.time_scale` shrinks it for tests."""
CONTFUT_END_CAUSE = "End date not supported with continuous futures"
"""IB serves a continuous future (CONTFUT) for historical data only and only up to now: an endDateTime is refused
(321). IB documents the restriction, not its wording: this cause is the simulator's."""
DATED_LOOKBACK = timedelta(days=40)
"""How far back the current daily, weekly or monthly bar can start."""


def head_timestamp(session: Session, fields: list[str]) -> None:
    req = HeadTimestampRequest.from_fields(fields)
    paced = PacedRequest(req.contract.con_id, req.contract.exchange, req.what_to_show, "head", "", "",
                         req.use_rth)
    if not _admit_paced(session, req.req_id, paced, small_bars=True):
        return

    expired = include_expired(fields, "data")

    async def work() -> None:
        inst = resolve(session, req.req_id, req.contract, expired=expired)
        if inst is None or _refuse_data(session, req.req_id, inst, req.what_to_show, ""):
            return
        ts = session.sim.bar_source.head_timestamp(inst.series, req.what_to_show, req.use_rth)
        text = str(int(ts.timestamp())) if req.format_date == 2 else ts.strftime("%Y%m%d-%H:%M:%S")
        session.send([ServerMessage.HEAD_TIMESTAMP, req.req_id, text])

    session.spawn(req.req_id, work, paced=True)


def cancel_head_timestamp(session: Session, fields: list[str]) -> None:
    session.cancel(int(fields[1]))


def historical_data(session: Session, fields: list[str]) -> None:
    req = HistoricalRequest.from_fields(fields)
    if req.bar_size not in BAR_SIZES:
        session.send(msg.error(req.req_id, msg.invalid_bar_size(req.bar_size, ", ".join(BAR_SIZES))))
        return
    paced = PacedRequest(req.contract.con_id, req.contract.exchange, req.what_to_show, req.end, req.duration,
                         req.bar_size, req.use_rth)
    if not _admit_paced(session, req.req_id, paced, small_bars=hard_limits_apply(req.bar_size)):
        return
    expired = include_expired(fields, "data")
    session.spawn(req.req_id, lambda: _answer_historical(session, req, expired), paced=True)


def cancel_historical_data(session: Session, fields: list[str]) -> None:
    session.cancel(int(fields[2]))


def _admit_paced(session: Session, req_id: int, request: PacedRequest, *, small_bars: bool) -> bool:
    """Apply IB's pacing rules (when enforced: the hard limits to small bars, or to every size with
    `pacing_all_bar_sizes`; the 50-open cap to all) and count the request as open; False = answered with 162."""
    sim = session.sim
    faults = sim.faults
    if sim.forced_pacing_violations > 0:
        sim.forced_pacing_violations -= 1
        sim.counters.pacing_violations += 1
        session.send(msg.error(req_id, msg.PACING_VIOLATION))
        return False
    if faults.enforce_pacing:
        violation = sim.pacing.admit(request, hard_limits=small_bars or faults.pacing_all_bar_sizes)
        if violation is not None:
            sim.counters.pacing_violations += 1
            log.info("pacing violation for request %d: %s", req_id, violation)
            session.send(msg.error(req_id, msg.PACING_VIOLATION))
            return False
    sim.pacing.open_requests += 1
    return True


def _refuse_data(session: Session, req_id: int, inst: Instrument, what_to_show: str, bar_size: str) -> bool:
    """Answer the account- and farm-level refusals, and data the instrument's class has not (TRADES of a
    currency pair); True when the request is answered (or swallowed). `bar_size` is empty for a head timestamp."""
    faults = session.sim.faults
    if faults.farm_down or session.sim.connectivity_lost:
        return True  # a broken HMDS farm or lost IB connectivity leaves requests unanswered
    if what_to_show in REFUSED_WHAT_TO_SHOW.get(InstrumentClass(inst.sec_type), frozenset()):
        session.send(msg.error(req_id, no_pair_trades(inst.symbol, bar_size)))
        return True
    if inst.symbol in faults.no_permission_symbols:
        session.send(msg.error(req_id, msg.no_permissions(inst.primary_exchange)))
        return True
    if inst.symbol in faults.no_data_symbols:
        session.send(msg.error(req_id, msg.no_data(inst.symbol, inst.exchange, what_to_show)))
        return True
    return False


PAIR_TRADES_FARM = "FXSUBPIP"
"""The data farm TWS names when it refuses TRADES of a currency pair."""


def no_pair_trades(base: str, bar_size: str) -> msg.TWSError:
    """162 for TRADES (or ADJUSTED_LAST) of a currency pair, as TWS words it: `...No historical market data for
    EUR/CASH@FXSUBPIP Last 3600` (the bar size in seconds; `1d` for daily bars), as reported by ib_insync and
    ezibpy users. The weekly and monthly labels (`1W`, `1M`) and the bare `Last` of a head-timestamp request are
    this simulator's guesses."""
    step = BAR_SIZES[bar_size] if bar_size else None
    if step is None:
        label = ""
    elif step < timedelta(days=1):
        label = f" {int(step.total_seconds())}"
    else:
        label = {"1 day": " 1d", "1 week": " 1W"}.get(bar_size, " 1M")
    return (ErrorCode.HISTORICAL_DATA_SERVICE,
            f"{HMDS_PREFIX}No historical market data for {base}/CASH@{PAIR_TRADES_FARM} Last{label}")


async def _answer_historical(session: Session, req: HistoricalRequest, expired: bool) -> None:
    sim = session.sim
    inst = resolve(session, req.req_id, req.contract, expired=expired)
    if inst is None or _refuse_data(session, req.req_id, inst, req.what_to_show, req.bar_size):
        return
    conflict = request_conflict(req.what_to_show, req.end, req.keep_up_to_date)
    if conflict is None and req.end.strip() and req.contract.sec_type.upper() == "CONTFUT":
        conflict = CONTFUT_END_CAUSE
    if conflict is not None:
        session.send(msg.error(req.req_id, msg.invalid_request(conflict)))
        return
    now = sim.history_now()
    try:
        end = parse_end_datetime(req.end, sim.tws_zone, now)
    except ValueError:
        session.send(msg.error(req.req_id, msg.invalid_end_date(req.end)))
        return
    try:
        too_long = duration_exceeds_max(req.duration, req.bar_size)
        start, end = request_window(end, req.duration, bar_size=req.bar_size, use_rth=req.use_rth,
                                    calendar=series_calendar(sim.bar_source, inst))
    except InvalidDuration as exc:
        session.send(msg.error(req.req_id, msg.invalid_request(f"Invalid duration string: {exc}")))
        return
    if too_long:
        session.send(msg.error(req.req_id, msg.time_length_exceeded()))
        return
    if sim.as_of is not None:  # living on an earlier day: the later bars do not exist yet
        end = min(end, now)
    oldest = oldest_available(req.bar_size, now)
    first = max(start, oldest) if oldest else start
    job = AnswerJob(inst, req, start, first, end, sim.adjustment_day(), sim.faults.bad_bars, sim.tws_zone)
    try:
        if answer_is_small(sim, req.bar_size, first, end):
            frame, injected = historical_answer(sim.bar_source, job)
        else:
            frame, injected = await off_loop(sim.bar_source, historical_answer, job)
    except (InvalidBarSize, ValueError) as exc:
        session.send(msg.error(req.req_id, msg.invalid_request(str(exc))))
        return
    if frame is None:
        session.send(msg.error(req.req_id, msg.no_data(inst.symbol, inst.exchange, req.what_to_show)))
        return
    sim.counters.injected_bad_bars.extend(injected)
    session.send_frame(frame)
    if req.keep_up_to_date:
        await _stream_updates(session, req, inst)


def answer_is_small(sim: TWSSimulator, bar_size: str, start: datetime, end: datetime) -> bool:
    """Whether the bars of [start, end) are built on the event loop: a window of at most `inline_answer_limit`
    base bars (minutes, or seconds for sizes under a minute), a few milliseconds of work. Larger ones go to a
    worker process (`answers.off_loop`): one event loop serves every client, and years of daily bars are millions
    of generated minutes (seconds of work) during which every other client would wait, even for the current time.
    Small answers stay inline: no process hop, and never queued behind a big one."""
    native = timedelta(seconds=1) if BAR_SIZES[bar_size] < timedelta(minutes=1) else timedelta(minutes=1)
    return (end - start) / native <= sim.inline_answer_limit


async def _stream_updates(session: Session, req: HistoricalRequest, inst: Instrument) -> None:
    """keepUpToDate: the bar being built now, every `LIVE_UPDATE_SECONDS`, until cancelHistoricalData (which
    cancels this task) or the connection ends. The clock is the simulator's, so a test clock can move fast."""
    sim = session.sim
    while True:
        await asyncio.sleep(LIVE_UPDATE_SECONDS * sim.faults.time_scale)
        bar = await _current_bar(session, req, inst)
        if bar is not None:
            session.send(_update_fields(req, bar, sim.tws_zone))


async def _current_bar(session: Session, req: HistoricalRequest, inst: Instrument) -> dict[str, Any] | None:
    """The latest bar at the simulator's now: the one being built in a session, else the last one of the last
    session (what a chart shows after the close)."""
    sim = session.sim
    now = sim.clock()
    step = BAR_SIZES[req.bar_size]
    if step >= timedelta(days=1):
        start = now - DATED_LOOKBACK
    else:
        calendar = series_calendar(sim.bar_source, inst)
        days = sessions_before(now, 1, req.use_rth, calendar)
        if not days:
            return None
        close = session_bounds(days[-1], req.use_rth, calendar)[1]
        start = bar_start(min(now, close) - timedelta(microseconds=1), step, req.use_rth, calendar)

    args = (inst, req, start, now, sim.adjustment_day())
    if answer_is_small(sim, req.bar_size, start, now):
        return latest_bar(sim.bar_source, *args)
    return await off_loop(sim.bar_source, latest_bar, *args)


def _update_fields(req: HistoricalRequest, bar: dict[str, Any], zone: ZoneInfo) -> list[object]:
    """The keepUpToDate update `90, reqId, barCount, date, open, close, high, low, WAP, volume`: note the order
    TWS uses here (open, close, high, low)."""
    daily = BAR_SIZES[req.bar_size] >= timedelta(days=1)
    return [int(ServerMessage.HISTORICAL_DATA_UPDATE), req.req_id, bar["count"],
            format_bar_time(bar["ts"], daily, req.format_date, zone),
            bar["open"], bar["close"], bar["high"], bar["low"], bar["wap"], bar["volume"]]
