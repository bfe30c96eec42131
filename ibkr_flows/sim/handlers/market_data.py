"""Streaming market data as TWS serves it to a paper account without live data subscriptions.

That is the account this project is built for, and TWS never leaves these requests unanswered:

- reqMktData with market data type 1 (live, the default) or 2 (frozen): error 354 "not subscribed. Delayed market
  data is available." and no ticks; the client has to ask for delayed data itself.
- reqMktData after reqMarketDataType(3 or 4): tickReqParams, 10167 "Displaying delayed market data", the market
  data type, then the delayed ticks (bid, ask, last with sizes, high, low, volume, close, open, last timestamp)
  taken from the bar source 15 minutes back, as IB delays US equities. A snapshot request ends with
  tickSnapshotEnd; a streaming one gets this one set (the simulator has no live tape to stream).
- reqRealTimeBars: error 420 "Invalid Real-time Query: No market data permissions"; real-time bars have no
  delayed form.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.handlers.contracts import resolve
from ibkr_flows.sim.requests import ContractRef

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

DELAY = timedelta(minutes=15)
"""IB's delay for US equities' delayed data."""
DELAYED_TYPES = frozenset({3, 4})
SMART_BBO_EXCHANGE = "9c0001"
"""The bboExchange TWS reports for SMART-routed US stocks (a key for reqSmartComponents)."""
SNAPSHOT_PERMISSIONS = 3

DELAYED_BID, DELAYED_ASK, DELAYED_LAST = 66, 67, 68
DELAYED_HIGH, DELAYED_LOW, DELAYED_VOLUME, DELAYED_CLOSE, DELAYED_OPEN = 72, 73, 74, 75, 76
DELAYED_LAST_TIMESTAMP = 88
"""IB's delayed tick types (`ibapi.ticktype.TickTypeEnum`); a delayed bid/ask/last carries its size."""


def market_data_type(session: Session, fields: list[str]) -> None:
    """reqMarketDataType `59, 1, type`: remembered for this connection's later reqMktData; 321 for a type other
    than 1 live, 2 frozen, 3 delayed, 4 delayed frozen."""
    data_type = int(fields[2])
    if not 1 <= data_type <= 4:
        session.send(msg.error(msg.NO_REQUEST, msg.invalid_request(f"Invalid market data type {data_type}")))
        return
    session.market_data_type = data_type


def mkt_data(session: Session, fields: list[str]) -> None:
    """`1, 11, reqId, <12 contract fields>, deltaNeutral flag [, conId, delta, price], genericTickList, snapshot,
    regulatorySnapshot, mktDataOptions` (non-BAG contracts)."""
    req_id = int(fields[2])
    contract = ContractRef.from_fields(fields[3:15])
    after_delta_neutral = 16 + (3 if fields[15] == "1" else 0)
    snapshot = fields[after_delta_neutral + 1] == "1"
    data_type = session.market_data_type

    async def work() -> None:
        inst = resolve(session, req_id, contract)
        if inst is None or session.sim.connectivity_lost:
            return
        session.send(msg.tick_req_params(req_id, inst.min_tick, SMART_BBO_EXCHANGE, SNAPSHOT_PERMISSIONS))
        if data_type not in DELAYED_TYPES:
            session.send(msg.error(req_id, msg.market_data_not_subscribed(inst.symbol, inst.primary_exchange,
                                                                          inst.trading_class)))
            return
        session.send(msg.error(req_id, msg.DELAYED_DATA_DISPLAYED))
        session.send(msg.market_data_type(req_id, data_type))
        for tick in _delayed_ticks(session, req_id, inst.symbol, inst.min_tick):
            session.send(tick)
        if snapshot:
            session.send(msg.tick_snapshot_end(req_id))

    session.spawn(req_id, work)


def cancel_mkt_data(session: Session, fields: list[str]) -> None:
    session.cancel(int(fields[2]))


def real_time_bars(session: Session, fields: list[str]) -> None:
    """`50, 3, reqId, <12 contract fields>, barSize, whatToShow, useRTH, realTimeBarsOptions`."""
    req_id = int(fields[2])
    contract = ContractRef.from_fields(fields[3:15])

    async def work() -> None:
        inst = resolve(session, req_id, contract)
        if inst is not None:
            session.send(msg.error(req_id, msg.realtime_no_permissions(inst.primary_exchange)))

    session.spawn(req_id, work)


def _delayed_ticks(session: Session, req_id: int, symbol: str, min_tick: float) -> list[list[object]]:
    """One set of delayed ticks from the latest daily bars as of 15 minutes ago (none when the source has no
    bars there, e.g. a replay file without this symbol)."""
    sim = session.sim
    as_of = sim.clock() - DELAY
    try:
        bars = sim.bar_source.bars(symbol, "1 day", "TRADES", True, as_of - timedelta(days=10), as_of)
    except ValueError:
        return []
    if bars.is_empty():
        return []
    last = bars.row(-1, named=True)
    previous_close = bars["close"][-2] if bars.height > 1 else last["open"]
    price = round(last["close"], 2)
    return [
        msg.tick_price(req_id, DELAYED_BID, round(price - min_tick, 2), 300),
        msg.tick_price(req_id, DELAYED_ASK, round(price + min_tick, 2), 200),
        msg.tick_price(req_id, DELAYED_LAST, price, 100),
        msg.tick_price(req_id, DELAYED_HIGH, round(last["high"], 2)),
        msg.tick_price(req_id, DELAYED_LOW, round(last["low"], 2)),
        msg.tick_size(req_id, DELAYED_VOLUME, round(last["volume"])),
        msg.tick_price(req_id, DELAYED_CLOSE, round(previous_close, 2)),
        msg.tick_price(req_id, DELAYED_OPEN, round(last["open"], 2)),
        msg.tick_string(req_id, DELAYED_LAST_TIMESTAMP, str(int(as_of.timestamp()))),
    ]
