"""One instrument of an ingestion run as TWS resolved it: its id (the bars' `symbol`), the contract every request
names (carrying includeExpired for an expired future) and the data type fetched for it."""

from __future__ import annotations

from dataclasses import dataclass

from ib_async import Contract, ContractDetails

from ibkr_flows.ib.calendars import NYSE, UnknownSessionCalendarError, calendar_for
from ibkr_flows.ib.instruments import InstrumentId


@dataclass(frozen=True)
class ResolvedSeries:
    instrument: InstrumentId
    details: ContractDetails
    what_to_show: str

    @property
    def symbol(self) -> str:
        """The canonical id text: what the bars' `symbol` column, the watermarks and the report use."""
        return str(self.instrument)

    @property
    def contract(self) -> Contract:
        contract = self.details.contract
        assert contract is not None
        return contract

    @property
    def sec_type(self) -> str:
        return self.contract.secType

    @property
    def is_ib_continuous(self) -> bool:
        """IB's continuous future (CONTFUT): described as its front contract (that conId), so its bars are stored
        in the continuous table and the instruments table records it as that dated contract."""
        return self.sec_type == "CONTFUT"

    @property
    def calendar_name(self) -> str | None:
        """The session calendar this instrument trades on (`ib.calendars`), from its class, exchanges and
        timeZoneId; None when none is known (requests then follow NYSE sessions, see `sessions_note`)."""
        try:
            return calendar_for(self.sec_type, self.contract.exchange, self.contract.primaryExchange,
                                self.details.timeZoneId)
        except UnknownSessionCalendarError:
            return None

    @property
    def planning_calendar(self) -> str:
        """The calendar requests are planned and bars checked on: the instrument's own, else NYSE's."""
        return self.calendar_name or NYSE

    @property
    def judges_completeness(self) -> bool:
        """Whether bars per session can be counted: the instrument's calendar is known (a mid-day break, Tokyo's
        lunch, is part of it)."""
        return self.calendar_name is not None

    def sessions_note(self, use_rth: bool) -> str | None:
        """Why some of this instrument's bars may not have been requested, for the run's warnings; None when its
        own calendar was followed."""
        if self.calendar_name is not None:
            return None
        hours = "regular (09:30-16:00)" if use_rth else "extended (04:00-20:00)"
        return (f"{self.symbol}: {self.sec_type} on {self.contract.exchange} ({self.details.timeZoneId}) has no "
                f"known session calendar, so requests follow the NYSE calendar: only its bars within NYSE "
                f"{hours} New York hours on NYSE trading days were requested, and session completeness is not "
                "judged for it. Fix: add its exchange to ibkr_flows.ib.calendars.EXCHANGE_CALENDARS")
