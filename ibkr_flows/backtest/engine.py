"""Turn a strategy's per-bar targets into fills, trades, an equity curve and metrics.

Conventions (the ones backtesting.py 0.6.6 uses with `trade_on_close=False, exclusive_orders=True,
finalize_trades=True`, so its results can be reproduced):

- A strategy decides on a bar's close; the order fills at the NEXT bar's open, so no fill ever uses a price the
  decision could not have known. The last bar's decision is never traded.
- `finalize="close"` (the default): a position still open at the end is closed at the last bar's open, like any
  other order: the end of the data is a flat decision taken at the second-to-last close, and it overrides that
  bar's own signal (no round trip that opens and closes at one price). This is backtesting.py's
  `finalize_trades=True` fill; note it is the last OPEN, not the last close, so the final bar never adds PnL.
  `finalize="open"` leaves it open, marked to market at the last close, and not counted as a trade (backtesting.py's
  default `finalize_trades=False`, vectorbt's portfolios): the second-to-last close's signal is traded too.
- `entry` (a strategy's `entries`): "state" takes a position on every bar where the strategy's condition holds,
  "cross" only where it starts to hold (`strategies.base.Entry`).
- Every bar's equity is cash plus the position marked at that bar's close.
- long_only turns a -1 target into flat; long_short reverses by closing, then opening the other side at the same
  open, sized from the cash after the close.
- Realism options (`ExitRules`: stop-loss, take-profit, trailing stop, flatten at the session close, short-borrow
  fee) switch the fill loop to `exits.simulate_with_exits`, bar by bar; their fill rules are that module's.
- Costs are charged at each fill: slippage moves the fill price against the trader, then commission is charged on
  the slipped fill. Sizing happens at entry only; a position keeps its share count until it is closed. An entry
  the cash cannot pay for is skipped, not retried. There are no margin calls: a losing short can take equity
  below zero.
- Instruments (`ContractTerms`, `BacktestConfig.terms`): money is quantity x price x multiplier (ES: 50 per point),
  fills are put on the tick grid against the trader, sizing buys whole contracts (or a pair's base units) from one
  unit's value, and cash, PnL and metrics are in the instrument's currency (a pair's quote currency).
- Futures rolls: bars may carry a `contract` column (the conId each bar of a continuous series was taken from).
  Where it changes while a position is held through that bar's open, the position is rolled at that open: both
  orders' commissions and slippage are paid, booked on the open trade, which goes on (`Account.roll`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import polars as pl

from ibkr_flows.backtest.account import Account, Simulation
from ibkr_flows.backtest.contract_terms import US_STOCK, ContractTerms
from ibkr_flows.backtest.costs import CommissionModel, IBKRFixed
from ibkr_flows.backtest.errors import BacktestError, NoBarsError
from ibkr_flows.backtest.exits import ExitRules, simulate_with_exits
from ibkr_flows.backtest.metrics import Metrics, annualization, compute_metrics, drawdown_pct
from ibkr_flows.backtest.sizing import AllIn, Sizing
from ibkr_flows.backtest.strategies import Strategy, strategy_params
from ibkr_flows.backtest.strategies.base import Entry

Mode = Literal["long_only", "long_short"]
Finalize = Literal["close", "open"]
PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED_COLUMNS = ("ts", *PRICE_COLUMNS, "volume")
CONTRACT_COLUMN = "contract"


@dataclass(frozen=True)
class BacktestConfig:
    """Everything about a run except the data. Defaults: USD 100,000, IBKR Pro Fixed commissions, no slippage,
    all-in sizing, long only, positions taken on the strategy's state and closed at the end (`entry`, `finalize`:
    the module's conventions), no realism options (`exits`). `terms` are the instrument's (default: a US stock), and
    `cash` is in its currency. Intraday bars are annualized on the sessions of its calendar (`terms.calendar`) and
    the hours the bars cover (`use_rth`: regular, or extended); `bars_per_session` overrides the bars per session."""

    strategy: str
    params: Mapping[str, object] = field(default_factory=dict)
    cash: float = 100_000.0
    commission: CommissionModel = field(default_factory=IBKRFixed)
    slippage_bps: float = 0.0
    sizing: Sizing = field(default_factory=AllIn)
    mode: Mode = "long_only"
    bars_per_session: int | None = None
    use_rth: bool = True
    entry: Entry = "state"
    finalize: Finalize = "close"
    exits: ExitRules = field(default_factory=ExitRules)
    terms: ContractTerms = US_STOCK

    def __post_init__(self) -> None:
        if not self.cash > 0:
            raise BacktestError(f"cash must be positive, got {self.cash}")
        if not self.slippage_bps >= 0:
            raise BacktestError(f"slippage_bps must be >= 0 (it works against the trader), got {self.slippage_bps}")
        if self.mode not in get_args(Mode):
            raise BacktestError(f"mode must be one of {', '.join(get_args(Mode))}, got {self.mode!r}")
        if self.finalize not in get_args(Finalize):
            raise BacktestError(f"finalize must be one of {', '.join(get_args(Finalize))}, got {self.finalize!r}")
        # fail on a bad strategy name, parameters or entry now, not when the data has been loaded
        self.build_strategy().check_entry(self.entry)

    def build_strategy(self) -> Strategy:
        return strategy_params(self.strategy, self.params)


@dataclass(frozen=True)
class BacktestResult:
    strategy: Strategy
    trades: pl.DataFrame
    """entry_time, exit_time, side, size, entry_price, exit_price (fills, slippage included), pnl (after both
    commissions and any short-borrow fee), return_pct (pnl over entry value), duration, commission (entry plus exit)."""
    equity: pl.DataFrame
    """ts, equity, drawdown_pct, position (signed shares at the close)."""
    metrics: Metrics
    currency: str = "USD"
    """What every amount (trades' PnL and commissions, equity, metrics' money) is in: the instrument's currency."""


