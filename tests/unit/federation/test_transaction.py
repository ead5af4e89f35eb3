"""Transactions: outgoing body, batching limits, incoming envelope checks.

Spec: server-server API §"Transactions", ``PUT /_matrix/federation/v1/send/{txnId}``.
"""

from __future__ import annotations

from typing import Any

import pytest

from refserver.federation.transaction import (
    MAX_EDUS,
    MAX_PDUS,
    ParsedTransaction,
    Transaction,
    TransactionError,
    validate_incoming_transaction,
)


def _pdus(n: int) -> list[dict[str, Any]]:
    return [{"event": i} for i in range(n)]


def _edus(n: int) -> list[dict[str, Any]]:
    return [{"edu_type": "m.typing", "content": {"i": i}} for i in range(n)]


# --- outgoing --------------------------------------------------------------------------------


def test_limits_are_the_spec_limits() -> None:
    assert (MAX_PDUS, MAX_EDUS) == (50, 100)


def test_to_json_is_the_send_body_without_destination_or_txn_id() -> None:
    txn = Transaction(
        origin="a.example",
        destination="b.example",
        txn_id="t1",
        origin_server_ts=1000,
        pdus=_pdus(1),
        edus=(),
    )
    assert txn.to_json() == {
        "origin": "a.example",
        "origin_server_ts": 1000,
        "pdus": [{"event": 0}],
        "edus": [],
    }


def test_outgoing_transaction_round_trips_through_incoming_validation() -> None:
    txn = Transaction(
        origin="a.example",
        destination="b.example",
        txn_id="t1",
        origin_server_ts=5,
        pdus=_pdus(MAX_PDUS),
        edus=_edus(MAX_EDUS),
    )
    parsed = validate_incoming_transaction(txn.to_json(), origin_from_header="a.example")
    assert parsed == ParsedTransaction("a.example", 5, _pdus(MAX_PDUS), _edus(MAX_EDUS))


@pytest.mark.parametrize("pdus, edus", [(MAX_PDUS + 1, 0), (0, MAX_EDUS + 1)])
def test_transaction_refuses_more_than_the_limits(pdus: int, edus: int) -> None:
    with pytest.raises(ValueError):
        Transaction("a", "b", "t", 0, _pdus(pdus), _edus(edus))


# --- incoming --------------------------------------------------------------------------------


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "origin": "a.example",
        "origin_server_ts": 1234,
        "pdus": [],
        "edus": [],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def test_valid_transaction_is_parsed() -> None:
    parsed = validate_incoming_transaction(
        _body(pdus=_pdus(2), edus=_edus(1)), origin_from_header="a.example"
    )
    assert parsed.origin == "a.example"
    assert parsed.origin_server_ts == 1234
    assert parsed.pdus == _pdus(2)
    assert parsed.edus == _edus(1)


def test_edus_may_be_absent() -> None:
    parsed = validate_incoming_transaction(_body(edus=_DROP), origin_from_header="a.example")
    assert parsed.edus == []


def test_unknown_top_level_keys_are_ignored() -> None:
    body = _body(destination="b.example", previous_ids=[], extra={"x": 1})
    validate_incoming_transaction(body, origin_from_header="a.example")


def test_exactly_the_limits_are_accepted() -> None:
    body = _body(pdus=_pdus(MAX_PDUS), edus=_edus(MAX_EDUS))
    validate_incoming_transaction(body, origin_from_header="a.example")


BAD_JSON: dict[str, Any] = {
    "body is a list": [],
    "body is a string": "txn",
    "body is null": None,
    "origin missing": _body(origin=_DROP),
    "origin not a string": _body(origin=1),
    "origin_server_ts missing": _body(origin_server_ts=_DROP),
    "origin_server_ts a string": _body(origin_server_ts="1234"),
    "origin_server_ts a float": _body(origin_server_ts=1234.5),
    "origin_server_ts a bool": _body(origin_server_ts=True),
    "pdus missing": _body(pdus=_DROP),
    "pdus an object": _body(pdus={}),
    "pdus null": _body(pdus=None),
    "a pdu is not an object": _body(pdus=[{}, "$event"]),
    "edus an object": _body(edus={}),
    "edus null": _body(edus=None),
    "an edu is not an object": _body(edus=[[]]),
    "51 pdus": _body(pdus=_pdus(MAX_PDUS + 1)),
    "101 edus": _body(edus=_edus(MAX_EDUS + 1)),
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_malformed_transaction_is_400_bad_json(body: Any) -> None:
    with pytest.raises(TransactionError) as info:
        validate_incoming_transaction(body, origin_from_header="a.example")
    assert (info.value.status, info.value.errcode) == (400, "M_BAD_JSON")


def test_origin_that_is_not_the_authenticated_server_is_403_forbidden() -> None:
    with pytest.raises(TransactionError) as info:
        validate_incoming_transaction(_body(), origin_from_header="evil.example")
    assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")
    assert "a.example" in info.value.message


def test_limits_are_checked_before_the_origin() -> None:
    # a malformed body is reported as such even when it also claims another origin
    with pytest.raises(TransactionError) as info:
        validate_incoming_transaction(
            _body(pdus=_pdus(MAX_PDUS + 1)), origin_from_header="evil.example"
        )
    assert info.value.status == 400
