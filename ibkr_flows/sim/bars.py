"""Where the simulator's bars come from: a deterministic generator on the real exchange calendar (a file of the
user's own: `replay_bars`).

Every bar size is an aggregation of one base series, exactly as IB builds its bars: generated minute bars (and,
for sizes under a minute, second bars that aggregate back to those minutes exactly) are bucketed on IB's clock
grid (see `aggregate`). So a 1-hour bar equals its 1-minute bars, RTH bars equal the regular-hours part of the
extended-hours bars, and a bar is the same whichever request window asked for it: ingestion can re-fetch any
range and get byte-identical rows, which is what idempotency tests need.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl

from ibkr_flows.ib.calendars import NYSE, bar_spans, calendar_named
from ibkr_flows.ib.historical import WHAT_TO_SHOW, bar_step, parse_duration
from ibkr_flows.ib.sessions import (
    NEW_YORK,
    exchange_calendar,
    grid_offsets,
    midnight_utc,
    session_bounds,
    sessions_before,
    sessions_between,
)
from ibkr_flows.sim.bar_parts import bucket_groups
from ibkr_flows.sim.corporate_actions import dividend_multipliers, split_multipliers
from ibkr_flows.sim.universe import LISTINGS, Instrument

BAR_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "wap": pl.Float64(),
    "count": pl.Int64(),
}
"""One bar as TWS sends it: start time, OHLC, volume, WAP and trade count (-1 where not applicable)."""

HALF_SPREAD = 0.01
SUB_DOLLAR_HALF_SPREAD = 0.0001
MIN_PRICE = 0.0001
"""US stocks tick in cents from one dollar up and in 0.0001 below (split-adjusted history of NVDA, AAPL, MSFT)."""
ANCHORS_FILE = "price_anchors.json"
LISTING_LEVEL_MONTHS = tuple(date(year, month, 1) for year in range(2015, 2028) for month in (1, 7))
"""The months whose closes a listing's generated path passes through its level again (a bridge between them), so
it stays near that level whichever year is asked for (those past the calendar's end are ignored)."""


@dataclass(frozen=True)
class PriceAnchors:
    """Real levels one symbol's generated path must pass through: its first trading day (the head timestamp) with
    that day's close, and month-end closes; see `price_anchors.json` for the source."""

    first_trade: date
    first_close: float
    month_end_closes: tuple[tuple[date, float], ...]
    """(first day of the month, that month's last close), oldest first."""


def load_price_anchors() -> dict[str, PriceAnchors]:
    """The anchors shipped with the package (facts, kept as data in `price_anchors.json`)."""
    raw = json.loads((resources.files("ibkr_flows.sim") / ANCHORS_FILE).read_text(encoding="utf-8"))
    anchors = {}
    for symbol, entry in raw["symbols"].items():
        months = tuple(
            (date(int(year), month, 1), float(close))
            for year, closes in sorted(entry["month_end_close"].items())
            for month, close in enumerate(closes, start=1)
        )
        first = entry["first_trade"]
        anchors[symbol] = PriceAnchors(date.fromisoformat(first["date"]), float(first["close"]), months)
    return anchors


def listing_anchors(instruments: Iterable[Instrument]) -> dict[str, PriceAnchors]:
    """Anchors for the listings that declare a level, keyed by their bar series: their first day at that level and
    the closes of `LISTING_LEVEL_MONTHS` back at it (in the generator's units: `Instrument.price_scale`). A
    future's continuous series starts with its earliest listed contract (`instruments` in expiry order)."""
    anchors = {}
    for inst in instruments:
        if inst.first_trade is not None and inst.level:
            level = round(inst.level * inst.price_scale, 2)
            months = tuple((month, level) for month in LISTING_LEVEL_MONTHS if month > inst.first_trade)
            anchors[inst.series] = PriceAnchors(inst.first_trade, level, months)
            if inst.sec_type == "FUT":  # the root's continuous series, from its first contract's history
                continuous = dataclasses.replace(inst, sec_type="CONTFUT").series
                anchors.setdefault(continuous, anchors[inst.series])
    return anchors


def as_listed(bars: pl.DataFrame, inst: Instrument) -> pl.DataFrame:
    """Generated bars as the instrument's market quotes them: a US stock's unchanged; otherwise divided by its
    `price_scale` and rounded to its minimum tick, a dated future's cut at its last trade, and an index's without
    volume (IB's index bars carry 0 for volume, WAP and count; not checked against a recording)."""
    if inst.us_stock:
        return bars
    if inst.last_trade_date:
        expiry = datetime.strptime(inst.last_trade_date, "%Y%m%d").date()
        last_trade = datetime.combine(expiry, inst.last_trade_time, tzinfo=NEW_YORK).astimezone(UTC)
        bars = bars.filter(pl.col("ts") < last_trade)
    decimals = max(0, -int(np.floor(np.log10(inst.min_tick)))) + 1

    def on_tick(column: str) -> pl.Expr:
        return ((pl.col(column) / inst.price_scale / inst.min_tick).round() * inst.min_tick).round(decimals)

    bars = bars.with_columns(
        *(on_tick(c).alias(c) for c in ("open", "high", "low", "close")),
        pl.when(pl.col("wap") > 0).then((pl.col("wap") / inst.price_scale).round(decimals + 2))
        .otherwise(pl.col("wap")).alias("wap"),
    )
    if inst.sec_type == "IND":
        bars = bars.with_columns(pl.lit(0.0).alias("volume"), pl.lit(0.0).alias("wap"),
                                 pl.lit(0, dtype=pl.Int64).alias("count"))
    return bars


def round_price(prices: np.ndarray) -> np.ndarray:
    """Prices on IB's grid for US stocks: cents from one dollar up, 0.0001 below."""
    return np.where(prices < 1.0, np.round(prices, 4), np.round(prices, 2))


def _round_price_expr(price: pl.Expr) -> pl.Expr:
    return pl.when(price < 1.0).then(price.round(4)).otherwise(price.round(2))


class InvalidBarSize(ValueError):
    """A bar size this source cannot serve (e.g. finer than a replay file's bars)."""


class BarSource(Protocol):
    """What the simulator asks of a data source; frames follow `BAR_SCHEMA`, sorted by `ts`. `as_of` is the day
    whose view of the history to serve (splits and, for ADJUSTED_LAST, dividends effective on or before it
    applied: `corporate_actions`); None = today."""

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime, as_of: date | None = None) -> pl.DataFrame: ...

    def head_timestamp(self, symbol: str, what_to_show: str, use_rth: bool) -> datetime: ...


