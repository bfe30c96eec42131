"""Instrument ids parse to the contract TWS is asked about, print back canonically, and refuse malformed text before
anything connects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_flows.ib.instruments import InstrumentClass, InstrumentId, InvalidInstrumentId


@pytest.mark.parametrize(("text", "canonical", "contract"), [
    ("AAPL", "AAPL", {"secType": "STK", "symbol": "AAPL", "exchange": "SMART", "currency": "USD"}),
    ("aapl", "AAPL", {"secType": "STK", "symbol": "AAPL", "exchange": "SMART", "currency": "USD"}),
    ("STK:AAPL@SMART:USD", "AAPL", {"secType": "STK", "symbol": "AAPL"}),
    ("BRK.B", "BRK.B", {"secType": "STK", "symbol": "BRK.B"}),
    ("STK:SHOP@SMART", "STK:SHOP@SMART", {"secType": "STK", "symbol": "SHOP", "exchange": "SMART", "currency": ""}),
    ("STK:SAP@IBIS:EUR", "STK:SAP@IBIS:EUR", {"secType": "STK", "symbol": "SAP", "exchange": "IBIS",
                                              "currency": "EUR"}),
    ("STK:7203@TSEJ:JPY", "STK:7203@TSEJ:JPY", {"symbol": "7203", "exchange": "TSEJ", "currency": "JPY"}),
    ("FUT:ES@CME:202503", "FUT:ES@CME:202503", {"secType": "FUT", "symbol": "ES", "exchange": "CME",
                                                "lastTradeDateOrContractMonth": "202503", "includeExpired": True}),
    ("FUT:CL@NYMEX:20250120", "FUT:CL@NYMEX:20250120", {"lastTradeDateOrContractMonth": "20250120"}),
    ("CONTFUT:ES@CME", "CONTFUT:ES@CME", {"secType": "CONTFUT", "symbol": "ES", "exchange": "CME",
                                          "includeExpired": False}),
    ("CASH:EUR.USD@IDEALPRO", "CASH:EUR.USD@IDEALPRO", {"secType": "CASH", "symbol": "EUR", "currency": "USD",
                                                        "exchange": "IDEALPRO"}),
    ("CASH:USD.JPY", "CASH:USD.JPY@IDEALPRO", {"symbol": "USD", "currency": "JPY"}),
    ("IND:SPX@CBOE", "IND:SPX@CBOE", {"secType": "IND", "symbol": "SPX", "exchange": "CBOE", "currency": ""}),
    ("CONID:265598", "CONID:265598", {"conId": 265598, "secType": ""}),
])
def test_ids_parse_to_contracts_and_print_canonically(text: str, canonical: str, contract: dict[str, object]
                                                      ) -> None:
    parsed = InstrumentId.parse(text)
    assert str(parsed) == canonical
    assert InstrumentId.parse(canonical) == parsed
    built = parsed.contract()
    assert {k: getattr(built, k) for k in contract} == contract


@pytest.mark.parametrize(("text", "message"), [
    ("../etc/passwd", "invalid instrument id"),
    ("AA PL", "invalid instrument id"),
    ("", "invalid instrument id"),
    ("OPT:AAPL@SMART", "unknown instrument class 'OPT'"),
    ("FUT:ES@CME", "needs its contract month"),
    ("FUT:ES:202503", "needs its exchange"),
    ("FUT:ES@CME:2025", "needs its contract month"),
    ("IND:SPX", "needs its exchange"),
    ("STK:SAP@IBIS:EURO", "three letters"),
    ("STK:SAP@IBIS:E1R", "three letters"),
    ("CASH:EURUSD", "BASE.QUOTE"),
    ("CASH:EUR.US@IDEALPRO", "BASE.QUOTE"),
    ("CONTFUT:ES@CME:202503", "no contract month"),
    ("CONID:AAPL", "CONID:<digits>"),
])
def test_malformed_ids_are_refused_with_the_forms_that_work(text: str, message: str) -> None:
    with pytest.raises(InvalidInstrumentId, match=message):
        InstrumentId.parse(text)


def test_currency_pairs_default_to_midpoint_and_refuse_trades() -> None:
    pair = InstrumentId.parse("CASH:EUR.USD@IDEALPRO")
    assert pair.default_what_to_show() == "MIDPOINT"
    assert pair.refuses("TRADES") and pair.refuses("adjusted_last") and not pair.refuses("BID_ASK")
    stock = InstrumentId.parse("AAPL")
    assert stock.default_what_to_show() == "TRADES" and not stock.refuses("TRADES")


@given(st.text(max_size=30))
def test_any_text_parses_or_is_refused_never_crashes(text: str) -> None:
    try:
        parsed = InstrumentId.parse(text)
    except InvalidInstrumentId:
        return
    assert InstrumentId.parse(str(parsed)) == parsed and parsed.cls in InstrumentClass
