"""One instrument of an ingestion run as TWS resolved it: its id (the bars' `symbol`), the contract every request
names (carrying includeExpired for an expired future) and the data type fetched for it."""

from __future__ import annotations

from dataclasses import dataclass

from ib_async import Contract, ContractDetails

from ibkr_flows.ib.instruments import InstrumentId

NYSE_SESSION_CLASSES = frozenset({"STK", "IND"})
"""Security types whose US-dollar listings trade within the NYSE sessions the planner and the session checks use
(US stocks; CBOE indices, computed while US stocks trade). Per-instrument calendars are later work: until then
everything else (futures, currency pairs, stocks abroad) is fetched within NYSE sessions only, and said so."""


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
        in the continuous table and it gets no row of its own in the instruments table."""
        return self.sec_type == "CONTFUT"

    @property
    def follows_nyse_sessions(self) -> bool:
        return self.sec_type in NYSE_SESSION_CLASSES and self.contract.currency == "USD"

    def sessions_note(self, use_rth: bool) -> str | None:
        """Why some of this instrument's bars were not requested, for the run's warnings; None when none are
        missing that way."""
        if self.follows_nyse_sessions:
            return None
        hours = "regular (09:30-16:00)" if use_rth else "extended (04:00-20:00)"
        return (f"{self.symbol}: {self.sec_type} on {self.contract.exchange} ({self.details.timeZoneId}) trades "
                f"outside NYSE sessions, but requests still follow the NYSE calendar: only its bars within NYSE "
                f"{hours} New York hours on NYSE trading days were requested, and session completeness is not "
                "judged for it")
