"""Bars from the user's own file, served by the simulator as TWS would serve them (`ibkr sim start --replay`)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl

from ibkr_flows.ib.historical import bar_step
from ibkr_flows.ib.sessions import exchange_calendar
from ibkr_flows.sim.bars import BAR_SCHEMA, InvalidBarSize, check_what_to_show, finish_bars, session_table, trading

TIME_COLUMNS = ("ts", "date", "datetime", "timestamp", "time")


class ReplayBars:
    """Bars from a CSV or Parquet file: `ts` (or date/datetime/timestamp/time), open, high, low, close, volume,
    optionally wap, count and symbol (without it, every symbol gets the file's bars).

    Naive times are read as UTC; date-only rows are daily bars, and so are rows whose times are all midnight a day
    or more apart (what pandas writes for dates). The file's own bar size is the finest served; larger sizes are
    aggregated from the session's open as TWS does. Without a `count` column the trade count is served as 0: TWS
    always sends one for TRADES, and IB's -1 would tell the quality checks there were no trades to count."""

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
        daily = ts.dtype == pl.Date() or _midnights_a_day_apart(ts)
        if daily:
            ts = ts.dt.date() if ts.dtype != pl.Date() else ts
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
            (pl.col("count") if "count" in frame.columns else pl.lit(0)).cast(pl.Int64).alias("count"),
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
        check_what_to_show(what_to_show)
        rows = self._rows(symbol)
        if rows.is_empty():
            raise ValueError(f"replay file {self.path.name} has no bars for {symbol}")
        return rows["ts"].min()  # type: ignore[return-value]

    def bars(self, symbol: str, bar_size: str, what_to_show: str, use_rth: bool, start: datetime,
             end: datetime, as_of: date | None = None) -> pl.DataFrame:
        """The file's bars as recorded: `as_of` is accepted and ignored (a user's file holds its own scale)."""
        check_what_to_show(what_to_show)
        step = bar_step(bar_size)
        if step < self.native:
            raise InvalidBarSize(f"replay file {self.path.name} holds {self.native} bars; cannot serve {bar_size}")
        rows = self._rows(symbol)
        if self.daily:
            rows = rows.with_columns(pl.col("ts").dt.date().alias("day"))
        else:
            rows = rows.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().alias("day"))
        days = sorted(set(rows["day"].to_list()) & set(self._session_days(rows)))
        rows = rows.join(session_table(days, use_rth, self.calendar_name), on="day")
        if not self.daily:
            rows = rows.filter(trading(use_rth))
        return finish_bars(rows, native=self.native, bar_size=bar_size, what_to_show=what_to_show, start=start,
                           end=end, calendar=self.calendar_name)

    def _session_days(self, rows: pl.DataFrame) -> list[date]:
        if rows.is_empty():
            return []
        cal = exchange_calendar(self.calendar_name)
        labels = cal.sessions_in_range(pd.Timestamp(rows["day"].min()), pd.Timestamp(rows["day"].max()))
        return [label.date() for label in labels]


def _midnights_a_day_apart(ts: pl.Series) -> bool:
    """Daily bars written as datetimes: every time is 00:00 and no two rows of a symbol are less than a day apart
    (an intraday file has times other than midnight in every session)."""
    if not isinstance(ts.dtype, pl.Datetime) or ts.is_empty():
        return False
    at_midnight = (ts.dt.hour() == 0) & (ts.dt.minute() == 0) & (ts.dt.second() == 0) & (ts.dt.microsecond() == 0)
    gaps = ts.unique().sort().diff().drop_nulls()
    return bool(at_midnight.all()) and (gaps.is_empty() or gaps.min() >= timedelta(days=1))  # type: ignore[operator]
