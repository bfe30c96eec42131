"""Performance metrics as pure functions of an equity curve and a trade list, shared by the engine and the grid
kernel so both report the same numbers by construction.

Conventions: returns are per bar (equity[i] / equity[i - 1] - 1), annualized with `periods_per_year` from the bar
size and the instrument's session calendar (`annualization`); Sharpe and Sortino use a risk-free rate of 0;
drawdowns are negative percentages. A ratio with a zero denominator is None when the numerator is also zero
(undefined) and +/-inf otherwise; statistics of nothing (no trades, fewer than two returns) are None.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ibkr_flows.backtest.errors import BacktestError
from ibkr_flows.ib.historical import bar_step, is_intraday

NYSE = "XNYS"
"""The calendar of a plain symbol (no instruments row: a US stock), `ib.calendars.NYSE`."""
SESSIONS_PER_YEAR = 252
"""NYSE's sessions per year, `ib.calendars.sessions_per_year("XNYS")` (tests hold the two equal): a constant, so a
US stock's backtest does not load exchange_calendars (a third of a second) to annualize."""
RTH_SESSION = timedelta(hours=6, minutes=30)
"""US equities regular trading hours, 09:30-16:00 ET: ceil(RTH_SESSION / bar size) is
`ib.calendars.full_session_bars("XNYS", True, bar size)` for every intraday size (tests hold them equal)."""
LONG_BAR_PERIODS = {"1 week": (52, "weeks"), "1 month": (12, "months")}


@dataclass(frozen=True)
class Annualization:
    periods_per_year: float
    description: str
    """The basis in words, printed next to annualized numbers because they are meaningless without it."""


def annualization(bar_size: str, bars_per_session: int | None = None, calendar: str = NYSE,
                  use_rth: bool = True) -> Annualization:
    """Bars per year on the instrument's session calendar (`ib.calendars`: XNYS, XETR, XTKS, CME_GLOBEX, FX_24_5,
    ...): its sessions per year (the mean over recent full years: NYSE 252, Xetra 254, Tokyo 244, CME Globex 258,
    FX 24/5 261), times, for intraday bars, the bars of one full session of the hours the data has (`use_rth`:
    regular or extended), counted on IB's clock grid with a partial first bar and without a mid-day break (NYSE
    RTH: ceil(6.5 h / bar size), e.g. 390 one-minute or 7 hourly bars; Tokyo 330 one-minute bars without its
    lunch; CME Globex extended hours 23 h; FX 24 h). `bars_per_session` overrides the bars per session. Weekly
    and monthly bars: 52 and 12 a year."""
    step = bar_step(bar_size)
    basis = "; Sharpe/Sortino from per-bar equity returns, risk-free rate 0"
    intraday = is_intraday(bar_size)
    if bars_per_session is not None and not intraday:
        raise BacktestError(f"bars_per_session applies to intraday bars only, not {bar_size!r}")
    if bar_size in LONG_BAR_PERIODS:
        periods, unit = LONG_BAR_PERIODS[bar_size]
        return Annualization(periods, f"{bar_size} bars, {periods} {unit} per year{basis}")
    if bars_per_session is not None and (isinstance(bars_per_session, bool) or not isinstance(bars_per_session, int)
                                         or bars_per_session <= 0):
        raise BacktestError(f"bars_per_session must be a positive integer, got {bars_per_session!r}")
    full_session = step if intraday and bars_per_session is None else None
    sessions, per_session, session = _session_basis(calendar, use_rth, full_session)
    on = "" if calendar == NYSE else f" on {calendar}"
    if not intraday:
        return Annualization(sessions, f"{bar_size} bars, {sessions} sessions per year{on}{basis}")
    if bars_per_session is not None:
        per_session, session = bars_per_session, "session (given)"
    return Annualization(
        sessions * per_session,
        f"{bar_size} bars, {per_session} bars per {session}, {sessions} sessions per year{on}{basis}")


