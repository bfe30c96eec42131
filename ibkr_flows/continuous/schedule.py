"""When a continuous series rolls: from the contracts with stored bars (by expiry) and the rule, the first session
on each next contract. Contract i is held on the sessions [roll i-1, roll i); the first from the start of its
bars, the last until its bars end."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date

import polars as pl

from ibkr_flows.continuous.contracts import ContractBars, daily_volume
from ibkr_flows.continuous.errors import ContinuousError
from ibkr_flows.continuous.rules import RollKind, RollRule
from ibkr_flows.continuous.sessions import next_session, session_before


@dataclass(frozen=True)
class Roll:
    roll_session: date
    """The first session on `to_con_id`."""
    from_con_id: int
    to_con_id: int
    reason: str


def roll_schedule(inputs: ContractBars, rule: RollRule, calendar: str) -> list[Roll]:
    """The rolls between consecutive contracts (by expiry), oldest first: one fewer than the contracts."""
    contracts = inputs.contracts.rows(named=True)
    pairs = list(itertools.pairwise(contracts))
    if rule.kind is RollKind.SESSIONS_BEFORE_EXPIRY:
        rolls = [Roll(session_before(held["expiry"], rule.sessions, calendar), held["con_id"], nxt["con_id"],
                      f"{rule.sessions} sessions before {held['instrument_id']} expires {held['expiry']}")
                 for held, nxt in pairs]
    else:
        rolls = _volume_rolls(inputs, pairs, calendar)
    for earlier, later in itertools.pairwise(rolls):
        if later.roll_session <= earlier.roll_session:
            raise ContinuousError(f"rule {rule} holds contract {later.from_con_id} on no session (rolls on "
                                  f"{earlier.roll_session} and {later.roll_session}). Fix: a smaller days:N")
    return rolls


def _volume_rolls(inputs: ContractBars, pairs: list[tuple[dict, dict]], calendar: str) -> list[Roll]:
    """Each held contract rolls the session after the first session (from when it was rolled into) on which the
    next contract traded more; failing that, the session after the held contract's last bar."""
    volumes = daily_volume(inputs.bars)
    rolls: list[Roll] = []
    held_from: date | None = None
    for held, nxt in pairs:
        side_by_side = (
            volumes.filter(pl.col("con_id") == held["con_id"]).select("session", held_volume="volume")
            .join(volumes.filter(pl.col("con_id") == nxt["con_id"]).select("session", next_volume="volume"),
                  on="session", how="full", coalesce=True)
            .fill_null(0.0)
            .sort("session")
        )
        held_sessions = side_by_side.filter(pl.col("held_volume") > 0)["session"]
        last_held = held_sessions.max() if held_sessions.len() else None
        window = side_by_side.filter(
            pl.col("session") >= held_from if held_from is not None else pl.lit(True),
            pl.col("session") <= last_held if last_held is not None else pl.lit(True))
        crossed = window.filter(pl.col("next_volume") > pl.col("held_volume"))
        if crossed.height:
            day, held_volume, next_volume = crossed.row(0)
            reason = (f"{nxt['instrument_id']} traded {next_volume:,.0f} > {held['instrument_id']} "
                      f"{held_volume:,.0f} on {day}")
        else:
            day = last_held if last_held is not None else side_by_side["session"].min()
            reason = f"no volume crossover while {held['instrument_id']} traded: rolled after its last bar ({day})"
        roll = Roll(next_session(day, calendar), held["con_id"], nxt["con_id"], reason)
        rolls.append(roll)
        held_from = roll.roll_session
    return rolls
