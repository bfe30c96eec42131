"""Where the simulator's bars come from: a deterministic generator on the real exchange calendar, or a file.

Every bar size is an aggregation of one base series, exactly as IB builds its bars: generated minute bars (and,
for sizes under a minute, second bars that aggregate back to those minutes exactly) are bucketed from the
session's open. So a 1-hour bar equals its sixty 1-minute bars, RTH bars equal the regular-hours part of the
extended-hours bars, and a bar is the same whichever request window asked for it: ingestion can re-fetch any
range and get byte-identical rows, which is what idempotency tests need.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import polars as pl

from ibkr_flows.ib.historical import WHAT_TO_SHOW, bar_step, parse_duration
from ibkr_flows.ib.sessions import (
    exchange_calendar,
    midnight_utc,
    session_bounds,
    sessions_before,
    sessions_between,
)

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
TICK = 0.01
DEFAULT_BASE_PRICES = {"AAPL": 110.0, "MSFT": 46.0, "SPY": 205.0, "QQQ": 102.0, "IBM": 160.0, "NVDA": 5.0}
"""Roughly where each symbol traded in January 2015, where generated history starts."""


class InvalidBarSize(ValueError):
    """A bar size this source cannot serve (e.g. finer than a replay file's bars)."""


class BarSource(Protocol):
    """What the simulator asks of a data source; frames follow `BAR_SCHEMA`, sorted by `ts`."""

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime) -> pl.DataFrame: ...

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


# --- aggregation shared by both sources -------------------------------------------------------------------------

