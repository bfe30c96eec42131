"""Resolving instrument ids through TWS's reqContractDetails (the real ib_async client against the simulator): one
contract per id, expired futures found with includeExpired, ambiguous and unknown ids refused with the ids that
would work."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from ib_async import IB, ContractDetails

from ibkr_flows.ib.instruments import InstrumentId
from ibkr_flows.ib.resolve import (
    AmbiguousInstrumentError,
    InstrumentResolutionError,
    UnknownInstrumentError,
    resolve,
)
from tests.helpers_instruments import client_at_now, listed


@pytest.fixture(scope="module")
def ib() -> Iterator[IB]:
    with client_at_now(62) as client:
        yield client


def resolved(ib: IB, text: str, *, include_expired: bool = False) -> ContractDetails:
    return ib.run(resolve(ib, InstrumentId.parse(text), include_expired=include_expired))


def refused(ib: IB, text: str) -> InstrumentResolutionError:
    with pytest.raises(InstrumentResolutionError) as info:
        resolved(ib, text)
    return info.value


@pytest.mark.parametrize(("text", "sec_type", "local_symbol", "primary", "currency", "multiplier", "zone"), [
    ("STK:SAP@IBIS:EUR", "STK", "SAP", "IBIS", "EUR", "", "MET"),
    ("STK:SAP@IBIS", "STK", "SAP", "IBIS", "EUR", "", "MET"),
    ("STK:7203@TSEJ:JPY", "STK", "7203", "TSEJ", "JPY", "", "Japan"),
    ("FUT:ES@CME:202503", "FUT", "ESH5", "CME", "USD", "50", "US/Central"),
    ("FUT:NQ@CME:20250620", "FUT", "NQM5", "CME", "USD", "20", "US/Central"),
    ("CONTFUT:ES@CME", "CONTFUT", "ESH5", "CME", "USD", "50", "US/Central"),
    ("FUT:CL@NYMEX:202503", "FUT", "CLH5", "NYMEX", "USD", "1000", "US/Central"),
    ("CONTFUT:CL@NYMEX", "CONTFUT", "CLG5", "NYMEX", "USD", "1000", "US/Central"),
    ("CASH:EUR.USD@IDEALPRO", "CASH", "EUR.USD", "IDEALPRO", "USD", "", "US/Eastern"),
    ("CASH:USD.JPY", "CASH", "USD.JPY", "IDEALPRO", "JPY", "", "US/Eastern"),
    ("IND:SPX@CBOE", "IND", "SPX", "CBOE", "USD", "", "US/Central"),
    ("IND:VIX@CBOE", "IND", "VIX", "CBOE", "USD", "", "US/Central"),
    ("STK:SHOP@TSE:CAD", "STK", "SHOP", "TSE", "CAD", "", "America/Toronto"),
])
def test_every_class_resolves_to_one_contract(ib: IB, text: str, sec_type: str, local_symbol: str, primary: str,
                                              currency: str, multiplier: str, zone: str) -> None:
    details = resolved(ib, text)
    got = details.contract
    assert got.conId == listed(local_symbol, primary)
    assert (got.secType, got.localSymbol, got.primaryExchange, got.currency, got.multiplier) == (
        sec_type, local_symbol, primary, currency, multiplier)
    assert details.timeZoneId == zone
    assert not got.includeExpired


def test_us_stocks_and_con_ids_resolve(ib: IB) -> None:
    assert resolved(ib, "AAPL").contract.conId == 265598
    es = listed("ESH5", "CME")
    assert resolved(ib, f"CONID:{es}").contract.localSymbol == "ESH5"


def test_an_expired_future_is_resolved_with_include_expired_and_says_so(ib: IB,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ibkr.resolve"):
        details = resolved(ib, "FUT:ES@CME:202403")
    assert details.contract.localSymbol == "ESH4"
    assert details.contract.includeExpired  # its data requests need it too
    [record] = [r for r in caplog.records if r.name == "ibkr.resolve"]
    assert "FUT:ES@CME:202403 expired on 20240315" in record.getMessage()
    assert "includeExpired" in record.getMessage()


def test_an_expired_future_by_con_id_needs_include_expired(ib: IB) -> None:
    con_id = listed("ESZ4", "CME")
    error = refused(ib, f"CONID:{con_id}")
    assert isinstance(error, UnknownInstrumentError)
    assert f"CONID:{con_id}" in str(error) and "include_expired=True" in str(error)
    assert resolved(ib, f"CONID:{con_id}", include_expired=True).contract.localSymbol == "ESZ4"


def test_an_ambiguous_id_lists_every_candidate_and_the_ids_that_pick_one(ib: IB) -> None:
    error = refused(ib, "STK:SHOP@SMART")
    assert isinstance(error, AmbiguousInstrumentError)
    message = str(error)
    assert message.startswith("STK:SHOP@SMART is ambiguous: TWS lists 2 contracts")
    for exchange, currency in (("NYSE", "USD"), ("TSE", "CAD")):
        con_id = listed("SHOP", exchange)
        assert f"primary exchange {exchange}, {currency}, conId {con_id}" in message
    picks = re.findall(r"use (\S+) or CONID:(\d+)", message)
    assert len(picks) == 2 == len(error.candidates)
    for exact, con_id in picks:  # each suggested id names exactly its candidate
        assert resolved(ib, exact).contract.conId == int(con_id)
        assert resolved(ib, f"CONID:{con_id}").contract.conId == int(con_id)


def test_an_unknown_contract_month_names_the_listed_ones(ib: IB) -> None:
    error = refused(ib, "FUT:ES@CME:202502")
    assert isinstance(error, UnknownInstrumentError)
    message = str(error)
    assert "FUT:ES@CME:202502" in message
    suggested = re.findall(r"FUT:ES@CME:\d{6}", message.split("nearest", 1)[1])
    assert suggested[:2] == ["FUT:ES@CME:202503", "FUT:ES@CME:202412"]
    assert all(resolved(ib, text).contract.symbol == "ES" for text in suggested)


def test_the_listed_months_are_contract_months_where_a_future_expires_the_month_before(ib: IB) -> None:
    error = refused(ib, "FUT:CL@NYMEX:202801")  # past the listed years
    suggested = re.findall(r"FUT:CL@NYMEX:\d{6}", str(error).split("nearest", 1)[1])
    assert suggested == ["FUT:CL@NYMEX:202712", "FUT:CL@NYMEX:202711", "FUT:CL@NYMEX:202710"]
    december = resolved(ib, suggested[0]).contract  # CLZ7 stops trading in November
    assert (december.localSymbol, december.lastTradeDateOrContractMonth) == ("CLZ7", "20271119")


@pytest.mark.parametrize(("text", "fix"), [
    ("STK:SAP@IBIS:USD", "STK:SAP@IBIS:EUR"),
    ("CASH:EUR.GBP@IDEALPRO", "CASH:EUR.USD@IDEALPRO"),
    ("STK:ZZZZ@SMART:USD", "finds no such listing"),
    ("CONTFUT:ZZ@CME", "TWS lists no future ZZ on CME"),
])
def test_an_unknown_id_is_named_with_the_nearest_fix(ib: IB, text: str, fix: str) -> None:
    error = refused(ib, text)
    assert isinstance(error, UnknownInstrumentError)
    assert str(InstrumentId.parse(text)) in str(error) and fix in str(error)


def test_unknown_ids_are_refused_whether_or_not_ib_async_raises_request_errors(ib: IB) -> None:
    ib.RaiseRequestErrors = False
    try:
        assert isinstance(refused(ib, "FUT:ES@CME:202502"), UnknownInstrumentError)
    finally:
        ib.RaiseRequestErrors = True