def run_backtest(bars: pl.DataFrame, bar_size: str, config: BacktestConfig) -> BacktestResult:
    """Backtest one symbol's bars (ts, open, high, low, close, volume; sorted by ts) of IB size `bar_size`."""
    annual = annualization(bar_size, config.bars_per_session, config.terms.calendar, config.use_rth)
    _check_bars(bars, bar_size)
    strategy = config.build_strategy()
    if bars.height < strategy.warmup_bars + 3:
        raise BacktestError(
            f"{strategy} cannot trade on {bars.height} bars: it needs {strategy.warmup_bars} warm-up bars, then a bar "
            f"to decide on, one to fill on and one to exit on ({strategy.warmup_bars + 3} in all)")
    signals = strategy.signals(bars, config.entry)
    if signals.len() != bars.height or signals.null_count() or not signals.is_in([-1, 0, 1]).all():
        raise BacktestError(f"{strategy} must return one signal in {{-1, 0, 1}} per bar")
    held = held_positions(signals.to_numpy().astype(np.int8), config.mode, config.finalize)
    account = Account(config.cash, config.commission, config.slippage_bps, config.sizing, config.terms)
    rolls = roll_bars(bars)
    multiplier = config.terms.multiplier
    if config.exits.active:
        if rolls.size:
            raise BacktestError(
                f"the bars roll futures contracts {rolls.size} time(s) and realism options (stops, flatten at "
                "close, borrow fee) cannot charge rolls yet: run without them, or on one dated contract")
        sim = simulate_with_exits(*(bars[c].to_numpy() for c in PRICE_COLUMNS), bars["ts"], held, account,
                                  config.exits, config.terms.calendar)
        if multiplier != 1.0:  # the exit loop marks shares x close; the account's cash already used the multiplier
            sim = dataclasses.replace(
                sim, equity=sim.equity + sim.position * (bars["close"].to_numpy() * (multiplier - 1.0)))
    else:
        sim = simulate(bars["open"].to_numpy(), bars["close"].to_numpy(), held, account, rolls, multiplier)
    trades = _trades_frame(bars["ts"], sim, multiplier)
    equity = pl.DataFrame({
        "ts": bars["ts"], "equity": sim.equity, "drawdown_pct": drawdown_pct(sim.equity), "position": sim.position})
    metrics = compute_metrics(
        bars["ts"].to_numpy(), bars["close"].to_numpy(), sim.equity, sim.position, trades["pnl"].to_numpy(),
        trades["return_pct"].to_numpy(), float(sim.commission.sum()), annual)
    return BacktestResult(strategy=strategy, trades=trades, equity=equity, metrics=metrics,
                          currency=config.terms.currency)


def held_positions(signals: np.ndarray, mode: Mode, finalize: Finalize = "close") -> np.ndarray:
    """Target held during each bar: the previous bar's signal, flat on the first bar and, to exit at the last
    bar's open (`finalize="close"`), flat on the last bar too."""
    held = np.zeros(len(signals), dtype=np.int8)
    if finalize == "close":
        held[1:-1] = signals[:-2]
    else:
        held[1:] = signals[:-1]
    return np.maximum(held, 0) if mode == "long_only" else held


