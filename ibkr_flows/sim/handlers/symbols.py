"""reqMatchingSymbols: TWS's symbol search, over the simulator's universe.

TWS matches the start of a ticker or a word of the security's name and returns at most 16 descriptions; the
same pattern always gets the same list, so tests can compare it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ibkr_flows.sim import messages as msg
from ibkr_flows.sim.universe import Instrument

if TYPE_CHECKING:
    from ibkr_flows.sim.session import Session

MAX_MATCHES = 16


def matching_symbols(session: Session, fields: list[str]) -> None:
    """`81, reqId, pattern`."""
    req_id = int(fields[1])
    pattern = fields[2]

    async def work() -> None:
        session.send(msg.symbol_samples(req_id, matches(session.sim.universe.instruments.values(), pattern)))

    session.spawn(req_id, work)


def matches(instruments: Iterable[Instrument], pattern: str) -> list[Instrument]:
    """Exact ticker first, then tickers starting with `pattern`, then names with a word starting with it."""
    wanted = pattern.strip().upper()
    if not wanted:
        return []
    pool = sorted(instruments, key=lambda inst: inst.symbol)
    exact = [i for i in pool if i.symbol == wanted]
    prefix = [i for i in pool if i.symbol.startswith(wanted) and i not in exact]
    named = [i for i in pool if i not in exact and i not in prefix
             and any(word.startswith(wanted) for word in i.long_name.upper().split())]
    return (exact + prefix + named)[:MAX_MATCHES]
