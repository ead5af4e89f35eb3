"""refserver.events.builder: auth events selection, PDU building and finalising."""

from __future__ import annotations

from typing import Any

import pytest

from refserver.events.builder import (
    MAX_DEPTH,
    auth_event_state_keys,
    build_pdu,
    finalise_pdu,
    next_depth,
    select_auth_events,
)
from refserver.events.format import check_pdu_format
from refserver.events.hashing import check_content_hash, compute_event_id
from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from refserver.events.signing import verify_event_signatures
from tests.unit.spec_vectors import spec_signing_key, spec_verify_key

ALICE = "@alice:domain"
BOB = "@bob:remote"
ADMIN = "@admin:domain"

CURRENT_STATE = {
    ("m.room.create", ""): "$create",
    ("m.room.power_levels", ""): "$pl",
    ("m.room.join_rules", ""): "$jr",
    ("m.room.member", ALICE): "$alice",
    ("m.room.member", BOB): "$bob",
    ("m.room.member", ADMIN): "$admin",
    ("m.room.third_party_invite", "tok"): "$3pid",
    ("m.room.name", ""): "$name",
    ("m.room.history_visibility", ""): "$hv",
}


def _select(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: dict[str, Any],
    room_version: RoomVersion,
) -> list[str]:
    return select_auth_events(event_type, state_key, sender, content, CURRENT_STATE, room_version)


# (type, state_key, sender, content, expected auth events *without* the create event)
SELECTION_CASES: list[tuple[str, str | None, str, dict[str, Any], list[str]]] = [
    ("m.room.message", None, ALICE, {"body": "hi"}, ["$pl", "$alice"]),
    ("m.room.name", "", ALICE, {"name": "x"}, ["$pl", "$alice"]),
    ("m.room.power_levels", "", ALICE, {}, ["$pl", "$alice"]),
    ("m.room.member", ALICE, ALICE, {"membership": "join"}, ["$pl", "$alice", "$jr"]),
    ("m.room.member", BOB, ALICE, {"membership": "invite"}, ["$pl", "$alice", "$bob", "$jr"]),
    ("m.room.member", BOB, BOB, {"membership": "knock"}, ["$pl", "$bob", "$jr"]),
    ("m.room.member", BOB, BOB, {"membership": "leave"}, ["$pl", "$bob"]),
    ("m.room.member", BOB, ALICE, {"membership": "ban"}, ["$pl", "$alice", "$bob"]),
    (
        "m.room.member",
        BOB,
        ALICE,
        {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}},
        ["$pl", "$alice", "$bob", "$jr", "$3pid"],
    ),
    (
        "m.room.member",
        BOB,
        BOB,
        {"membership": "join", "join_authorised_via_users_server": ADMIN},
        ["$pl", "$bob", "$jr", "$admin"],
    ),
    (
        "m.room.member",
        BOB,
        BOB,
        {"membership": "leave", "join_authorised_via_users_server": ADMIN},
        ["$pl", "$bob"],
    ),
    (
        "m.room.member",
        BOB,
        ALICE,
        {"membership": "join", "third_party_invite": {"signed": {"token": "tok"}}},
        ["$pl", "$alice", "$bob", "$jr"],
    ),
    (
        "m.room.member",
        BOB,
        ALICE,
        {"membership": "invite", "third_party_invite": {"signed": {"token": "unknown"}}},
        ["$pl", "$alice", "$bob", "$jr"],
    ),
    (
        "m.room.member",
        BOB,
        ALICE,
        {"membership": "invite", "third_party_invite": "garbage"},
        ["$pl", "$alice", "$bob", "$jr"],
    ),
    ("m.room.member", "@carol:x", "@carol:x", {"membership": "join"}, ["$pl", "$jr"]),
]
CASE_IDS = [f"{c[0]}-{c[3].get('membership', '')}-{i}" for i, c in enumerate(SELECTION_CASES)]


@pytest.mark.parametrize("room_version", [ROOM_V10, ROOM_V11], ids=lambda rv: rv.identifier)
@pytest.mark.parametrize("case", SELECTION_CASES, ids=CASE_IDS)
def test_auth_events_selection_before_v12_includes_the_create_event(
    room_version: RoomVersion, case: tuple[str, str | None, str, dict[str, Any], list[str]]
) -> None:
    event_type, state_key, sender, content, expected = case
    assert _select(event_type, state_key, sender, content, room_version) == [
        "$create",
        *expected,
    ]


@pytest.mark.parametrize("case", SELECTION_CASES, ids=CASE_IDS)
def test_auth_events_selection_in_v12_omits_the_create_event(
    case: tuple[str, str | None, str, dict[str, Any], list[str]],
) -> None:
    event_type, state_key, sender, content, expected = case
    assert _select(event_type, state_key, sender, content, ROOM_V12) == expected