def roll_bars(bars: pl.DataFrame) -> np.ndarray:
    """Bars whose `contract` differs from the previous bar's (none without the column)."""
    if CONTRACT_COLUMN not in bars.columns:
        return np.empty(0, dtype=np.int64)
    contract = bars[CONTRACT_COLUMN]
    if contract.null_count() or not contract.dtype.is_integer():
        raise BacktestError(f"the {CONTRACT_COLUMN!r} column must hold each bar's conId (integers, no nulls), got "
                            f"{contract.dtype} with {contract.null_count()} null(s)")
    return np.flatnonzero(np.diff(contract.to_numpy())) + 1


def simulate(open_: np.ndarray, close: np.ndarray, held: np.ndarray, account: Account,
             rolls: np.ndarray | None = None, multiplier: float = 1.0) -> Simulation:
    """Fill `held` (target per bar, acted on at that bar's open), roll at `rolls` (bars whose open starts a new
    futures contract), and mark the account at every close.

    Loops over target changes and rolls only; between them the cash and position are constant, so the equity
    curve is cash + position * close * multiplier, broadcast per segment.
    """
    initial_cash = account.cash
    changed = np.diff(held, prepend=np.int8(0)) != 0
    events = np.flatnonzero(changed)
    if rolls is not None and rolls.size:
        events = np.union1d(events, rolls)
    cash_after: list[float] = []
    shares_after: list[int] = []
    for bar, price, target in zip(events.tolist(), open_[events].tolist(), held[events].tolist(), strict=True):
        if changed[bar]:
            if account.shares:
                account.close(bar, price)
            if target:
                account.open(bar, price, target)
        elif account.shares:  # held through a contract change: roll it (a new position opens in the new contract)
            account.roll(price)
        cash_after.append(account.cash)
        shares_after.append(account.shares)
    segment = np.searchsorted(events, np.arange(len(held)), side="right")  # 0 before the first event
    position = np.array([0, *shares_after], dtype=np.int64)[segment]
    equity = np.array([initial_cash, *cash_after])[segment] + position * (close * multiplier)
    return account.simulation(equity, position)


def _check_bars(bars: pl.DataFrame, bar_size: str) -> None:
    """Reject data that would give silently wrong results: missing or null prices, unsorted or repeated times,
    several symbols mixed together."""
    if bars.height == 0:
        raise NoBarsError(bar_size=bar_size)
    missing = [column for column in REQUIRED_COLUMNS if column not in bars.columns]
    if missing:
        raise BacktestError(f"bars lack column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}")
    symbols = bars["symbol"].unique().to_list() if "symbol" in bars.columns else []
    if len(symbols) > 1:
        raise BacktestError(f"bars mix {len(symbols)} symbols ({', '.join(map(str, sorted(symbols)[:5]))}...); "
                            "backtest one symbol at a time")
    ts_type = bars.schema["ts"]
    if not isinstance(ts_type, pl.Datetime) or ts_type.time_zone != "UTC":
        raise BacktestError(f"ts must be Datetime in UTC, got {ts_type}")
    # numpy, not a polars query: a grid evaluates many symbols and this ran 2 ms of its ~35 ms per 100k bars; a
    # comparison of two views and one minimum per price column, no temporary arrays but one of booleans
    ts = bars["ts"]
    ticks = ts.to_numpy().view(np.int64)
    if ts.null_count() or (ticks[1:] <= ticks[:-1]).any():
        raise BacktestError("bars must be sorted by ts with no missing or repeated timestamps")
    if not all(bars[column].to_numpy().min() > 0 for column in PRICE_COLUMNS):  # null is NaN here, min keeps NaN
        raise BacktestError("bars have null, NaN or non-positive prices")


def _trades_frame(ts: pl.Series, sim: Simulation, multiplier: float = 1.0) -> pl.DataFrame:
    entry_value = sim.size * sim.entry_price * multiplier
    pnl = (sim.side * sim.size * (sim.exit_price - sim.entry_price) * multiplier - sim.commission - sim.borrow_fee
           - sim.roll_cost)
    trades = pl.DataFrame({
        "entry_time": ts.gather(sim.entry_bar),
        "exit_time": ts.gather(sim.exit_bar),
        "side": np.where(sim.side > 0, "long", "short"),
        "size": sim.size,
        "entry_price": sim.entry_price,
        "exit_price": sim.exit_price,
        "pnl": pnl,
        "return_pct": pnl / entry_value * 100,
        "commission": sim.commission,
    }, schema_overrides={"side": pl.String})
    return trades.with_columns(duration=pl.col("exit_time") - pl.col("entry_time")).select(
        "entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "pnl", "return_pct", "duration",
        "commission")
