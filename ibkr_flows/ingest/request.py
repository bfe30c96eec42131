"""What one ingestion run is asked to do: the `ingest-bars` flow's form in the Prefect UI, the CLI's options and the
engine's input are this one model, validated before any connection is made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ibkr_flows.ib.historical import BarSize, WhatToShow
from ibkr_flows.ib.instruments import InstrumentId, InvalidInstrumentId
from ibkr_flows.ingest.plan import WHOLE_SERIES, WHOLE_SERIES_CLASSES

QualityEngine = Literal["great_expectations", "polars"]


def aware(name: str, value: datetime | None) -> datetime | None:
    """Times must say their zone: a naive one would silently be read in the machine's local time."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got {value!r}")
    return value


class IngestRequest(BaseModel):
    """Which bars to fetch into the bars table. Each series resumes from its last stored bar; `start` (default
    `lookback_days` before `end`) only matters for series never stored; `end` defaults to now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbols: tuple[str, ...] = Field(("AAPL", "MSFT", "SPY"), min_length=1,
                                     description="Instrument ids: AAPL (a US stock), STK:SAP@IBIS:EUR, "
                                                 "FUT:ES@CME:202503, CASH:EUR.USD@IDEALPRO, IND:SPX@CBOE, ...")
    bar_size: BarSize = Field("1 min", description="IB bar size")
    what_to_show: WhatToShow | None = Field(
        None, description="TRADES, MIDPOINT, BID_ASK, ADJUSTED_LAST, BID, ASK; empty = each instrument's default "
                          "(MIDPOINT for currency pairs, TRADES otherwise)")
    use_rth: bool = Field(True, description="Regular trading hours only (false: extended hours too)")
    start: datetime | None = Field(None, description="First bar for series never stored (UTC)")
    end: datetime | None = Field(None, description="End of the range, exclusive (UTC); empty = now")
    lookback_days: int = Field(7, ge=1, description="Default start: this many days before the end")
    quality_engine: QualityEngine = Field("great_expectations",
                                          description="great_expectations, or polars (the same rules, faster)")
    symbol_concurrency: int = Field(4, ge=1, le=16, description="Symbols fetched at once over the one connection")
    request_timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one historical request")

    @field_validator("symbols", mode="before")
    @classmethod
    def _canonical_ids(cls, value: object) -> object:
        """Each id parsed now, before any connection, and kept in its canonical text: the text the bars' `symbol`
        column and the watermarks use, so `aapl` and `AAPL` (or `STK:AAPL@SMART:USD`) are one series."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            try:
                value = tuple(dict.fromkeys(str(InstrumentId.parse(str(text))) for text in value))
            except InvalidInstrumentId as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None, info: object) -> datetime | None:
        return aware(getattr(info, "field_name", "time"), value)

    @model_validator(mode="after")
    def _served(self) -> Self:
        """A data type IB never serves for a class (TRADES of a currency pair) is refused here, not by TWS; so is
        an end date for a continuous future, which IB serves only up to now (its bars go to the continuous table,
        not the bars table, where they would share the front contract's conId)."""
        continuous = [str(i) for i in self.instruments() if i.cls.value in WHOLE_SERIES_CLASSES]
        if continuous and self.end:
            raise ValueError(f"continuous futures ({', '.join(continuous)}) are served only up to now (IB refuses an "
                             "end date for them): leave end empty, or ingest the dated contracts, e.g. "
                             "FUT:ES@CME:202503")
        refused = [str(i) for i in self.instruments() if self.what_to_show and i.refuses(self.what_to_show)]
        if refused:
            raise ValueError(f"IB serves no {self.what_to_show} bars for currency pairs ({', '.join(refused)}): "
                             "use --what-to-show MIDPOINT, BID, ASK or BID_ASK (or leave it out: MIDPOINT)")
        return self

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.start and self.start > datetime.now(UTC):
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is in the future: IB has no bars there yet")
        if self.end and self.what_to_show in WHOLE_SERIES:
            raise ValueError(f"{self.what_to_show} is served only up to now (IB refuses an end date for it): "
                             "leave end empty")
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start {self.start:%Y-%m-%d %H:%M} is not before end {self.end:%Y-%m-%d %H:%M}")
        return self

    def instruments(self) -> tuple[InstrumentId, ...]:
        return tuple(InstrumentId.parse(text) for text in self.symbols)

    def what_to_show_for(self, instrument: InstrumentId) -> str:
        """The data type fetched for `instrument`: the one asked for, else the instrument class's default."""
        return self.what_to_show or instrument.default_what_to_show()

    def resolved_end(self) -> datetime:
        return self.end or datetime.now(UTC)

    def resolved_start(self, end: datetime) -> datetime:
        """Where a series never stored starts."""
        return self.start or end - timedelta(days=self.lookback_days)