def _session_basis(calendar: str, use_rth: bool, step: timedelta | None) -> tuple[int, int, str]:
    """The calendar's sessions per year, the `step` bars of one full session of its regular (`use_rth`) or
    extended hours (0 when `step` is None: not needed) and that session in words."""
    hours = "RTH" if use_rth else "ETH"
    if calendar == NYSE and (use_rth or step is None):  # NYSE's figures as constants (see SESSIONS_PER_YEAR)
        return SESSIONS_PER_YEAR, 0 if step is None else math.ceil(RTH_SESSION / step), f"{hours} session"
    from ibkr_flows.ib import calendars  # loads exchange_calendars: only other instruments' backtests pay for it

    bars = 0 if step is None else calendars.full_session_bars(calendar, use_rth, step)
    pause = " without its mid-day break" if calendars.calendar_named(calendar).has_breaks else ""
    return calendars.sessions_per_year(calendar), bars, f"{hours} session{pause}"


def ratio(numerator: float, denominator: float) -> float | None:
    if denominator == 0:
        return None if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / denominator


def bar_returns(equity: np.ndarray) -> np.ndarray:
    return equity[1:] / equity[:-1] - 1


def drawdown_pct(equity: np.ndarray) -> np.ndarray:
    """Percent below the running peak at each bar (0 at a new high, negative below it)."""
    return (equity / np.maximum.accumulate(equity) - 1) * 100


def max_drawdown_duration(ts: np.ndarray, drawdown: np.ndarray) -> timedelta:
    """Longest time from a peak to the bar that regains it (or to the last bar, if it never does)."""
    at_peak = np.flatnonzero(drawdown == 0)
    ends = np.append(at_peak, len(drawdown) - 1)
    underwater = ends[1:] > ends[:-1] + 1
    if not underwater.any():
        return timedelta(0)
    longest = (ts[ends[1:]] - ts[ends[:-1]])[underwater].max()
    return timedelta(microseconds=int(longest / np.timedelta64(1, "us")))


def annualized_return_pct(equity: np.ndarray, periods_per_year: float) -> float | None:
    """Compound growth per year: (final / initial) ** (periods_per_year / returns) - 1, in percent."""
    periods = len(equity) - 1
    if periods < 1:
        return None
    growth = float(equity[-1] / equity[0])
    if growth <= 0:
        return -100.0
    try:
        return (growth ** (periods_per_year / periods) - 1) * 100
    except OverflowError:  # a short, steep sample: the annualized figure is meaningless, say so with inf
        return math.inf


def annualized_volatility_pct(returns: np.ndarray, periods_per_year: float) -> float | None:
    if len(returns) < 2:
        return None
    return float(np.std(returns, ddof=1)) * math.sqrt(periods_per_year) * 100


def sharpe(returns: np.ndarray, periods_per_year: float) -> float | None:
    """Mean over sample standard deviation of per-bar returns, times sqrt(periods per year); risk-free rate 0."""
    if len(returns) < 2:
        return None
    scaled = ratio(float(np.mean(returns)), float(np.std(returns, ddof=1)))
    return None if scaled is None else scaled * math.sqrt(periods_per_year)


def sortino(returns: np.ndarray, periods_per_year: float) -> float | None:
    """Like Sharpe but over downside deviation, sqrt(mean(min(r, 0) ** 2)) across all bars; target return 0."""
    if len(returns) < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    scaled = ratio(float(np.mean(returns)), downside)
    return None if scaled is None else scaled * math.sqrt(periods_per_year)


@dataclass(frozen=True)
class TradeStats:
    trades: int
    win_rate_pct: float | None
    best_trade_pct: float | None
    worst_trade_pct: float | None
    avg_trade_pct: float | None
    """Arithmetic mean of trade returns."""
    profit_factor: float | None
    """Gross profit over gross loss."""
    expectancy: float | None
    """Mean PnL per trade after commissions, in the instrument's currency."""