def request_window(end: datetime, duration: str, *, bar_size: str, use_rth: bool = True,
                   calendar: str = "XNYS") -> tuple[datetime, datetime]:
    """The [start, end) a TWS request covers: "N D" means the N most recent sessions, the others are spans."""
    count, unit = parse_duration(duration)
    if unit == "S":
        return end - timedelta(seconds=count), end
    if unit == "D":
        days = sessions_before(end, count, use_rth, calendar)
        if not days:
            return end, end
        if bar_step(bar_size) >= timedelta(days=1):
            return midnight_utc(days[0]), end
        return session_bounds(days[0], use_rth, calendar)[0], end
    if unit == "W":
        return end - timedelta(weeks=count), end
    offset = pd.DateOffset(months=count) if unit == "M" else pd.DateOffset(years=count)
    return (pd.Timestamp(end) - offset).to_pydatetime(), end


def series_calendar(source: BarSource, inst: Instrument) -> str:
    """The session calendar `source` serves an instrument's bars on ("N D" durations count its sessions): the
    generator's per-listing calendar, a replay file's own (`calendar_name`), else NYSE's."""
    if isinstance(source, SyntheticBars):
        return source.calendar_of(inst.series)
    return str(getattr(source, "calendar_name", NYSE))


# --- aggregation shared by both sources -------------------------------------------------------------------------

