"""Roll rules and back-adjustments, declared as short texts (`days:5`, `volume`; `none | difference | ratio`): the
text is what the CLI takes and what the rolls and continuous tables store, so a stored series says how it was made.

- `days:N` (default N = 5): hold a contract until N sessions before its expiry; the N-th session before the expiry
  session is the first session on the next contract. Known in advance, the same whatever volumes were stored.
- `volume`: roll when the next contract's daily volume first exceeds the held one's. The crossover is only known
  at the close of the session it happens in, so the first session on the next contract is the session after it:
  switching on the crossover session itself would use that session's volume before it was traded (look-ahead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from ibkr_flows.continuous.errors import InvalidRollRuleError

DEFAULT_SESSIONS_BEFORE_EXPIRY = 5
RULE_FORMS = ("days:5", "volume")
_DAYS = re.compile(r"^days(?::(?P<n>\d+))?$")


class RollKind(StrEnum):
    SESSIONS_BEFORE_EXPIRY = "days"
    VOLUME_CROSSOVER = "volume"


@dataclass(frozen=True)
class RollRule:
    kind: RollKind
    sessions: int = DEFAULT_SESSIONS_BEFORE_EXPIRY
    """For `days`: how many sessions before the expiry session the next contract is held from."""

    @classmethod
    def parse(cls, text: str) -> Self:
        raw = text.strip().lower()
        if raw == RollKind.VOLUME_CROSSOVER:
            return cls(RollKind.VOLUME_CROSSOVER, 0)
        match = _DAYS.match(raw)
        if match is None:
            raise InvalidRollRuleError(f"invalid roll rule {text!r}: use days:N (roll N sessions before expiry, "
                                       f"e.g. days:5) or volume (roll when the next contract trades more)")
        sessions = int(match["n"]) if match["n"] else DEFAULT_SESSIONS_BEFORE_EXPIRY
        if sessions < 1:
            raise InvalidRollRuleError(f"invalid roll rule {text!r}: days:N needs N >= 1 (a contract cannot be held "
                                       "on or after its expiry session)")
        return cls(RollKind.SESSIONS_BEFORE_EXPIRY, sessions)

    def __str__(self) -> str:
        """The canonical text stored in the tables."""
        return str(self.kind) if self.kind is RollKind.VOLUME_CROSSOVER else f"days:{self.sessions}"


class Adjustment(StrEnum):
    """How the prices before each roll are moved so the series has no jump at the roll (the latest contract's
    prices stay as traded).

    `difference` adds the gap (next close - held close at the last shared bar before the roll): price differences,
    hence P&L in points, are preserved; old prices can go negative. `ratio` multiplies by next / held close:
    percentage returns are preserved and prices stay positive. `none` stitches the raw prices: the roll shows as a
    jump no position ever earned."""

    NONE = "none"
    DIFFERENCE = "difference"
    RATIO = "ratio"

    @classmethod
    def parse(cls, text: str) -> Adjustment:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InvalidRollRuleError(f"invalid adjustment {text!r}: use one of "
                                       f"{', '.join(a.value for a in cls)}") from None
