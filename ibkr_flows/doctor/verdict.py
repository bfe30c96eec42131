"""The doctor's way to stop at the first conclusive layer."""

from __future__ import annotations

from ibkr_flows.doctor.diagnosis import FailureClass


class Verdict(Exception):
    """Raised by a layer that has decided: the run stops there and reports `cls` with `summary`."""

    def __init__(self, cls: FailureClass, summary: str) -> None:
        super().__init__(summary)
        self.cls = cls
        self.summary = summary