@pytest.mark.parametrize(
    "room_version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier
)
def test_create_events_have_no_auth_events(room_version: RoomVersion) -> None:
    assert _select("m.room.create", "", ALICE, {}, room_version) == []


def test_self_membership_is_not_listed_twice() -> None:
    keys = auth_event_state_keys("m.room.member", ALICE, ALICE, {"membership": "join"}, ROOM_V11)
    assert keys == [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", ALICE),
        ("m.room.join_rules", ""),
    ]


def test_first_events_of_a_room_get_what_exists() -> None:
    state = {("m.room.create", ""): "$create"}
    join = select_auth_events(
        "m.room.member", ALICE, ALICE, {"membership": "join"}, state, ROOM_V11
    )
    assert join == ["$create"]
    assert (
        select_auth_events("m.room.member", ALICE, ALICE, {"membership": "join"}, state, ROOM_V12)
        == []
    )


def test_next_depth() -> None:
    assert next_depth([]) == 1
    assert next_depth([3, 7, 5]) == 8
    assert next_depth([MAX_DEPTH]) == MAX_DEPTH


def _build(room_version: RoomVersion, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "room_version": room_version,
        "room_id": "!r:domain",
        "sender": ALICE,
        "event_type": "m.room.message",
        "content": {"body": "hi"},
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": 2,
        "origin_server_ts": 1234,
    }
    args.update(overrides)
    return build_pdu(**args)


def test_build_pdu_message() -> None:
    content = {"body": "hi"}
    pdu = _build(ROOM_V11, content=content)
    assert pdu == {
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": ALICE,
        "content": {"body": "hi"},
        "origin_server_ts": 1234,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": 2,
    }
    pdu["content"]["body"] = "changed"
    assert content == {"body": "hi"}, "build_pdu must copy content"


def test_build_pdu_state_event() -> None:
    assert _build(ROOM_V11, event_type="m.room.name", state_key="")["state_key"] == ""
    assert "state_key" not in _build(ROOM_V11)


def test_v10_redaction_puts_redacts_at_the_top_level() -> None:
    pdu = _build(ROOM_V10, event_type="m.room.redaction", content={"reason": "r"}, redacts="$x")
    assert pdu["redacts"] == "$x"
    assert pdu["content"] == {"reason": "r"}


@pytest.mark.parametrize("room_version", [ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier)
def test_v11_redaction_puts_redacts_in_content(room_version: RoomVersion) -> None:
    pdu = _build(room_version, event_type="m.room.redaction", content={}, redacts="$x")
    assert "redacts" not in pdu
    assert pdu["content"] == {"redacts": "$x"}


def test_redacts_only_on_redactions() -> None:
    with pytest.raises(ValueError, match="redacts"):
        _build(ROOM_V11, redacts="$x")


def test_v12_create_has_no_room_id() -> None:
    create = _build(
        ROOM_V12,
        room_id=None,
        event_type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
        depth=1,
    )
    assert "room_id" not in create
    with pytest.raises(ValueError, match="room_id"):
        _build(ROOM_V12, event_type="m.room.create", state_key="")


@pytest.mark.parametrize(
    "room_version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier
)
def test_room_id_is_required_otherwise(room_version: RoomVersion) -> None:
    with pytest.raises(ValueError, match="room_id"):
        _build(room_version, room_id=None)


@pytest.mark.parametrize(
    "room_version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier
)
def test_finalised_pdus_are_well_formed_signed_and_hashed(room_version: RoomVersion) -> None:
    pdu = _build(room_version, prev_events=["$" + "p" * 43], auth_events=["$" + "a" * 43])
    event = finalise_pdu(pdu, room_version, signing_name="domain", signing_key=spec_signing_key())
    assert isinstance(event, Event)
    assert event.room_version is room_version
    assert event.event_id == compute_event_id(event.pdu, room_version)
    assert "event_id" not in event.pdu
    check_pdu_format(event.pdu, room_version)
    assert check_content_hash(event.pdu)
    verify_event_signatures(event.pdu, room_version, {"domain": {"ed25519:1": spec_verify_key()}})
    assert "hashes" not in pdu and "signatures" not in pdu, "finalise_pdu must not modify pdu"


def test_v12_create_event_id_gives_the_room_id() -> None:
    create = _build(
        ROOM_V12,
        room_id=None,
        event_type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
        depth=1,
    )
    event = finalise_pdu(create, ROOM_V12, signing_name="domain", signing_key=spec_signing_key())
    check_pdu_format(event.pdu, ROOM_V12)
    assert event.event_id == compute_event_id(event.pdu, ROOM_V12)
    assert event.room_id == "!" + event.event_id[1:]