def aggregate(base: pl.DataFrame, bar_size: str, time_zone: ZoneInfo) -> pl.DataFrame:
    """Bucket base bars (with `day`, `anchor` (the session's open) and `resume` columns of `session_table`) into
    `bar_size` bars, on the clock of the exchange in `time_zone`.

    Intraday bars sit on IB's clock grid (multiples of the size on the exchange's wall clock from its midnight,
    `sessions.grid_offsets`, the rule the quality checks hold bars to), the session's first bar starting at the
    open: 1-hour RTH bars are 09:30 (half an hour), 10:00, 11:00, ...; 4-hour Globex bars 18:00, 20:00, 00:00, ...
    New York; after a mid-day break the first bar starts at the resumption (Tokyo: 11:00-11:30, then 12:30, ...).
    Daily bars are the session; weekly and monthly bars are stamped with their first session (IB's dates)."""
    step = bar_step(bar_size)
    if step < timedelta(days=1):
        on_grid = pl.col("ts") - grid_offsets(pl.col("ts"), step, time_zone)
        resumed = pl.col("resume").is_not_null() & (pl.col("ts") >= pl.col("resume"))
        span_start = pl.when(resumed).then(pl.col("resume")).otherwise(pl.col("anchor"))
        key = pl.max_horizontal(on_grid, span_start).alias("bucket")
    elif bar_size == "1 day":
        key = pl.col("day").alias("bucket")
    else:
        key = pl.col("day").dt.truncate("1w" if bar_size == "1 week" else "1mo").alias("bucket")
    weighted = pl.when(pl.col("volume").sum() > 0).then(
        (pl.col("wap") * pl.col("volume")).sum() / pl.col("volume").sum()
    ).otherwise(pl.col("wap").mean())
    grouped = base.sort("ts").group_by(key, maintain_order=True).agg(
        pl.col("ts").first().alias("first_ts"),
        pl.col("day").first(),
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        weighted.round(4).alias("wap"),
        pl.col("count").sum(),
    )
    if step < timedelta(days=1):
        ts = pl.col("bucket")
    else:  # dated bars: a week or month is stamped with its first session
        ts = pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return grouped.with_columns(ts.alias("ts")).select(list(BAR_SCHEMA))


def as_quotes(trades: pl.DataFrame, what_to_show: str) -> pl.DataFrame:
    """The quote bars implied by a trade series treated as the midpoint, with a fixed one-tick half spread.

    BID_ASK follows TWS's definition: open = average bid, high = highest ask, low = lowest bid, close = average
    ask. The half spread is a cent, or a hundredth of a cent below one dollar. Quote bars carry -1 for volume, WAP
    and count."""
    if what_to_show in ("TRADES", "ADJUSTED_LAST"):
        return trades
    typical = (pl.col("open") + pl.col("high") + pl.col("low") + pl.col("close")) / 4
    half = pl.when(pl.col("low") < 1.0).then(SUB_DOLLAR_HALF_SPREAD).otherwise(HALF_SPREAD)
    shifts = {"MIDPOINT": 0.0, "BID": -1.0, "ASK": 1.0}
    if what_to_show in shifts:
        side = shifts[what_to_show]
        prices = [_round_price_expr(pl.col(c) + side * half).alias(c) for c in ("open", "high", "low", "close")]
    else:
        prices = [
            _round_price_expr(typical - half).alias("open"),
            _round_price_expr(pl.col("high") + half).alias("high"),
            _round_price_expr(pl.col("low") - half).alias("low"),
            _round_price_expr(typical + half).alias("close"),
        ]
    missing = [pl.lit(-1.0).alias("volume"), pl.lit(-1.0).alias("wap"), pl.lit(-1, dtype=pl.Int64).alias("count")]
    return trades.with_columns(*prices, *missing)


def _utc64(instant: datetime) -> np.datetime64:
    return np.datetime64(instant.astimezone(UTC).replace(tzinfo=None), "us")


def check_what_to_show(what_to_show: str) -> None:
    if what_to_show not in WHAT_TO_SHOW:
        raise ValueError(f"whatToShow {what_to_show!r} is not served; use one of {', '.join(WHAT_TO_SHOW)}")