def aggregate(base: pl.DataFrame, bar_size: str) -> pl.DataFrame:
    """Bucket base bars (with `day` and `anchor` columns) into `bar_size` bars aligned to the session's open."""
    step = bar_step(bar_size)
    if step < timedelta(days=1):
        step_us = step // timedelta(microseconds=1)
        offset = (pl.col("ts") - pl.col("anchor")).dt.total_microseconds() // step_us * step_us
        key = (pl.col("anchor") + pl.duration(microseconds=offset)).alias("bucket")
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
    ask. Quote bars carry -1 for volume, WAP and count."""
    if what_to_show in ("TRADES", "ADJUSTED_LAST"):
        return trades
    typical = (pl.col("open") + pl.col("high") + pl.col("low") + pl.col("close")) / 4
    shifts = {"MIDPOINT": 0.0, "BID": -HALF_SPREAD, "ASK": HALF_SPREAD}
    if what_to_show in shifts:
        shift = shifts[what_to_show]
        prices = [(pl.col(c) + shift).round(2).alias(c) for c in ("open", "high", "low", "close")]
    else:
        prices = [
            (typical - HALF_SPREAD).round(2).alias("open"),
            (pl.col("high") + HALF_SPREAD).round(2).alias("high"),
            (pl.col("low") - HALF_SPREAD).round(2).alias("low"),
            (typical + HALF_SPREAD).round(2).alias("close"),
        ]
    missing = [pl.lit(-1.0).alias("volume"), pl.lit(-1.0).alias("wap"), pl.lit(-1, dtype=pl.Int64).alias("count")]
    return trades.with_columns(*prices, *missing)


def _utc64(instant: datetime) -> np.datetime64:
    return np.datetime64(instant.astimezone(UTC).replace(tzinfo=None), "us")


def _check_what_to_show(what_to_show: str) -> None:
    if what_to_show not in WHAT_TO_SHOW:
        raise ValueError(f"whatToShow {what_to_show!r} is not served; use one of {', '.join(WHAT_TO_SHOW)}")


def _session_table(days: Sequence[date], use_rth: bool, calendar: str) -> pl.DataFrame:
    """One row per session: its date and the open/close its bars are bucketed from."""
    bounds = [session_bounds(day, use_rth, calendar) for day in days]
    return pl.DataFrame(
        {"day": list(days), "anchor": [b[0] for b in bounds], "close_at": [b[1] for b in bounds]},
        schema={"day": pl.Date(), "anchor": pl.Datetime("us", "UTC"), "close_at": pl.Datetime("us", "UTC")},
    )


def _finish(base: pl.DataFrame, *, native: timedelta, bar_size: str, what_to_show: str, start: datetime,
            end: datetime) -> pl.DataFrame:
    """Aggregate base bars that started before `end` and keep the bars that start in [start, end)."""
    base = base.filter(pl.col("ts") < end)
    if base.is_empty():
        return pl.DataFrame(schema=BAR_SCHEMA)
    bars = base.select(list(BAR_SCHEMA)) if bar_step(bar_size) == native else aggregate(base, bar_size)
    bars = bars.filter(pl.col("ts").is_between(start, end, closed="left"))
    return as_quotes(bars, what_to_show)


# --- the generator ------------------------------------------------------------------------------------------------

class SyntheticBars:
    """Seeded random walks per symbol: a daily path from `first_date`, bridged minute by minute through each
    session's extended hours, with an intraday U-shaped volume profile.

    Deterministic in (seed, symbol, session): the same bar comes back whatever window asked for it."""

    DAILY_VOL = 0.014
    EXTENDED_VOL_FACTOR = 0.3
    EXTENDED_VOLUME_FACTOR = 0.03

    def __init__(self, seed: int = 7, calendar_name: str = "XNYS", first_date: date = date(2015, 1, 2),
                 base_prices: dict[str, float] | None = None) -> None:
        self.seed = seed
        self.calendar_name = calendar_name
        self.first_date = first_date
        self.base_prices = {**DEFAULT_BASE_PRICES, **(base_prices or {})}
        cal = exchange_calendar(calendar_name)
        self._days = [label.date() for label in cal.sessions_in_range(pd.Timestamp(first_date), cal.last_session)]
        self._index = {day: i for i, day in enumerate(self._days)}
        self._daily_closes = lru_cache(maxsize=64)(self._generate_daily_closes)
        self._minutes = lru_cache(maxsize=512)(self._generate_minutes)
        self._seconds = lru_cache(maxsize=16)(self._generate_seconds)

    def head_timestamp(self, symbol: str, what_to_show: str, use_rth: bool) -> datetime:
        _check_what_to_show(what_to_show)
        return session_bounds(self._days[0], use_rth, self.calendar_name)[0]

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime) -> pl.DataFrame:
        _check_what_to_show(what_to_show)
        step = bar_step(bar_size)
        lo = max(start, datetime.combine(self.first_date, datetime.min.time(), tzinfo=UTC))
        if step >= timedelta(days=1):  # a dated bar may start before `start`'s session: take its whole bucket
            lo -= timedelta(days=31 if step > timedelta(days=1) else 1)
        days = [d for d in sessions_between(lo, end, self.calendar_name) if d in self._index]
        if not days:
            return pl.DataFrame(schema=BAR_SCHEMA)
        native = timedelta(seconds=1) if step < timedelta(minutes=1) else timedelta(minutes=1)
        base = self._base(symbol, days, native).join(_session_table(days, use_rth, self.calendar_name), on="day")
        if use_rth:
            base = base.filter(pl.col("ts").is_between(pl.col("anchor"), pl.col("close_at"), closed="left"))
        return _finish(base, native=native, bar_size=bar_size, what_to_show=what_to_show, start=start, end=end)

    # Generation. Arrays are per session; polars frames are built once per request.

    def _rng(self, symbol: str, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(symbol.encode()), *parts])

    def _base_price(self, symbol: str) -> float:
        return self.base_prices.get(symbol, 20.0 + zlib.crc32(symbol.encode()) % 480)

    def _generate_daily_closes(self, symbol: str) -> np.ndarray:
        returns = self._rng(symbol, 0).normal(0.0003, self.DAILY_VOL, len(self._days))
        return np.round(self._base_price(symbol) * np.exp(np.cumsum(returns)), 2)

    def _generate_minutes(self, symbol: str, day: date) -> dict[str, np.ndarray]:
        i = self._index[day]
        closes_by_day = self._daily_closes(symbol)
        prev_close = closes_by_day[i - 1] if i else self._base_price(symbol)
        eth_open, eth_close = session_bounds(day, False, self.calendar_name)
        rth_open, rth_close = session_bounds(day, True, self.calendar_name)
        n = int((eth_close - eth_open) / timedelta(minutes=1))
        ts = _utc64(eth_open) + np.arange(n).astype("timedelta64[m]")
        rth = (ts >= _utc64(rth_open)) & (ts < _utc64(rth_close))
        rng = self._rng(symbol, 1, i)
        sigma = np.where(rth, 1.0, self.EXTENDED_VOL_FACTOR) * self.DAILY_VOL / np.sqrt(390)
        walk = np.cumsum(rng.standard_normal(n) * sigma)
        frac = np.arange(1, n + 1) / n
        log_path = np.log(prev_close) + frac * (np.log(closes_by_day[i]) - np.log(prev_close)) + walk - frac * walk[-1]
        close = np.round(np.exp(log_path), 2)
        open_ = np.concatenate(([prev_close], close[:-1]))
        wick = np.abs(rng.standard_normal((2, n))) * sigma * close
        high = np.maximum(np.round(np.maximum(open_, close) + wick[0], 2), np.maximum(open_, close))
        low = np.minimum(np.round(np.minimum(open_, close) - wick[1], 2), np.minimum(open_, close))
        low = np.maximum(low, TICK)
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
        rng = self._rng(symbol, 2, self._index[day])
        k = np.arange(61) / 60
        walk = np.concatenate((np.zeros((n, 1)), np.cumsum(rng.standard_normal((n, 60)), axis=1)), axis=1)
        bridge = walk - k * walk[:, -1:]
        scale = ((m["high"] - m["low"]) / 4)[:, None]
        path = m["open"][:, None] + (m["close"] - m["open"])[:, None] * k + scale * bridge
        path = np.clip(np.round(path, 2), m["low"][:, None], m["high"][:, None])
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

    def _base(self, symbol: str, days: list[date], native: timedelta) -> pl.DataFrame:
        """The native bars of several sessions as one frame (built once: per-session frames cost more than
        generating the numbers)."""
        generate = self._seconds if native < timedelta(minutes=1) else self._minutes
        parts = [generate(symbol, day) for day in days]
        columns = {name: np.concatenate([p[name] for p in parts]) for name in BAR_SCHEMA}
        columns["day"] = np.repeat(np.array(days, dtype="datetime64[D]"), [len(p["ts"]) for p in parts])
        return pl.DataFrame(columns).with_columns(pl.col("ts").dt.replace_time_zone("UTC"), pl.col("day").cast(pl.Date))


# --- replay -------------------------------------------------------------------------------------------------------

TIME_COLUMNS = ("ts", "date", "datetime", "timestamp", "time")


class ReplayBars:
    """Bars from a CSV or Parquet file: `ts` (or date/datetime/timestamp/time), open, high, low, close, volume,
    optionally wap, count and symbol (without it, every symbol gets the file's bars).

    Naive times are read as UTC; date-only rows are daily bars. The file's own bar size is the finest served;
    larger sizes are aggregated from the session's open as TWS does."""

    def __init__(self, path: Path | str, calendar_name: str = "XNYS") -> None:
        self.path = Path(path)
        self.calendar_name = calendar_name
        self.frame = self._load(self.path)
        gaps = self.frame.group_by("symbol").agg(pl.col("ts").sort().diff().min().alias("gap"))["gap"].drop_nulls()
        self.native = gaps.min() if len(gaps) else timedelta(days=1)  # type: ignore[assignment]
        if self.daily:
            self.native = timedelta(days=1)

    @staticmethod
    def _load(path: Path) -> pl.DataFrame:
        if path.suffix.lower() == ".parquet":
            raw = pl.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            raw = pl.read_csv(path, try_parse_dates=True)
        else:
            raise ValueError(f"{path}: replay files must be .csv or .parquet")
        columns = {c.lower(): c for c in raw.columns}
        time_column = next((columns[c] for c in TIME_COLUMNS if c in columns), None)
        missing = [c for c in ("open", "high", "low", "close", "volume") if c not in columns]
        if time_column is None or missing:
            raise ValueError(f"{path}: needs a time column ({'/'.join(TIME_COLUMNS)}) and "
                             f"open/high/low/close/volume; missing {missing or ['time']}")
        frame = raw.rename({v: k for k, v in columns.items()}).rename({time_column.lower(): "ts"})
        ts = frame["ts"]
        daily = ts.dtype == pl.Date()
        if daily:
            ts = ts.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        elif isinstance(ts.dtype, pl.Datetime):
            ts = ts.dt.cast_time_unit("us")
            ts = ts.dt.replace_time_zone("UTC") if ts.dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
        else:
            raise ValueError(f"{path}: column {time_column!r} is not a date or datetime")
        frame = frame.with_columns(
            ts.alias("ts"),
            (pl.col("symbol").cast(pl.String) if "symbol" in frame.columns
             else pl.lit(None, pl.String)).alias("symbol"),
            (pl.col("wap") if "wap" in frame.columns
             else ((pl.col("high") + pl.col("low") + pl.col("close")) / 3).round(4)).cast(pl.Float64).alias("wap"),
            (pl.col("count") if "count" in frame.columns else pl.lit(-1)).cast(pl.Int64).alias("count"),
            *[pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")],
        )
        frame = frame.with_columns(pl.lit(daily).alias("daily"))
        return frame.select("symbol", *BAR_SCHEMA, "daily").sort("symbol", "ts")

    @property
    def daily(self) -> bool:
        return bool(self.frame["daily"].any())

    def _rows(self, symbol: str) -> pl.DataFrame:
        if self.frame["symbol"].is_null().all():
            return self.frame
        return self.frame.filter(pl.col("symbol") == symbol)

    def head_timestamp(self, symbol: str, what_to_show: str, use_rth: bool) -> datetime:
        _check_what_to_show(what_to_show)
        rows = self._rows(symbol)
        if rows.is_empty():
            raise ValueError(f"replay file {self.path.name} has no bars for {symbol}")
        return rows["ts"].min()  # type: ignore[return-value]

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime) -> pl.DataFrame:
        _check_what_to_show(what_to_show)
        step = bar_step(bar_size)
        if step < self.native:
            raise InvalidBarSize(f"replay file {self.path.name} holds {self.native} bars; cannot serve {bar_size}")
        rows = self._rows(symbol)
        if self.daily:
            rows = rows.with_columns(pl.col("ts").dt.date().alias("day"))
        else:
            rows = rows.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().alias("day"))
        days = sorted(set(rows["day"].to_list()) & set(self._session_days(rows)))
        rows = rows.join(_session_table(days, use_rth, self.calendar_name), on="day")
        if use_rth and not self.daily:
            rows = rows.filter(pl.col("ts").is_between(pl.col("anchor"), pl.col("close_at"), closed="left"))
        return _finish(rows, native=self.native, bar_size=bar_size, what_to_show=what_to_show, start=start,
                       end=end)

    def _session_days(self, rows: pl.DataFrame) -> list[date]:
        if rows.is_empty():
            return []
        cal = exchange_calendar(self.calendar_name)
        labels = cal.sessions_in_range(pd.Timestamp(rows["day"].min()), pd.Timestamp(rows["day"].max()))
        return [label.date() for label in labels]

