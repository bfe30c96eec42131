"""The cost and sizing models as the grid kernel charges them: records numba compiles, and the engine's formulas
(`costs`, `sizing`) transcribed step for step so that every fill costs the same to the last bit."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ibkr_flows.backtest.grid.compiled import jit

# Commission kinds: NONE is NoCommission, PER_SHARE is IBKR's schedule (Fixed or Tiered), PERCENT a value fraction.
COMMISSION_NONE, COMMISSION_PER_SHARE, COMMISSION_PERCENT = 0, 1, 2
# Sizing kinds: AllIn, FixedShares, FixedFraction.
SIZING_ALL_IN, SIZING_FIXED_SHARES, SIZING_FIXED_FRACTION = 0, 1, 2


class CommissionRule(NamedTuple):
    """The commission model as the kernel charges it: `kind` picks the formula, the fields it does not use are 0.
    A record, not a model object, because numba compiles named tuples (as plain structs) but not dataclasses."""

    kind: int  # COMMISSION_NONE, COMMISSION_PER_SHARE or COMMISSION_PERCENT
    per_share: float
    minimum: float
    max_rate: float
    rate: float


class SizingRule(NamedTuple):
    """The sizing model: `kind` picks the rule, `fixed_shares` is FixedShares' count, `fraction` FixedFraction's."""

    kind: int  # SIZING_ALL_IN, SIZING_FIXED_SHARES or SIZING_FIXED_FRACTION
    fixed_shares: int
    fraction: float


@jit
def commission_of(commission: CommissionRule, shares: int, price: float) -> float:
    """costs.IBKRFixed / IBKRTiered (`_per_share_order`), PercentCommission, NoCommission."""
    if commission.kind == COMMISSION_PER_SHARE:
        if shares == 0:
            return 0.0
        return min(max(shares * commission.per_share, commission.minimum), commission.max_rate * shares * price)
    if commission.kind == COMMISSION_PERCENT:
        return commission.rate * shares * price
    return 0.0


@jit
def _affordable_shares(budget: float, price: float, commission: CommissionRule) -> int:
    """sizing.affordable_shares, step for step."""
    if budget <= 0 or price <= 0:
        return 0
    shares = int(np.floor(budget / price))
    while shares > 0:
        excess = shares * price + commission_of(commission, shares, price) - budget
        if not excess > 0:
            break
        shares -= max(1, int(np.ceil(excess / price)))
    shares = max(shares, 0)
    while (shares + 1) * price + commission_of(commission, shares + 1, price) <= budget:
        shares += 1
    return shares


@jit
def entry_size(cash: float, price: float, sizing: SizingRule, commission: CommissionRule) -> int:
    """sizing.AllIn / FixedShares / FixedFraction."""
    if sizing.kind == SIZING_FIXED_FRACTION:
        return _affordable_shares(sizing.fraction * cash, price, commission)
    affordable = _affordable_shares(cash, price, commission)
    if sizing.kind == SIZING_FIXED_SHARES:
        return min(sizing.fixed_shares, affordable)
    return affordable
