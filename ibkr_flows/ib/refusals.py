"""An error that carries a request's id is that request's answer.

TWS answers a request it refuses with an error carrying the request's id and nothing else. ib_async ends the
request only for the codes it counts as errors; others (321 "Error validating request" among them: ADJUSTED_LAST
with an end date, an invalid bar size) it logs as a warning and leaves the request waiting. A caller that only
awaits ib_async then waits for its timeout, retries, and ends blaming the connection or the data farm.

`answer_or_refusal` ends the request at once instead. ib_async hands `errorEvent` the contract object a request
was made with; the request is sent with its own copy of the caller's contract, so that object names exactly this
request (two requests about one contract never take each other's errors), without reaching into ib_async's
request-id bookkeeping. The doctor's data probe and the ingestion both use it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ib_async import IB, Contract, RequestError

from ibkr_flows.ib.codes import ErrorClass, classify

T = TypeVar("T")


@dataclass(frozen=True)
class Refusal:
    """TWS's error for one request: its id, code and text."""

    req_id: int
    code: int
    text: str

    @property
    def error_class(self) -> ErrorClass:
        return classify(self.code, self.text)

    def as_request_error(self) -> RequestError:
        return RequestError(self.req_id, self.code, self.text)


async def answer_or_refusal(ib: IB, contract: Contract, send: Callable[[Contract], Awaitable[T]],
                            timeout: float | None) -> T | Refusal:
    """`send(contract)`'s answer, or TWS's refusal of that request, whichever comes first; `TimeoutError` when
    neither came within `timeout` (None: wait for one). Notices and warnings (farm status, 21xx) are not answers.
    Failures of the request itself (ConnectionError when the socket drops, ib_async's own RequestError)
    propagate."""
    own = copy.copy(contract)
    refused: asyncio.Future[Refusal] = asyncio.get_running_loop().create_future()

    def on_error(req_id: int, code: int, text: str, about: Contract | None) -> None:
        if about is own and req_id >= 0 and not refused.done() and classify(code, text) is not ErrorClass.NOTICE:
            refused.set_result(Refusal(req_id, code, text))

    ib.errorEvent += on_error
    try:
        pending = asyncio.ensure_future(send(own))
    except BaseException:
        ib.errorEvent -= on_error
        raise
    pending.add_done_callback(_retrieve)
    try:
        await asyncio.wait({pending, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if refused.done():
            return refused.result()
        if pending.done():
            return pending.result()
        raise TimeoutError(f"no answer within {timeout:.1f} s")
    finally:
        ib.errorEvent -= on_error
        pending.cancel()


def _retrieve(task: asyncio.Future[object]) -> None:
    """Mark the outcome of a request abandoned after a refusal as seen, so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()
