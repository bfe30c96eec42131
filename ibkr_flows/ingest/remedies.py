"""What a user does about IB refusing an ingestion request: the fix that goes with IB's own reason.

IB's texts say what is wrong in IB's terms ("Time length exceed max.", "bar size setting is invalid"); the user
acts through this project's options, so each fix names the option to change. Matched on IB's code and its
wording, the same way `ib.codes.classify` tells the cases of 162 apart.
"""

from __future__ import annotations

from ibkr_flows.ib.codes import NO_PERMISSIONS_TEXT, TIME_LENGTH_TEXT, ErrorCode

_BY_TEXT: tuple[tuple[str, str], ...] = (
    ("adjusted last", "ADJUSTED_LAST is served only up to now: send it with an empty end date (`ibkr data ingest` "
                      "does; drop --end / `end` for ADJUSTED_LAST)."),
    ("bar size setting is invalid", "use one of IB's bar sizes (`ibkr data ingest --help` lists them)."),
    (TIME_LENGTH_TEXT.lower(), "ask for less per request: a larger --bar-size or fewer --lookback-days "
                               "(IB caps how far back one request of a bar size may reach)."),
    (NO_PERMISSIONS_TEXT.lower(), "subscribe to market data for this exchange (Client Portal: Settings -> Market "
                                  "Data Subscriptions), or use a paper account that shares the live one's data."),
)
_BY_CODE: dict[int, str] = {
    ErrorCode.UNKNOWN_CONTRACT: "check the symbol (an exchange ticker such as AAPL or BRK.B, traded in USD on SMART).",
    ErrorCode.INVALID_END_DATE: "give --end as a UTC date or time, e.g. 2024-07-12 or '2024-07-12 20:00'.",
    ErrorCode.REQUEST_INVALID: "IB does not serve this combination of options; change --what-to-show, --bar-size or "
                               "--rth/--eth.",
}


def fix_for(code: int, text: str) -> str:
    """The fix for IB's answer `code` / `text`, most specific first; empty when there is nothing to suggest."""
    lowered = text.lower()
    for fragment, fix in _BY_TEXT:
        if fragment in lowered:
            return fix
    return _BY_CODE.get(code, "")