def session_table(days: Sequence[date], use_rth: bool, calendar: str) -> pl.DataFrame:
    """One row per session: its date, its open/close, and its mid-day break (`pause` to `resume`, null without one:
    Tokyo's lunch)."""
    bounds = [session_bounds(day, use_rth, calendar) for day in days]
    spans = [bar_spans(calendar, day, use_rth) for day in days] if calendar_named(calendar).has_breaks else []
    pauses = [(s[0][1], s[1][0]) if len(s) == 2 else (None, None) for s in spans] or [(None, None)] * len(days)
    utc = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        {"day": list(days), "anchor": [b[0] for b in bounds], "close_at": [b[1] for b in bounds],
         "pause": [p[0] for p in pauses], "resume": [p[1] for p in pauses]},
        schema={"day": pl.Date(), "anchor": utc, "close_at": utc, "pause": utc, "resume": utc},
    )


def trading(use_rth: bool) -> pl.Expr:
    """Rows of a frame joined with `session_table` that IB has bars for: inside the session's regular hours (for
    `use_rth`) and outside its mid-day break."""
    outside_break = ~pl.col("ts").is_between(pl.col("pause"), pl.col("resume"), closed="left").fill_null(False)
    if not use_rth:
        return outside_break
    return pl.col("ts").is_between(pl.col("anchor"), pl.col("close_at"), closed="left") & outside_break


def finish_bars(base: pl.DataFrame, *, native: timedelta, bar_size: str, what_to_show: str, start: datetime,
            end: datetime, calendar: str) -> pl.DataFrame:
    """Aggregate base bars that started before `end` on the clock grid of `calendar`'s exchange, and keep the bars
    that start in [start, end)."""
    base = base.filter(pl.col("ts") < end)
    if base.is_empty():
        return pl.DataFrame(schema=BAR_SCHEMA)
    if bar_step(bar_size) == native:
        bars = base.select(list(BAR_SCHEMA))
    else:
        bars = aggregate(base, bar_size, calendar_named(calendar).time_zone)
    bars = bars.filter(pl.col("ts").is_between(start, end, closed="left"))
    return as_quotes(bars, what_to_show)


# --- the generator ------------------------------------------------------------------------------------------------

GENERATED_SPAN = (date(2000, 1, 1), date(2030, 12, 31))
"""The days a calendar without a fixed list of its own (FX 24/5, every weekday) has sessions generated for."""


def listing_calendars(instruments: Iterable[Instrument]) -> dict[str, str]:
    """Each listing's bar series -> the session calendar it trades on (its continuous future's too)."""
    calendars = {}
    for inst in instruments:
        calendars[inst.series] = inst.calendar
        if inst.sec_type == "FUT":
            calendars[dataclasses.replace(inst, sec_type="CONTFUT").series] = inst.calendar
    return calendars


@dataclass(frozen=True)
class SessionIndex:
    """Every session of one calendar, in order, numbered: a generated series is a path over these numbers."""

    days: list[date]
    day_array: np.ndarray
    index: dict[date, int]

    @classmethod
    def of(cls, calendar: str) -> SessionIndex:
        """NYSE's sessions exactly as exchange_calendars lists them (the US stocks' seeds depend on the numbering);
        other calendars' over `GENERATED_SPAN`, within what their calendar covers."""
        if calendar == NYSE:
            days = [label.date() for label in exchange_calendar(calendar).sessions]
        else:
            days = calendar_named(calendar).sessions(*GENERATED_SPAN)
        return cls(days, np.array(days, dtype="datetime64[D]"), {day: i for i, day in enumerate(days)})

    def first_index(self, day: date) -> int:
        """The index of the first session on or after `day`."""
        return int(np.searchsorted(self.day_array, np.datetime64(day, "D")))

    def last_index(self, day: date) -> int:
        """The index of the last session on or before `day`."""
        return self.first_index(day + timedelta(days=1)) - 1


