"""The server versions the simulator speaks, and each version's shape of the messages it sends.

TWS answers the greeting with one version both sides speak and from then on writes every message in that
version's format; IB's decoders (`ibapi/decoder.py`, ib_async's) read fields by the negotiated `serverVersion`,
so a v178 message sent to a client that was promised 151 is misread or crashes its decoder. Handlers build every
message in its version-178 shape; `Session.send` passes it through `for_version`, which rewrites the few messages
whose fields changed between `MIN_SERVER_VERSION` and 178. Version numbers are IB's (`ibapi.server_versions`).
"""

from __future__ import annotations

from ibkr_flows.ib.message_ids import ServerMessage

SERVER_VERSION = 178
"""ib_async 2.1's maximum: 194+ changes ERR_MSG, 196+ adds HISTORICAL_DATA_END, 201+ is protobuf."""

MIN_SERVER_VERSION = 124
"""The oldest version the simulator serves faithfully: from 124 (SYNT_REALTIME_BARS) on, reqHistoricalData
carries keepUpToDate and HISTORICAL_DATA has neither a version field nor per-bar hasGaps, the shapes the request
parser and the bar replies use. A client that cannot speak 124 or later is refused at the handshake (the socket
closes without an answer), as TWS refuses a range it does not support."""

MARKET_RULES = 126
REAL_EXPIRATION_DATE = 134
ORDER_CONTAINER = 145
"""placeOrder lost its version field: the order id moved from field 2 to field 1."""
STOCK_TYPE = 152
MARKET_DATA_IN_SHARES = 159
"""Tick sizes and volume of US stocks in shares; before, in round lots of `_MD_SIZE_MULTIPLIER` shares."""
FRACTIONAL_SIZE_SUPPORT = 163
SIZE_RULES = 164
ADVANCED_ORDER_REJECT = 166
BOND_ISSUERID = 176

_CONTRACT_DATA_VERSION = 8
"""The version field CONTRACT_DATA carried before SIZE_RULES dropped it."""
_MD_SIZE_MULTIPLIER = 100
"""mdSizeMultiplier (sent 110..163): a round lot of US stock, the unit of tick sizes before 159."""
_CONTRACT_SECID_COUNT = 30
"""Index of secIdCount in a v178 CONTRACT_DATA frame (message id at 0)."""
_CONTRACT_MIN_TICK = 13
"""Index of minTick in a v178 CONTRACT_DATA frame; mdSizeMultiplier followed it before SIZE_RULES."""
_TICK_SIZE_FIELD = {ServerMessage.TICK_PRICE: 5, ServerMessage.TICK_SIZE: 4}
"""Where TICK_PRICE and TICK_SIZE carry their size."""


def negotiate(client_min: int, client_max: int) -> int | None:
    """The version to announce for a client's range: the highest both speak, or None when the ranges miss."""
    version = min(client_max, SERVER_VERSION)
    if version < max(client_min, MIN_SERVER_VERSION):
        return None
    return version


def for_version(fields: list[object], version: int) -> list[object]:
    """A v178-shaped server message rewritten for `version` (unchanged when nothing differs)."""
    if version >= SERVER_VERSION or not fields:
        return fields
    match fields[0]:
        case ServerMessage.ERR_MSG if version < ADVANCED_ORDER_REJECT:
            return fields[:5]  # no advancedOrderRejectJson
        case ServerMessage.CONTRACT_DATA:
            return _contract_data(fields, version)
        case ServerMessage.SYMBOL_SAMPLES if version < BOND_ISSUERID:
            return _symbol_samples_without_issuer(fields)
        case ServerMessage.TICK_PRICE | ServerMessage.TICK_SIZE if version < MARKET_DATA_IN_SHARES:
            return _sizes_in_lots(fields)
    return fields


def order_id_field(version: int) -> int:
    """Where placeOrder carries the order id at `version`."""
    return 1 if version >= ORDER_CONTAINER else 2


def _contract_data(fields: list[object], version: int) -> list[object]:
    """CONTRACT_DATA as `ibapi.decoder.processContractDataMsg` reads it at `version`."""
    if version >= SIZE_RULES:
        return fields
    tail_at = _CONTRACT_SECID_COUNT + 1 + 2 * int(fields[_CONTRACT_SECID_COUNT])  # type: ignore[call-overload]
    agg_group, under_symbol, under_sec_type, market_rules, real_expiry, stock_type, min_size = \
        fields[tail_at : tail_at + 7]
    # before SIZE_RULES: a version field after the id, mdSizeMultiplier after minTick, no size rules at the end
    head = [fields[0], _CONTRACT_DATA_VERSION, *fields[1 : _CONTRACT_MIN_TICK + 1], _MD_SIZE_MULTIPLIER,
            *fields[_CONTRACT_MIN_TICK + 1 : tail_at]]
    tail = [agg_group, under_symbol, under_sec_type]
    if version >= MARKET_RULES:
        tail.append(market_rules)
    if version >= REAL_EXPIRATION_DATE:
        tail.append(real_expiry)
    if version >= STOCK_TYPE:
        tail.append(stock_type)
    if version >= FRACTIONAL_SIZE_SUPPORT:
        tail.append(min_size)  # sizeMinTick, which SIZE_RULES split into minSize and the two increments
    return head + tail


def _symbol_samples_without_issuer(fields: list[object]) -> list[object]:
    """SYMBOL_SAMPLES before BOND_ISSUERID: each description ends after its derivative sec types."""
    out = fields[:3]
    at = 3
    for _ in range(int(fields[2])):  # type: ignore[call-overload]
        derivative_count = int(fields[at + 5])  # type: ignore[call-overload]
        end = at + 6 + derivative_count
        out += fields[at:end]
        at = end + 2  # skip description, issuerId
    return out


def _sizes_in_lots(fields: list[object]) -> list[object]:
    """A tick's size in round lots (whole lots, as TWS sent them), for clients before MARKET_DATA_IN_SHARES."""
    at = _TICK_SIZE_FIELD[fields[0]]  # type: ignore[index]
    size = fields[at]
    if size in ("", None):
        return fields
    return [*fields[:at], int(float(size)) // _MD_SIZE_MULTIPLIER, *fields[at + 1 :]]  # type: ignore[arg-type]
