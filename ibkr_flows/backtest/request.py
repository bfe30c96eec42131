"""What a backtest is asked to do, as users ask for it: stored bars of some symbols over a range, a strategy and
its costs. One model is the `backtest` flow's form in the Prefect UI, the CLI's options and the runner's input;
`GridRequest` is the same for a parameter grid. Both are validated (strategy, parameters, costs, range) before
any data is read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ibkr_flows.backtest.continuous_bars import is_continuous, root_and_exchange, series_key
from ibkr_flows.backtest.contract_terms import US_STOCK, ContractTerms
from ibkr_flows.backtest.costs import (
    CommissionModel,
    IBKRFixed,
    IBKRTiered,
    NoCommission,
    PercentCommission,
    default_commission,
)
from ibkr_flows.backtest.engine import BacktestConfig, Finalize, Mode
from ibkr_flows.backtest.exits import ExitRules
from ibkr_flows.backtest.sizing import AllIn, FixedFraction, FixedShares, Sizing
from ibkr_flows.backtest.strategies.base import Entry
from ibkr_flows.continuous.rules import RollRule
from ibkr_flows.ib.historical import BarSize, WhatToShow

if TYPE_CHECKING:
    from ibkr_flows.backtest.grid.spec import GridSpec

CommissionName = Literal["auto", "ibkr_fixed", "ibkr_tiered", "percent", "none"]
"""`auto`: the IBKR Fixed schedule of each symbol's instrument class (`costs.default_commission`)."""
SizingName = Literal["all_in", "fixed_shares", "fixed_fraction"]
Adjust = Literal["none", "splits", "total"]
"""Which prices a backtest reads: `backtest.adjust`."""
ADJUST_WORDS = {"none": "as traded", "splits": "split-adjusted", "total": "split- and dividend-adjusted"}
RollAdjust = Literal["none", "difference", "ratio"]
"""A rolled continuous series' back-adjustment (`continuous.rules.Adjustment`)."""
DEFAULT_START = datetime(2024, 7, 1, tzinfo=UTC)
DEFAULT_END = datetime(2024, 7, 13, tzinfo=UTC)
DEFAULT_GRID: dict[str, Any] = {"fast_period": {"start": 5, "stop": 50, "step": 5},
                                        "slow_period": {"start": 20, "stop": 200, "step": 10}}


