"""Find the doctor's verdict in a failed Prefect state."""

from __future__ import annotations

from typing import Any

from prefect.states import State

from ibkr_flows.doctor.diagnosis import TWSConnectionError


def tws_error_in(state: State[Any]) -> TWSConnectionError | None:
    """The `TWSConnectionError` a run failed with, also when another exception wraps it; None for other failures
    (a bad parameter, an incomplete ingestion), which are not connection alerts."""
    error: object = state.result(raise_on_failure=False)
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        if isinstance(error, TWSConnectionError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
