"""Strategy registry: the names users type (CLI, flow parameters, grids) mapped to strategy classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from ibkr_flows.backtest.errors import BacktestError, UnknownStrategyError
from ibkr_flows.backtest.strategies.base import Strategy
from ibkr_flows.backtest.strategies.buy_and_hold import BuyAndHold
from ibkr_flows.backtest.strategies.donchian_breakout import DonchianBreakout
from ibkr_flows.backtest.strategies.ema_crossover import EmaCrossover
from ibkr_flows.backtest.strategies.rsi_reversion import RsiReversion
from ibkr_flows.backtest.strategies.sma_crossover import SmaCrossover

STRATEGIES: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Class decorator adding a strategy under its `name`; a second class claiming a taken name is a bug."""
    if STRATEGIES.get(cls.name, cls) is not cls:
        raise BacktestError(f"strategy name {cls.name!r} is already registered to {STRATEGIES[cls.name].__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


for _builtin in (SmaCrossover, EmaCrossover, RsiReversion, DonchianBreakout, BuyAndHold):
    register(_builtin)


def get_strategy(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(name, sorted(STRATEGIES)) from None


def strategy_params(name: str, params: Mapping[str, object] | None = None) -> Strategy:
    """The named strategy with `params` (defaults for the rest), validated; the one way user input becomes a
    strategy."""
    return get_strategy(name).from_params(params or {})


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register", "strategy_params"]