def _symbol(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class BacktestSettings(BaseModel):
    """What every backtest of stored bars needs besides the symbols and the strategy's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str = Field("sma_crossover", description="sma_crossover, ema_crossover (fast_period, slow_period), "
                          "rsi_reversion (period, lower, upper), donchian_breakout (lookback), buy_and_hold")
    start: datetime = Field(DEFAULT_START, description="Range start (UTC)")
    end: datetime = Field(DEFAULT_END, description="Range end, exclusive (UTC)")
    bar_size: BarSize = Field("1 min", description="IB bar size of the stored bars")
    what_to_show: WhatToShow = "TRADES"
    use_rth: bool = Field(True, description="Regular-hours bars (false: extended hours)")
    cash: float = Field(100_000.0, gt=0, description="Starting cash, in the instrument's currency (a currency "
                        "pair's quote currency)")
    commission: CommissionName = Field("auto", description="auto (IBKR Fixed for the instrument's class: US stocks "
                                       "USD 0.005/share, futures per contract plus exchange fees, FX 0.2 bps, non-US "
                                       "stocks per exchange), ibkr_fixed (USD 0.005/share, min 1, max 1%), "
                                       "ibkr_tiered, percent (commission_rate), none")
    commission_rate: float = Field(0.0, ge=0, description="For commission=percent: a fraction of trade value "
                                   "(0.001 = 0.1%)")
    slippage_bps: float = Field(0.0, ge=0, description="Slippage against the trader, basis points")
    sizing: SizingName = Field("all_in", description="all_in, fixed_shares (size = shares), fixed_fraction "
                               "(size = fraction of equity)")
    size: float = Field(0.0, ge=0, description="Shares for fixed_shares, a fraction of equity for fixed_fraction")
    mode: Mode = Field("long_only", description="long_only (a short signal means flat) or long_short")
    entry: Entry = Field("state", description="state (a position whenever the rule's condition holds, e.g. fast > "
                         "slow) or cross (only where it starts to hold: crossovers, rsi_reversion)")
    finalize: Finalize = Field("close", description="close (a position open at the end is closed at the last "
                               "bar's open and counted) or open (left open, marked at the last close, not counted)")
    stop_loss_pct: float | None = Field(None, gt=0, lt=100, description="Exit when the price falls this percent "
                                        "below the entry (rises, for a short); empty = none")
    take_profit_pct: float | None = Field(None, gt=0, description="Exit when the price gains this percent from the "
                                          "entry; empty = none")
    trailing_stop_pct: float | None = Field(None, gt=0, lt=100, description="Exit this percent below the best "
                                            "price since entry; empty = none")
    flatten_at_close: bool = Field(False, description="Close every position at each session's last bar (no "
                                   "overnight holding)")
    borrow_fee_pct: float = Field(0.0, ge=0, description="Annual short-borrow fee, percent of the short's value, "
                                  "charged daily")
    table_version: int | None = Field(None, ge=0, description="Read this version of the bars table (of the "
                                      "continuous table for continuous futures): time travel; empty = the latest")
    adjust: Adjust = Field("splits", description="Prices as traded (none), adjusted for splits (splits: what IB "
                           "serves) or also for dividends (total), from the corporate_actions table")
    roll: str | None = Field(None, description="For continuous futures (CONTFUT:ES@CME): the roll rule of the "
                             "project's own series built by `ibkr data roll` (days:N or volume); empty = IB's own "
                             "CONTFUT series")
    roll_adjust: RollAdjust = Field("none", description="With `roll`: the back-adjustment the series was built "
                                    "with (none, difference, ratio)")

    @field_validator("roll")
    @classmethod
    def _roll(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else str(RollRule.parse(value))  # the stored text

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime, info: Any) -> datetime:
        if value.tzinfo is None:
            raise ValueError(f"{info.field_name} must be timezone-aware (UTC)")
        return value

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.start >= self.end:
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is not before end {self.end:%Y-%m-%d %H:%M}")
        if self.start > datetime.now(UTC):
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is in the future: no bars can exist yet")
        if self.roll is None and self.roll_adjust != "none":
            raise ValueError(f"roll_adjust={self.roll_adjust} needs a roll rule (roll=days:5 or volume): IB's own "
                             "CONTFUT series is stored as IB serves it")
        if self.adjust != "splits" and self.what_to_show != "TRADES":
            raise ValueError(f"adjust={self.adjust} applies to TRADES bars only ({self.what_to_show} bars are read "
                             f"as stored): use adjust=splits, or what_to_show=TRADES")
        return self

    def commission_model(self, terms: ContractTerms = US_STOCK) -> CommissionModel:
        """The model asked for; `auto` picks the one of `terms`' instrument class."""
        if self.commission == "auto":
            return default_commission(terms.sec_type, terms.symbol, terms.exchange, terms.currency)
        if self.commission == "percent":
            return PercentCommission(self.commission_rate)
        return {"ibkr_fixed": IBKRFixed, "ibkr_tiered": IBKRTiered, "none": NoCommission}[self.commission]()

    def sizing_model(self) -> Sizing:
        if self.sizing == "fixed_shares":
            return FixedShares(int(self.size))
        if self.sizing == "fixed_fraction":
            return FixedFraction(self.size)
        return AllIn()

    def config(self, params: dict[str, Any] | None = None, terms: ContractTerms = US_STOCK) -> BacktestConfig:
        """The engine's config for an instrument with `terms` (the runner reads each symbol's; the default, a US
        stock, is what the grid still assumes)."""
        return BacktestConfig(strategy=self.strategy, params=dict(params or {}), cash=self.cash,
                              commission=self.commission_model(terms), slippage_bps=self.slippage_bps,
                              sizing=self.sizing_model(), mode=self.mode, entry=self.entry, finalize=self.finalize,
                              exits=self.exit_rules(), terms=terms, use_rth=self.use_rth)

    def exit_rules(self) -> ExitRules:
        return ExitRules(stop_loss_pct=self.stop_loss_pct, take_profit_pct=self.take_profit_pct,
                         trailing_stop_pct=self.trailing_stop_pct, flatten_at_close=self.flatten_at_close,
                         borrow_fee_pct=self.borrow_fee_pct)

    def check_symbols(self, symbols: tuple[str, ...]) -> None:
        """Continuous futures come from their own table, whose version `table_version` pins: a request reads
        continuous series only or other instruments only; a roll rule applies to continuous futures only."""
        continuous = [s for s in symbols if is_continuous(s)]
        if continuous and len(continuous) < len(symbols):
            others = ", ".join(s for s in symbols if not is_continuous(s))
            raise ValueError(f"{', '.join(continuous)} read the continuous table and {others} the bars table: one "
                             "run pins one table's version, so backtest them in separate runs")
        if self.roll is not None and not continuous:
            raise ValueError(f"roll={self.roll} applies to continuous futures (e.g. CONTFUT:ES@CME), not to "
                             f"{', '.join(symbols)}")

    def series_key(self, symbol: str) -> dict[str, object]:
        """The continuous table's key of a continuous future's series in this request."""
        return series_key(symbol, self.bar_size, self.what_to_show, self.use_rth, self.roll, self.roll_adjust)

    def data_text(self, symbol: str, table_version: int) -> str:
        """What a run read, for its reports: the table and version, and which prices."""
        if not is_continuous(symbol):
            return f"bars table version {table_version}, prices: {self.adjust} ({ADJUST_WORDS[self.adjust]})"
        series = (f"rolled {self.roll}, adjustment {self.roll_adjust}, rolls charged" if self.roll is not None
                  else "IB's CONTFUT series (its rolls unknown: none charged)")
        return f"continuous table version {table_version}, {series}"

    def ingest_hint(self, symbol: str) -> str:
        """The command that would fetch (or, for a rolled continuous series, build) the missing bars."""
        session = "--rth" if self.use_rth else "--eth"
        if is_continuous(symbol) and self.roll is not None:
            root, exchange = root_and_exchange(symbol)
            return (f"ibkr data roll {root} --exchange {exchange} --rule {self.roll} --adjust {self.roll_adjust} "
                    f"--bar-size '{self.bar_size}' --what-to-show {self.what_to_show} {session}   # after "
                    f"ingesting its dated contracts (FUT:{root}@{exchange}:YYYYMM) over the range")
        if is_continuous(symbol):  # IB serves it only up to now: no end date
            days = max(1, (datetime.now(UTC) - self.start).days + 1)
            return (f"ibkr data ingest {symbol} --bar-size '{self.bar_size}' --what-to-show {self.what_to_show} "
                    f"{session} --lookback-days {days}")
        return (f"ibkr data ingest {symbol} --bar-size '{self.bar_size}' --what-to-show {self.what_to_show} "
                f"{session} --start '{self.start:%Y-%m-%d %H:%M:%S}' --end '{self.end:%Y-%m-%d %H:%M:%S}'")


class BacktestRequest(BacktestSettings):
    """A strategy with one set of parameters on each of `symbols`."""

    symbols: tuple[str, ...] = Field(("AAPL",), min_length=1, description="Symbols, each backtested on its own")
    params: dict[str, Any] = Field(default_factory=lambda: {"fast_period": 5, "slow_period": 10},
                                   description="Strategy parameters, e.g. {\"fast_period\": 5, \"slow_period\": 10}")

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object) -> object:
        return tuple(_symbol(s) for s in ([value] if isinstance(value, str) else value))  # type: ignore[union-attr]

    @model_validator(mode="after")
    def _strategy(self) -> Self:
        self.config()  # strategy name, parameters, cash, mode, costs: all checked before any data is read
        self.check_symbols(self.symbols)
        return self

    def config(self, params: dict[str, Any] | None = None, terms: ContractTerms = US_STOCK) -> BacktestConfig:
        return super().config(self.params if params is None else params, terms)


