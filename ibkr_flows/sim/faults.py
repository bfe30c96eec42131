"""What the simulator can be told to get wrong, and how.

A `Faults` value is the simulator's whole failure configuration. It can be given at start, replaced or edited at
run time (from Python, or from `ibkr sim set` through the control port), and is serialised as plain JSON so that
both routes share one vocabulary. One-shot events (drop every connection, an IB-side connectivity loss, a TWS
nightly restart) are not state and live on the server as methods instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ConnectFault(StrEnum):
    """How the connection phase misbehaves; each maps to one real-world cause the doctor must name."""

    NONE = "none"
    NOT_LISTENING = "not-listening"
    """No listener: TWS not running, API socket clients disabled, or the wrong port."""
    ACCEPT_SILENCE = "accept-silence"
    """TCP accepted, then nothing: TWS shows an 'accept incoming connection' dialog, or is still starting."""
    ACCEPT_CLOSE = "accept-close"
    """TCP accepted, then closed at once: 'Allow connections from localhost only' / Trusted IPs, or a port
    forwarder in front of a dead gateway."""
    VERSION_SILENCE = "version-silence"
    """Server version sent, then no nextValidId/accounts: TWS not logged in or the API not initialised."""
    EMPTY_ACCOUNTS = "empty-accounts"
    """Managed accounts arrive empty (`15,1,`), which ib_async never accepts as ready."""


class BadBarKind(StrEnum):
    """Malformed bars a real feed has been seen to deliver, used to exercise the quality checks."""

    HIGH_BELOW_LOW = "high-below-low"
    NEGATIVE_VOLUME = "negative-volume"
    DUPLICATE_TS = "duplicate-ts"
    MISALIGNED_TS = "misaligned-ts"


@dataclass
class Faults:
    connect: ConnectFault = ConnectFault.NONE
    busy_client_ids: set[int] = field(default_factory=set)
    """Client ids TWS reports as in use (326) although no live connection holds them, as after a SIGKILLed
    client. Ids of live connections are refused regardless."""
    read_only: bool = False
    """Answer order-related requests with 321 (TWS 'Read-Only API' checkbox)."""
    drop_after_messages: int | None = None
    """Close each connection after it has received this many client messages (handshake excluded)."""
    drop_after_seconds: float | None = None
    """Close each connection this many seconds after its API session started (a drop at a given time)."""
    latency_seconds: float = 0.0
    """Delay before answering every data request (contract details, head timestamp, historical data)."""
    farm_down: bool = False
    """HMDS farm broken: 2105 instead of 2106 at connect, and historical requests are never answered."""
    no_data_symbols: set[str] = field(default_factory=set)
    """Historical requests for these symbols get 162 'HMDS query returned no data'."""
    no_permission_symbols: set[str] = field(default_factory=set)
    """Historical requests for these symbols get 162 'No market data permissions'."""
    enforce_pacing: bool = False
    """Count historical requests by IB's rules and answer 162 'pacing violation' when one is broken."""
    pacing_all_bar_sizes: bool = False
    """IB enforces the hard limits only for bars of 30 secs or less; True applies them to every bar size."""
    time_scale: float = 1.0
    """Multiplies IB's pacing windows (15 s, 2 s, 10 min) and the keepUpToDate update period (5 s), so tests can
    run a 10-minute window in seconds."""
    bad_bars: dict[BadBarKind, int] = field(default_factory=dict)
    """Corrupt every Nth bar of each historical reply with the given kind (N >= 1)."""

    def __post_init__(self) -> None:
        """Coerce plain JSON/CLI values (strings, lists) into the types the server compares against."""
        self.connect = ConnectFault(self.connect)
        self.busy_client_ids = {int(i) for i in self.busy_client_ids}
        self.no_data_symbols = {s.upper() for s in self.no_data_symbols}
        self.no_permission_symbols = {s.upper() for s in self.no_permission_symbols}
        self.bad_bars = {BadBarKind(k): int(v) for k, v in self.bad_bars.items()}
        if any(v < 1 for v in self.bad_bars.values()):
            raise ValueError("bad_bars values are 'every Nth bar' and must be >= 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["busy_client_ids"] = sorted(self.busy_client_ids)
        data["no_data_symbols"] = sorted(self.no_data_symbols)
        data["no_permission_symbols"] = sorted(self.no_permission_symbols)
        data["bad_bars"] = {str(k): v for k, v in self.bad_bars.items()}
        data["connect"] = str(self.connect)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        return cls().updated(data)

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied; unknown keys are an error so a typo never silently does nothing."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(
                f"unknown fault setting(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **changes)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Turn CLI `key=value` pairs into `Faults.updated` changes, typed by the field they name.

    Lists are comma-separated (`busy_client_ids=10,11`), bad bars are `kind:N` pairs
    (`bad_bars=high-below-low:10,duplicate-ts:25`), booleans are true/false/1/0/yes/no.
    """
    defaults = Faults()
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not hasattr(defaults, key):
            known = ", ".join(f.name for f in dataclasses.fields(Faults))
            raise ValueError(f"expected key=value with key one of {known}; got {assignment!r}")
        current = getattr(defaults, key)
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if isinstance(current, bool):
            if raw.strip().lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
                raise ValueError(f"{key} takes true or false, got {raw!r}")
            changes[key] = raw.strip().lower() in {"true", "1", "yes", "on"}
        elif isinstance(current, dict):
            pairs = [item.partition(":") for item in items]
            if any(not n for _, _, n in pairs):
                raise ValueError(f"{key} takes kind:N pairs, e.g. high-below-low:10; got {raw!r}")
            changes[key] = {kind: int(n) for kind, _, n in pairs}
        elif isinstance(current, set):
            changes[key] = {int(i) for i in items} if key == "busy_client_ids" else set(items)
        elif key in ("drop_after_messages", "drop_after_seconds"):
            number = int if key == "drop_after_messages" else float
            changes[key] = number(raw) if raw.strip() not in {"", "none", "off"} else None
        elif isinstance(current, float):
            changes[key] = float(raw)
        else:
            changes[key] = raw.strip()
    Faults().updated(changes)  # validate now, so the CLI reports a bad value before anything starts
    return changes