def trade_stats(pnl: np.ndarray, return_pct: np.ndarray) -> TradeStats:
    if len(pnl) == 0:
        return TradeStats(0, None, None, None, None, None, None)
    return TradeStats(
        trades=len(pnl),
        win_rate_pct=float(np.mean(pnl > 0)) * 100,
        best_trade_pct=float(return_pct.max()),
        worst_trade_pct=float(return_pct.min()),
        avg_trade_pct=float(return_pct.mean()),
        profit_factor=ratio(float(pnl[pnl > 0].sum()), -float(pnl[pnl < 0].sum())),
        expectancy=float(pnl.mean()),
    )


@dataclass(frozen=True)
class Metrics:
    """One backtest's summary; percentages are in percent (12.5 means 12.5%), money in the instrument's currency
    (`BacktestResult.currency`: a currency pair's quote currency)."""

    start: datetime
    end: datetime
    bars: int
    total_return_pct: float
    annualized_return_pct: float | None
    annualized_volatility_pct: float | None
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    """Annualized return over the magnitude of the maximum drawdown."""
    max_drawdown_pct: float
    max_drawdown_duration: timedelta
    exposure_pct: float
    """Share of bars that close with a position open."""
    trades: int
    win_rate_pct: float | None
    best_trade_pct: float | None
    worst_trade_pct: float | None
    avg_trade_pct: float | None
    profit_factor: float | None
    expectancy: float | None
    buy_and_hold_return_pct: float
    """Frictionless close-to-close return of the symbol over all bars, the yardstick for total_return_pct."""
    final_equity: float
    commissions: float
    periods_per_year: float
    annualization: str


def metric_values(metrics: Metrics) -> dict[str, Any]:
    """A `Metrics` as plain values, durations in seconds: how results tables and JSON output carry it."""
    values = dataclasses.asdict(metrics)
    return {k: v.total_seconds() if isinstance(v, timedelta) else v for k, v in values.items()}


def compute_metrics(ts: np.ndarray, close: np.ndarray, equity: np.ndarray, position: np.ndarray, pnl: np.ndarray,
                    return_pct: np.ndarray, commissions: float, annual: Annualization) -> Metrics:
    """`ts` as datetime64 in UTC, `position` the shares held at each bar's close, `pnl` and `return_pct` one entry
    per trade."""
    returns = bar_returns(equity)
    drawdown = drawdown_pct(equity)
    max_drawdown = float(drawdown.min())
    annual_return = annualized_return_pct(equity, annual.periods_per_year)
    stats = trade_stats(pnl, return_pct)
    return Metrics(
        start=_utc(ts[0]),
        end=_utc(ts[-1]),
        bars=len(equity),
        total_return_pct=float(equity[-1] / equity[0] - 1) * 100,
        annualized_return_pct=annual_return,
        annualized_volatility_pct=annualized_volatility_pct(returns, annual.periods_per_year),
        sharpe=sharpe(returns, annual.periods_per_year),
        sortino=sortino(returns, annual.periods_per_year),
        calmar=None if annual_return is None else ratio(annual_return, -max_drawdown),
        max_drawdown_pct=max_drawdown,
        max_drawdown_duration=max_drawdown_duration(ts, drawdown),
        exposure_pct=float(np.mean(position != 0)) * 100,
        trades=stats.trades,
        win_rate_pct=stats.win_rate_pct,
        best_trade_pct=stats.best_trade_pct,
        worst_trade_pct=stats.worst_trade_pct,
        avg_trade_pct=stats.avg_trade_pct,
        profit_factor=stats.profit_factor,
        expectancy=stats.expectancy,
        buy_and_hold_return_pct=float(close[-1] / close[0] - 1) * 100,
        final_equity=float(equity[-1]),
        commissions=commissions,
        periods_per_year=annual.periods_per_year,
        annualization=annual.description,
    )


def _utc(instant: np.datetime64) -> datetime:
    micros = int(instant.astype("datetime64[us]").astype(np.int64))
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
