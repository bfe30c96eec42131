"""Realism options of a single run: protective exits, no overnight holding, the cost of borrowing shares to short.

They need the account bar by bar (a stop depends on each bar's high and low), so a run with any of them goes
through `simulate_with_exits` instead of the engine's loop over target changes. Fill rules, all documented
conventions rather than facts about any market:

- Stop-loss and take-profit are a percent of the entry fill; the trailing stop a percent below the best price
  since entry (the highest high for a long, the lowest low for a short). The best price includes the bars before
  the one being tested and the entry fill, not the tested bar's own extreme, whose time within the bar is unknown.
- Each bar is tested from its open: an open already through a level fills at the open (a gap through a stop
  loses more than the stop; a gap through the take-profit gains more). Otherwise a low (high for a short) that
  touches the stop fills at the stop, and a high (low) that touches the take-profit fills at the take-profit. If
  one bar touches both, the stop is assumed first: the conservative reading of a bar whose path is unknown.
- Exit fills pay slippage and commission like any fill. The entry bar is tested too (its open is the entry).
- After a protective exit the position stays flat until the strategy's target changes; with entry "state" it
  would otherwise re-enter at the next open and make the stop meaningless.
- `flatten_at_close` closes any position at the close of each session's last bar (a market-on-close order); a
  session is the bars' session on the instrument's calendar (`ib.calendars`: its date in the exchange's time
  zone, a Globex evening's next trade date). The position is taken again at the next session's first open if the
  target still asks for it.
- `borrow_fee_pct` is an annual rate on the short notional at each session's last close, charged for the
  calendar days until the next session (a Friday position pays Saturday and Sunday) on a 360-day year, as
  brokers charge USD borrow. Shorts opened and closed within one session pay none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ibkr_flows.backtest.account import Account, Simulation
from ibkr_flows.backtest.errors import BacktestError

NYSE = "XNYS"
SESSION_TIME_ZONE = "America/New_York"
"""Where a NYSE session's date is read, without loading exchange_calendars (`ib.calendars` for the others)."""
BORROW_DAYS_PER_YEAR = 360


@dataclass(frozen=True)
class ExitRules:
    """The realism options; all off by default. Percentages are percent (2.0 = 2%)."""

    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None
    trailing_stop_pct: float | None = None
    flatten_at_close: bool = False
    borrow_fee_pct: float = 0.0

    def __post_init__(self) -> None:
        for name in ("stop_loss_pct", "trailing_stop_pct"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 100:
                raise BacktestError(f"{name} must be between 0 and 100 (percent below the price), got {value}")
        if self.take_profit_pct is not None and not self.take_profit_pct > 0:
            raise BacktestError(f"take_profit_pct must be positive (percent), got {self.take_profit_pct}")
        if not self.borrow_fee_pct >= 0:
            raise BacktestError(f"borrow_fee_pct must be >= 0 (an annual percent), got {self.borrow_fee_pct}")

    @property
    def active(self) -> bool:
        return self.has_stops or self.flatten_at_close or self.borrow_fee_pct > 0

    @property
    def has_stops(self) -> bool:
        return any(v is not None for v in (self.stop_loss_pct, self.take_profit_pct, self.trailing_stop_pct))

    def protective_exit(self, side: int, entry: float, best: float, open_: float, high: float, low: float
                        ) -> float | None:
        """The price a protective exit fills at on this bar (before slippage), or None; the module's rules."""
        stop = self._stop(side, entry, best)
        target = None if self.take_profit_pct is None else entry * (1 + side * self.take_profit_pct / 100)
        adverse, favourable = (low, high) if side > 0 else (high, low)
        if stop is not None and side * (open_ - stop) <= 0:
            return open_
        if target is not None and side * (open_ - target) >= 0:
            return open_
        if stop is not None and side * (adverse - stop) <= 0:
            return stop
        if target is not None and side * (favourable - target) >= 0:
            return target
        return None

    def _stop(self, side: int, entry: float, best: float) -> float | None:
        """The tighter of the fixed and the trailing stop (the one nearer the price)."""
        levels = []
        if self.stop_loss_pct is not None:
            levels.append(entry * (1 - side * self.stop_loss_pct / 100))
        if self.trailing_stop_pct is not None:
            levels.append(best * (1 - side * self.trailing_stop_pct / 100))
        if not levels:
            return None
        return max(levels) if side > 0 else min(levels)


def sessions(ts: pl.Series, calendar: str = NYSE) -> tuple[np.ndarray, np.ndarray]:
    """For each bar: whether it is its session's last bar on the instrument's `calendar`, and the calendar days from
    its session to the next one (1 after the last bar)."""
    if calendar == NYSE:
        dates = ts.dt.convert_time_zone(SESSION_TIME_ZONE).dt.date()
    else:
        from ibkr_flows.ib.calendars import session_dates  # loads exchange_calendars: only other instruments pay

        dates = ts.to_frame("ts").select(session_dates(pl.col("ts"), calendar)).to_series()
    day = dates.to_numpy().astype("datetime64[D]").astype(np.int64)
    following = np.r_[day[1:], day[-1] + 1]
    return following != day, following - day


def simulate_with_exits(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, ts: pl.Series,
                        held: np.ndarray, account: Account, rules: ExitRules, calendar: str = NYSE) -> Simulation:
    """Fill `held` (the target per bar, acted on at its open) bar by bar, applying `rules` within each bar, on the
    sessions of the instrument's `calendar`."""
    n = len(held)
    session_end, days = sessions(ts, calendar)
    equity = np.empty(n)
    position = np.empty(n, dtype=np.int64)
    previous_target = 0
    stopped = False
    best = 0.0
    for t in range(n):
        target = int(held[t])
        if target != previous_target:
            stopped, previous_target = False, target
        wanted = 0 if stopped else target
        if np.sign(account.shares) != wanted:
            if account.shares:
                account.close(t, float(open_[t]))
            if wanted:
                account.open(t, float(open_[t]), wanted)
                best = account.entry_price
        if account.shares and rules.has_stops:
            price = rules.protective_exit(account.side, account.entry_price, best, float(open_[t]), float(high[t]),
                                          float(low[t]))
            if price is not None:
                account.close(t, price)
                stopped = True
            else:
                best = max(best, float(high[t])) if account.side > 0 else min(best, float(low[t]))
        if session_end[t] and account.shares and rules.flatten_at_close:
            account.close(t, float(close[t]))
        if session_end[t] and account.shares < 0 and rules.borrow_fee_pct:
            account.charge_borrow(-account.shares * float(close[t]) * rules.borrow_fee_pct / 100
                                  / BORROW_DAYS_PER_YEAR * int(days[t]))
        equity[t] = account.cash + account.shares * close[t]
        position[t] = account.shares
    return account.simulation(equity, position)
