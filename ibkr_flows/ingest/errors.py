"""What can go wrong while fetching one symbol, as types the flow can branch on.

IB reports most historical-data problems as error 162 with different texts; ib_async turns a timeout into an
empty list that looks exactly like "no data". These classes keep the cases apart so each gets its own handling:
pacing -> back off and retry, no data -> an empty range, permissions -> fail the symbol, disconnect -> reconnect
and resume.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every ingestion failure."""


class SymbolError(IngestError):
    """This symbol cannot be fetched; the other symbols of the run go on."""

    def __init__(self, symbol: str, reason: str) -> None:
        super().__init__(f"{symbol}: {reason}")
        self.symbol = symbol
        self.reason = reason

    def __reduce__(self) -> tuple[type[SymbolError], tuple[str, str]]:
        return (type(self), (self.symbol, self.reason))


class UnknownSymbolError(SymbolError):
    """TWS has no such contract (error 200)."""


class AmbiguousSymbolError(SymbolError):
    """The id names several contracts (TWS lists more than one); the reason lists them and the ids that pick one."""


class NoPermissionsError(SymbolError):
    """The account lacks market data permissions for the symbol's exchange (162)."""


class RequestRejectedError(SymbolError):
    """TWS refused the request itself (321, 162 'Time length exceed max.', 10314, ...), or would: a combination IB
    does not serve. Never retried and never a connection problem: the answer is IB's, the fix is the request's.
    `code` is IB's error code (None when refused here before sending, by IB's documented rule)."""

    def __init__(self, symbol: str, reason: str, code: int | None = None, fix: str = "") -> None:
        super().__init__(symbol, f"{reason.rstrip('. ')}. Fix: {fix}" if fix else reason)
        self.ib_reason = reason
        self.code = code
        self.fix = fix

    def __reduce__(self) -> tuple[type[RequestRejectedError], tuple[str, str, int | None, str]]:  # type: ignore[override]
        return (type(self), (self.symbol, self.ib_reason, self.code, self.fix))


class NothingStoredError(SymbolError):
    """Bars were expected (requests were planned and sent) but none were stored: every range came back empty, or
    every bar fetched failed the quality checks. A run that says `ok` over an empty table is the failure users
    find last, so this fails the symbol with what happened and where to look."""


class RetryableError(IngestError):
    """Worth another try after a pause: pacing violations, timeouts, dropped connections."""


class PacingViolationError(RetryableError):
    """IB answered 162 'pacing violation' despite the client-side budget (another program shares the TWS?)."""


class RequestTimeoutError(RetryableError):
    """No answer in time: ib_async would have returned an empty list, indistinguishable from 'no data'."""


class DisconnectedError(RetryableError):
    """The socket dropped (TWS restart, network) or IB's servers are unreachable (1100)."""


class RetriesExhaustedError(SymbolError):
    """A retryable error kept happening; the symbol stops at its last stored bar and resumes on the next run."""


class IngestIncompleteError(IngestError):
    """Some symbols failed; the others were stored. Raised at the end of a run so the flow is marked failed."""

    def __init__(self, report: object) -> None:
        failed = getattr(report, "failed", [])
        super().__init__("; ".join(f"{s.symbol}: {s.error}" for s in failed) or "ingestion incomplete")
        self.report = report

    def __reduce__(self) -> tuple[type[IngestIncompleteError], tuple[object]]:
        return (IngestIncompleteError, (self.report,))
