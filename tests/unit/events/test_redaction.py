"""refserver.events.redaction: v9 rules (room v10) vs v11 rules (room v11, v12)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from refserver.events.redaction import redact
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

V11_VERSIONS = [ROOM_V11, ROOM_V12]
ALL_VERSIONS = [ROOM_V10, *V11_VERSIONS]

ENVELOPE: dict[str, Any] = {
    "event_id": "$e",
    "room_id": "!r:x",
    "sender": "@a:x",
    "state_key": "",
    "hashes": {"sha256": "h"},
    "signatures": {"x": {"ed25519:1": "s"}},
    "depth": 4,
    "prev_events": ["$p"],
    "auth_events": ["$a"],
    "origin_server_ts": 5,
}
V9_ONLY_TOP_LEVEL = {"origin": "x", "membership": "join", "prev_state": []}
DROPPED_TOP_LEVEL = {"unsigned": {"age": 1}, "redacts": "$r", "age_ts": 3, "custom": True}


def _event(event_type: str, content: Any) -> dict[str, Any]:
    return {
        **ENVELOPE,
        **V9_ONLY_TOP_LEVEL,
        **DROPPED_TOP_LEVEL,
        "type": event_type,
        "content": content,
    }


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_top_level_keys(room_version: RoomVersion) -> None:
    redacted = redact(_event("m.room.message", {"body": "hi"}), room_version)
    expected = {**ENVELOPE, "type": "m.room.message", "content": {}}
    if room_version is ROOM_V10:
        # v9-redactions.md keeps origin, membership and prev_state.
        expected.update(V9_ONLY_TOP_LEVEL)
    assert redacted == expected


# (event type, full content, kept in v10, kept in v11/v12)
CONTENT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "m.room.member",
        {
            "membership": "invite",
            "join_authorised_via_users_server": "@b:y",
            "displayname": "A",
            "third_party_invite": {"display_name": "x", "signed": {"mxid": "@a:x", "token": "t"}},
        },
        {"membership": "invite", "join_authorised_via_users_server": "@b:y"},
        {
            "membership": "invite",
            "join_authorised_via_users_server": "@b:y",
            "third_party_invite": {"signed": {"mxid": "@a:x", "token": "t"}},
        },
    ),
    (
        "m.room.create",
        {"creator": "@a:x", "room_version": "10", "m.federate": False, "predecessor": {}},
        {"creator": "@a:x"},
        {"creator": "@a:x", "room_version": "10", "m.federate": False, "predecessor": {}},
    ),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "extra": 1},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    ),
    (
        "m.room.power_levels",
        {
            "ban": 50,
            "events": {"m.room.name": 50},
            "events_default": 0,
            "invite": 0,
            "kick": 50,
            "redact": 50,
            "state_default": 50,
            "users": {"@a:x": 100},
            "users_default": 0,
            "notifications": {"room": 50},
        },
        {
            "ban": 50,
            "events": {"m.room.name": 50},
            "events_default": 0,
            "kick": 50,
            "redact": 50,
            "state_default": 50,
            "users": {"@a:x": 100},
            "users_default": 0,
        },
        {
            "ban": 50,
            "events": {"m.room.name": 50},
            "events_default": 0,
            "invite": 0,
            "kick": 50,
            "redact": 50,
            "state_default": 50,
            "users": {"@a:x": 100},
            "users_default": 0,
        },
    ),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "other": 1},
        {"history_visibility": "shared"},
        {"history_visibility": "shared"},
    ),
    ("m.room.redaction", {"redacts": "$x", "reason": "spam"}, {}, {"redacts": "$x"}),
    ("m.room.message", {"body": "hi", "msgtype": "m.text"}, {}, {}),
    ("m.room.name", {"name": "Room"}, {}, {}),
    ("m.room.third_party_invite", {"display_name": "x", "public_key": "k"}, {}, {}),
    ("m.room.guest_access", {"guest_access": "can_join"}, {}, {}),
]


@pytest.mark.parametrize(
    "event_type,content,kept_v10,kept_v11", CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES]
)
def test_content_keys_for_room_version_10(
    event_type: str, content: dict[str, Any], kept_v10: dict[str, Any], kept_v11: dict[str, Any]
) -> None:
    assert redact(_event(event_type, content), ROOM_V10)["content"] == kept_v10


@pytest.mark.parametrize("room_version", V11_VERSIONS, ids=lambda rv: rv.identifier)
@pytest.mark.parametrize(
    "event_type,content,kept_v10,kept_v11", CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES]
)
def test_content_keys_for_room_versions_11_and_12(
    room_version: RoomVersion,
    event_type: str,
    content: dict[str, Any],
    kept_v10: dict[str, Any],
    kept_v11: dict[str, Any],
) -> None:
    assert redact(_event(event_type, content), room_version)["content"] == kept_v11


@pytest.mark.parametrize(
    "third_party_invite,expected",
    [
        ({"display_name": "x"}, {"membership": "invite", "third_party_invite": {}}),
        ("not an object", {"membership": "invite"}),
        (
            {"signed": "odd but kept"},
            {"membership": "invite", "third_party_invite": {"signed": "odd but kept"}},
        ),
    ],
)
def test_v11_member_third_party_invite_edge_cases(third_party_invite: Any, expected: Any) -> None:
    event = _event(
        "m.room.member", {"membership": "invite", "third_party_invite": third_party_invite}
    )
    assert redact(event, ROOM_V11)["content"] == expected


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_missing_or_non_object_content_becomes_empty(room_version: RoomVersion) -> None:
    event = _event("m.room.member", "nonsense")
    assert redact(event, room_version)["content"] == {}
    del event["content"]
    assert redact(event, room_version)["content"] == {}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_redact_returns_an_independent_copy(room_version: RoomVersion) -> None:
    event = _event("m.room.power_levels", {"users": {"@a:x": 100}})
    before = copy.deepcopy(event)
    redacted = redact(event, room_version)
    redacted["content"]["users"]["@a:x"] = 0
    redacted["prev_events"].append("$q")
    assert event == before


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_redaction_is_idempotent(room_version: RoomVersion) -> None:
    for event_type, content, _, _ in CONTENT_CASES:
        once = redact(_event(event_type, content), room_version)
        assert redact(once, room_version) == once