class GridRequest(BacktestSettings):
    """Every combination of `grid` (per parameter: a list, or {start, stop, step} with stop included) on one
    symbol, or on each of several, ranked by `rank_by`, with an out-of-sample holdout and an optional walk-forward.

    `symbol` (one) is the original form, kept because saved deployment parameters and the CLI use it; `symbols`
    (several) fans the grid out per symbol. One of the two: both at once is refused rather than guessed between;
    neither means AAPL."""

    symbol: str | None = Field(None, min_length=1, description="One symbol whose stored bars the grid runs on "
                               "(or `symbols`; neither = AAPL)")
    symbols: tuple[str, ...] | None = Field(None, min_length=1, description="Several symbols, each searched on its "
                                            "own with its own best cell (instead of `symbol`)")
    grid: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_GRID),
                                 description="Parameter values: a list, or {start, stop, step} (stop included)")
    rank_by: str = Field("sharpe", description="sharpe, sortino, calmar, total_return_pct, ...")
    holdout: float | None = Field(0.3, gt=0, lt=1, description="Share of the bars at the end kept out of the "
                                  "search; empty = none")
    folds: int | None = Field(None, ge=1, description="Walk-forward folds over the in-sample bars; empty = none")
    chunks: int | None = Field(None, ge=1, description="Coarse tasks the combinations are split into, per symbol "
                               "and slice; empty = fitted to the task runner (8 on threads, one per Dask worker "
                               "thread on Dask)")
    top_n: int = Field(20, ge=1, description="Rows of the ranking in the grid-top artifact")
    heatmap_x: str = "fast_period"
    heatmap_y: str = "slow_period"

    @field_validator("symbol", mode="before")
    @classmethod
    def _symbol(cls, value: object) -> object:
        return _symbol(value)

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object) -> object:
        if value is None or isinstance(value, str):
            return value if value is None else (_symbol(value),)
        symbols = tuple(_symbol(s) for s in value)  # type: ignore[attr-defined]
        repeated = sorted({s for s in symbols if symbols.count(s) > 1})
        if repeated:
            raise ValueError(f"symbols lists {', '.join(map(str, repeated))} more than once: give each symbol once")
        return symbols

    @model_validator(mode="before")
    @classmethod
    def _one_symbol_form(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        symbol, symbols = data.get("symbol"), data.get("symbols")
        if symbol is not None and symbols is not None:
            raise ValueError(f"give `symbol` ({symbol}) or `symbols` ({symbols}), not both: clear `symbol` to run "
                             "several symbols, or `symbols` to run one")
        return data if symbols is not None or symbol is not None else {**data, "symbol": "AAPL"}

    @property
    def grid_symbols(self) -> tuple[str, ...]:
        """The symbols the grid runs on, in the order asked: `symbols`, or the one `symbol`."""
        return self.symbols if self.symbols is not None else (self.symbol or "AAPL",)

    def for_symbol(self, symbol: str) -> GridRequest:
        """This request on one of its symbols alone: what a stored row records, so it re-runs as a one-symbol
        grid."""
        return self.model_copy(update={"symbol": symbol, "symbols": None})

    @model_validator(mode="after")
    def _spec(self) -> Self:
        from ibkr_flows.backtest.grid.evaluate import grid_base  # loads numba, like `spec`

        grid_base(self.spec(), self.config())  # a fixed parameter must be a one-value grid axis
        self.check_symbols(self.grid_symbols)
        return self

    def spec(self) -> GridSpec:
        from ibkr_flows.backtest.grid.spec import GridSpec  # the grid package loads numba: only grids pay for it

        return GridSpec(self.strategy, self.grid, self.rank_by)