class SyntheticBars:
    """Seeded random walks per symbol, tied to real price levels: a daily path from the symbol's first trading day
    that passes through its real month-end closes (`price_anchors.json`; a Brownian bridge between anchors, a free
    walk after the last), bridged minute by minute through each session's extended hours, with an intraday
    U-shaped volume profile. The simulator's other listings (futures, currency pairs, indices, non-US stocks) pass
    through their declared level (`listing_anchors`); symbols without anchors start at `first_date` at a price
    derived from their name. Each series is generated on its instrument's own session calendar (`calendars`,
    series key -> `ib.calendars` name: Xetra, Tokyo, CME Globex, FX 24/5, ...; by default the listings' own),
    any other on `calendar_name` (NYSE).

    Deterministic in (seed, symbol, session): the same bar comes back whatever window asked for it."""

    DAILY_VOL = 0.014
    EXTENDED_VOL_FACTOR = 0.3
    EXTENDED_VOLUME_FACTOR = 0.03

    def __init__(self, seed: int = 7, calendar_name: str = "XNYS", first_date: date = date(2015, 1, 2),
                 anchors: dict[str, PriceAnchors] | None = None, calendars: dict[str, str] | None = None) -> None:
        self.seed = seed
        self.calendar_name = calendar_name
        self.first_date = first_date
        self.anchors = load_price_anchors() | listing_anchors(LISTINGS) if anchors is None else anchors
        self.calendars = listing_calendars(LISTINGS) if calendars is None else calendars
        self._session_index = lru_cache(maxsize=16)(SessionIndex.of)
        self._daily_closes = lru_cache(maxsize=64)(self._generate_daily_closes)
        self._minutes = lru_cache(maxsize=512)(self._generate_minutes)
        self._seconds = lru_cache(maxsize=16)(self._generate_seconds)

    def first_session(self, symbol: str) -> date:
        """The symbol's first session: its first trading day on record, else the first session from `first_date`."""
        anchors = self.anchors.get(symbol)
        first = anchors.first_trade if anchors else self.first_date
        index = self._sessions(symbol)
        return index.days[index.first_index(first)]

    def head_timestamp(self, symbol: str, what_to_show: str, use_rth: bool) -> datetime:
        check_what_to_show(what_to_show)
        return session_bounds(self.first_session(symbol), use_rth, self.calendar_of(symbol))[0]

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime, as_of: date | None = None) -> pl.DataFrame:
        parts = list(self.parts(symbol, bar_size, what_to_show, use_rth, start, end, as_of))
        return pl.concat(parts) if parts else pl.DataFrame(schema=BAR_SCHEMA)

    def parts(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
              end: datetime, as_of: date | None = None) -> Iterator[pl.DataFrame]:
        """The bars of `bars()` in pieces (`bar_parts.bucket_groups`) that concatenate to exactly `bars()`: years
        of daily bars are millions of generated minutes, cheaper built (and held) a few weeks at a time."""
        check_what_to_show(what_to_show)
        step = bar_step(bar_size)
        first = self.first_session(symbol)
        lo = max(start, midnight_utc(first))
        if step >= timedelta(days=1):  # a dated bar may start before `start`'s session: take its whole bucket
            lo -= timedelta(days=31 if step > timedelta(days=1) else 1)
        calendar = self.calendar_of(symbol)
        days = [d for d in sessions_between(lo, end, calendar) if d >= first]
        native = timedelta(seconds=1) if step < timedelta(minutes=1) else timedelta(minutes=1)
        for group in bucket_groups(days, bar_size):
            base = self._as_of(symbol, self._base(symbol, group, native), what_to_show, as_of)
            base = base.join(session_table(group, use_rth, calendar), on="day").filter(trading(use_rth))
            part = finish_bars(base, native=native, bar_size=bar_size, what_to_show=what_to_show, start=start,
                               end=end, calendar=calendar)
            if part.height:
                yield part

    # Generation. Arrays are per session; polars frames are built once per request.

    def _rng(self, symbol: str, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(symbol.encode()), *parts])

    def calendar_of(self, symbol: str) -> str:
        """The session calendar a series is generated on."""
        return self.calendars.get(symbol, self.calendar_name)

    def _sessions(self, symbol: str) -> SessionIndex:
        return self._session_index(self.calendar_of(symbol))

    def _anchor_points(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """Session indices and log prices the daily path must pass through, starting with the first session."""
        anchors, sessions = self.anchors.get(symbol), self._sessions(symbol)
        if anchors is None:
            return np.array([sessions.first_index(self.first_date)]), np.log([20.0 + zlib.crc32(symbol.encode()) % 480])
        points = [(sessions.first_index(anchors.first_trade), anchors.first_close)]
        for month, close in anchors.month_end_closes:
            month_end = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            index = sessions.last_index(month_end)
            if month_end <= sessions.days[-1] and index > points[-1][0]:
                points.append((index, close))
        return np.array([i for i, _ in points]), np.log(round_price(np.array([c for _, c in points])))

    def _generate_daily_closes(self, symbol: str) -> np.ndarray:
        """Closes for every calendar session (NaN before the first): a random walk bridged through the anchors.

        Between two anchors the path is the anchors' log-linear line plus the walk minus the walk's own line
        between them (a Brownian bridge), so it hits each anchor exactly; after the last anchor np.interp holds
        the line flat and the walk runs free."""
        positions, log_prices = self._anchor_points(symbol)
        first = int(positions[0])
        count = len(self._sessions(symbol).days)
        index = np.arange(first, count)
        walk = np.cumsum(self._rng(symbol, 0).normal(0.0, self.DAILY_VOL, len(index)))
        walk_at_anchors = walk[positions - first]
        log_path = np.interp(index, positions, log_prices) + walk - np.interp(index, positions, walk_at_anchors)
        closes = np.full(count, np.nan)
        closes[first:] = round_price(np.exp(log_path))
        return closes

    def _generate_minutes(self, symbol: str, day: date) -> dict[str, np.ndarray]:
        i = self._sessions(symbol).index[day]
        calendar = self.calendar_of(symbol)
        closes_by_day = self._daily_closes(symbol)
        prev_close = closes_by_day[i - 1] if i and not np.isnan(closes_by_day[i - 1]) else closes_by_day[i]
        eth_open, eth_close = session_bounds(day, False, calendar)
        rth_open, rth_close = session_bounds(day, True, calendar)
        n = int((eth_close - eth_open) / timedelta(minutes=1))
        ts = _utc64(eth_open) + np.arange(n).astype("timedelta64[m]")
        rth = (ts >= _utc64(rth_open)) & (ts < _utc64(rth_close))
        rng = self._rng(symbol, 1, i)
        sigma = np.where(rth, 1.0, self.EXTENDED_VOL_FACTOR) * self.DAILY_VOL / np.sqrt(390)
        walk = np.cumsum(rng.standard_normal(n) * sigma)
        # bridged from the previous close to this session's close at its last regular minute (the daily bar's
        # close, which the anchors fix), then free through the evening session
        last_rth = int(np.flatnonzero(rth)[-1]) if rth.any() else n - 1
        frac = np.minimum(np.arange(1, n + 1) / (last_rth + 1), 1.0)
        log_path = (np.log(prev_close) + frac * (np.log(closes_by_day[i]) - np.log(prev_close))
                    + walk - frac * walk[last_rth])
        close = round_price(np.exp(log_path))
        open_ = np.concatenate(([prev_close], close[:-1]))
        wick = np.abs(rng.standard_normal((2, n))) * sigma * close
        high = np.maximum(round_price(np.maximum(open_, close) + wick[0]), np.maximum(open_, close))
        low = np.minimum(round_price(np.minimum(open_, close) - wick[1]), np.minimum(open_, close))
        low = np.maximum(low, MIN_PRICE)
        position = np.clip((ts - ts[rth].min()) / (ts[rth].max() - ts[rth].min()), 0, 1) if rth.any() else 0.5
        profile = np.where(rth, 1.0 + 2.0 * (2 * position - 1) ** 2, self.EXTENDED_VOLUME_FACTOR)
        base_volume = 20_000 + zlib.crc32(symbol.encode()) % 180_000
        volume = np.maximum(1, np.floor(base_volume * profile * rng.lognormal(0.0, 0.4, n)))
        return {
            "ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
            "wap": np.round((high + low + close) / 3, 4), "count": np.maximum(1, volume // 50).astype(np.int64),
        }

    def _generate_seconds(self, symbol: str, day: date) -> dict[str, np.ndarray]:
        """Second bars bridged inside each minute bar; they aggregate back to it exactly."""
        m = self._minutes(symbol, day)
        n = len(m["ts"])
        rng = self._rng(symbol, 2, self._sessions(symbol).index[day])
        k = np.arange(61) / 60
        walk = np.concatenate((np.zeros((n, 1)), np.cumsum(rng.standard_normal((n, 60)), axis=1)), axis=1)
        bridge = walk - k * walk[:, -1:]
        scale = ((m["high"] - m["low"]) / 4)[:, None]
        path = m["open"][:, None] + (m["close"] - m["open"])[:, None] * k + scale * bridge
        path = np.clip(round_price(path), m["low"][:, None], m["high"][:, None])
        interior = path[:, 1:60]
        rows = np.arange(n)
        hi_at = np.argmax(interior, axis=1)
        lo_at = np.argmin(interior, axis=1)
        lo_at = np.where(lo_at == hi_at, (hi_at + 1) % 59, lo_at)
        interior[rows, hi_at] = m["high"]
        interior[rows, lo_at] = m["low"]
        open_, close = path[:, :-1], path[:, 1:]
        high, low = np.maximum(open_, close), np.minimum(open_, close)
        weights = rng.dirichlet(np.ones(60), n)
        volume = rng.multinomial(m["volume"].astype(np.int64), weights).astype(np.float64)
        count = rng.multinomial(m["count"], weights)
        ts = (m["ts"][:, None] + np.arange(60).astype("timedelta64[s]")).astype("datetime64[us]")
        return {
            "ts": ts.ravel(), "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
            "volume": volume.ravel(), "wap": np.round((open_ + high + low + close) / 4, 4).ravel(),
            "count": count.ravel().astype(np.int64),
        }

    def _as_of(self, symbol: str, base: pl.DataFrame, what_to_show: str, as_of: date | None) -> pl.DataFrame:
        """Base bars as IB served them on `as_of` (None: today, which the generated levels already are): the
        splits after it undone, and for ADJUSTED_LAST the dividends up to it applied. Done before aggregation, so
        a weekly bar spanning a split is built from bars each on its day's scale, as IB builds it."""
        if as_of is None and what_to_show != "ADJUSTED_LAST":
            return base
        as_of = as_of or datetime.now(UTC).date()
        days = base["day"].to_numpy()
        prices = split_multipliers(symbol, days, as_of)
        volume = prices.copy()
        if what_to_show == "ADJUSTED_LAST":
            prices *= dividend_multipliers(symbol, days, as_of, lambda ex: self._close_before(symbol, ex))
        if (prices == 1.0).all():
            return base
        factor = pl.Series(prices)
        rescaled = [(pl.col(c) * factor).alias(c) for c in ("open", "high", "low", "close", "wap")]
        if what_to_show == "ADJUSTED_LAST":  # dividend factors take prices off the tick grid
            rescaled = [expr.round(4) for expr in rescaled]
        return base.with_columns(*rescaled, (pl.col("volume") / pl.Series(volume)).alias("volume"))

    def _close_before(self, symbol: str, day: date) -> float:
        """The generated close of the last session before `day` (NaN before the symbol's first)."""
        i = self._sessions(symbol).first_index(day) - 1
        return float(self._daily_closes(symbol)[i]) if i >= 0 else float("nan")

    def _base(self, symbol: str, days: list[date], native: timedelta) -> pl.DataFrame:
        """The native bars of several sessions as one frame (built once: per-session frames cost more than
        generating the numbers)."""
        generate = self._seconds if native < timedelta(minutes=1) else self._minutes
        parts = [generate(symbol, day) for day in days]
        columns = {name: np.concatenate([p[name] for p in parts]) for name in BAR_SCHEMA}
        columns["day"] = np.repeat(np.array(days, dtype="datetime64[D]"), [len(p["ts"]) for p in parts])
        return pl.DataFrame(columns).with_columns(pl.col("ts").dt.replace_time_zone("UTC"), pl.col("day").cast(pl.Date))
