"""refserver.events.format: PDU format per room version, size limits, strict canonical JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.events.format import (
    MAX_PDU_BYTES,
    InvalidPdu,
    check_client_event_content,
    check_pdu_format,
)
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

ALL_VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
EVENT_ID = "$" + "A" * 43


def _pdu(**overrides: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": {"body": "hi"},
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": [EVENT_ID],
        "auth_events": [EVENT_ID],
        "depth": 7,
        "hashes": {"sha256": "abc"},
        "signatures": {"example.org": {"ed25519:1": "sig"}},
        "unsigned": {"age": 1},
    }
    pdu.update(overrides)
    return pdu


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda pdu: pdu.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda pdu: pdu.__setitem__(key, value)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_a_well_formed_pdu_passes(room_version: RoomVersion) -> None:
    check_pdu_format(_pdu(), room_version)
    check_pdu_format(_pdu(state_key="", type="m.room.name", origin="example.org"), room_version)
    check_pdu_format({k: v for k, v in _pdu().items() if k != "unsigned"}, room_version)


BAD_JSON_CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "type missing": _without("type"),
    "type not a string": _set("type", 5),
    "sender missing": _without("sender"),
    "sender not a user ID": _set("sender", "alice"),
    "sender with bad server name": _set("sender", "@alice:bad host"),
    "content missing": _without("content"),
    "content not an object": _set("content", []),
    "origin_server_ts missing": _without("origin_server_ts"),
    "origin_server_ts not an int": _set("origin_server_ts", "1"),
    "origin_server_ts a bool": _set("origin_server_ts", True),
    "room_id missing": _without("room_id"),
    "room_id not a string": _set("room_id", 1),
    "room_id without sigil": _set("room_id", "room:example.org"),
    "state_key not a string": _set("state_key", None),
    "auth_events missing": _without("auth_events"),
    "auth_events not a list": _set("auth_events", EVENT_ID),
    "auth_events over 10": _set("auth_events", [EVENT_ID] * 11),
    "auth_events entry not a string": _set("auth_events", [1]),
    "auth_events entry not an event ID": _set("auth_events", ["!x:y"]),
    "prev_events missing": _without("prev_events"),
    "prev_events not a list": _set("prev_events", {}),
    "prev_events over 20": _set("prev_events", [EVENT_ID] * 21),
    "prev_events entry not a string": _set("prev_events", [[EVENT_ID]]),
    "depth missing": _without("depth"),
    "depth not an int": _set("depth", "7"),
    "depth negative": _set("depth", -1),
    "depth a float": _set("depth", 7.0),
    "depth over 2**53-1": _set("depth", 2**53),
    "hashes missing": _without("hashes"),
    "hashes not an object": _set("hashes", "abc"),
    "hashes without sha256": _set("hashes", {}),
    "hashes.sha256 not a string": _set("hashes", {"sha256": 1}),
    "signatures missing": _without("signatures"),
    "signatures not an object": _set("signatures", []),
    "signatures server entry not an object": _set("signatures", {"example.org": "sig"}),
    "signature not a string": _set("signatures", {"example.org": {"ed25519:1": 1}}),
    "unsigned not an object": _set("unsigned", []),
    "float in content": _set("content", {"body": "hi", "n": 1.5}),
    "nested float": _set("content", {"a": [{"b": 0.0}]}),
    "integer above 2**53-1": _set("content", {"n": 2**53}),
    "integer below -(2**53)+1": _set("content", {"n": -(2**53)}),
    "float in unsigned": _set("unsigned", {"age": 1.5}),
    "non-string key": _set("content", {1: "x"}),
}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
@pytest.mark.parametrize("mutate", BAD_JSON_CASES.values(), ids=BAD_JSON_CASES.keys())
def test_malformed_fields_are_rejected_with_m_bad_json(
    room_version: RoomVersion, mutate: Callable[[dict[str, Any]], None]
) -> None:
    pdu = _pdu()
    mutate(pdu)
    with pytest.raises(InvalidPdu) as info:
        check_pdu_format(pdu, room_version)
    assert info.value.errcode == "M_BAD_JSON"


TOO_LARGE_CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "type over 255 bytes": _set("type", "t" * 256),
    "type over 255 bytes (multi-byte)": _set("type", "é" * 128),
    "state_key over 255 bytes": _set("state_key", "k" * 256),
    "room_id over 255 bytes": _set("room_id", "!" + "r" * 255),
    "auth event ID over 255 bytes": _set("auth_events", ["$" + "e" * 255]),
    "prev event ID over 255 bytes": _set("prev_events", ["$" + "e" * 255]),
    "whole PDU over 65536 bytes": _set("content", {"body": "x" * MAX_PDU_BYTES}),
}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
@pytest.mark.parametrize("mutate", TOO_LARGE_CASES.values(), ids=TOO_LARGE_CASES.keys())
def test_oversized_fields_are_rejected_with_m_too_large(
    room_version: RoomVersion, mutate: Callable[[dict[str, Any]], None]
) -> None:
    pdu = _pdu()
    mutate(pdu)
    with pytest.raises(InvalidPdu) as info:
        check_pdu_format(pdu, room_version)
    assert info.value.errcode == "M_TOO_LARGE"


def test_sender_over_255_bytes_is_rejected() -> None:
    with pytest.raises(InvalidPdu):
        check_pdu_format(_pdu(sender="@" + "a" * 250 + ":example.org"), ROOM_V11)


def test_boundary_sizes_pass() -> None:
    check_pdu_format(
        _pdu(type="t" * 255, state_key="k" * 255, auth_events=[EVENT_ID] * 10), ROOM_V11
    )
    check_pdu_format(_pdu(prev_events=[EVENT_ID] * 20, depth=2**53 - 1), ROOM_V11)
    check_pdu_format(_pdu(depth=0), ROOM_V11)
    pdu = _pdu(content={"body": ""})
    padding = MAX_PDU_BYTES - len(encode_canonical_json(pdu))
    check_pdu_format(_pdu(content={"body": "x" * padding}), ROOM_V11)
    with pytest.raises(InvalidPdu):
        check_pdu_format(_pdu(content={"body": "x" * (padding + 1)}), ROOM_V11)


def test_a_pdu_must_be_an_object() -> None:
    with pytest.raises(InvalidPdu):
        check_pdu_format([], ROOM_V11)


def _create(**overrides: Any) -> dict[str, Any]:
    return _pdu(
        type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
        depth=1,
        **overrides,
    )


def test_v12_create_must_not_have_a_room_id() -> None:
    create = _create()
    with pytest.raises(InvalidPdu, match="room_id"):
        check_pdu_format(create, ROOM_V12)
    del create["room_id"]
    check_pdu_format(create, ROOM_V12)


@pytest.mark.parametrize("room_version", [ROOM_V10, ROOM_V11], ids=lambda rv: rv.identifier)
def test_pre_v12_create_needs_a_room_id(room_version: RoomVersion) -> None:
    check_pdu_format(_create(), room_version)
    create = _create()
    del create["room_id"]
    with pytest.raises(InvalidPdu, match="room_id"):
        check_pdu_format(create, room_version)


def test_v12_non_create_events_need_a_room_id() -> None:
    pdu = _pdu(room_id="!" + "R" * 43)
    check_pdu_format(pdu, ROOM_V12)
    del pdu["room_id"]
    with pytest.raises(InvalidPdu, match="room_id"):
        check_pdu_format(pdu, ROOM_V12)


def test_v10_redaction_has_top_level_redacts() -> None:
    redaction = _pdu(type="m.room.redaction", content={}, redacts=EVENT_ID)
    check_pdu_format(redaction, ROOM_V10)
    for bad in (None, 5, "not-an-event-id"):
        with pytest.raises(InvalidPdu, match="redacts"):
            check_pdu_format({**redaction, "redacts": bad}, ROOM_V10)
    # In v10 the content copy does not count.
    moved = _pdu(type="m.room.redaction", content={"redacts": EVENT_ID})
    with pytest.raises(InvalidPdu, match="redacts"):
        check_pdu_format(moved, ROOM_V10)


@pytest.mark.parametrize("room_version", [ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier)
def test_v11_redaction_has_redacts_in_content(room_version: RoomVersion) -> None:
    check_pdu_format(_pdu(type="m.room.redaction", content={"redacts": EVENT_ID}), room_version)
    top_level_only = _pdu(type="m.room.redaction", content={}, redacts=EVENT_ID)
    with pytest.raises(InvalidPdu, match=r"content\.redacts"):
        check_pdu_format(top_level_only, room_version)
    with pytest.raises(InvalidPdu, match=r"content\.redacts"):
        check_pdu_format(_pdu(type="m.room.redaction", content={"redacts": 1}), room_version)


def test_client_event_content_accepts_ordinary_events() -> None:
    check_client_event_content("m.room.message", None, {"body": "hi", "msgtype": "m.text"})
    check_client_event_content("m.room.name", "", {"name": "x"})
    check_client_event_content("t" * 255, "k" * 255, {})


@pytest.mark.parametrize(
    "event_type,state_key,content,errcode",
    [
        ("t" * 256, None, {}, "M_TOO_LARGE"),
        ("m.room.name", "k" * 256, {}, "M_TOO_LARGE"),
        ("m.room.message", None, {"body": "x" * MAX_PDU_BYTES}, "M_TOO_LARGE"),
        (5, None, {}, "M_BAD_JSON"),
        ("m.room.name", 5, {}, "M_BAD_JSON"),
        ("m.room.message", None, [], "M_BAD_JSON"),
        ("m.room.message", None, {"n": 1.0}, "M_BAD_JSON"),
        ("m.room.message", None, {"n": [2**53]}, "M_BAD_JSON"),
    ],
)
def test_client_event_content_rejections(
    event_type: Any, state_key: Any, content: Any, errcode: str
) -> None:
    with pytest.raises(InvalidPdu) as info:
        check_client_event_content(event_type, state_key, content)
    assert info.value.errcode == errcode
