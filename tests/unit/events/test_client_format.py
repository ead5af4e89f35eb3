"""refserver.events.client_format: ClientEvent, stripped state."""

from __future__ import annotations

from typing import Any

import pytest

from refserver.events.client_format import (
    STRIPPED_STATE_TYPES,
    client_event,
    stripped_state_event,
)
from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

ROOM = "!room:example.org"
ALICE = "@alice:example.org"
TS = 1_700_000_000_000
TARGET = "$target"


def _event(
    room_version: RoomVersion = ROOM_V11,
    *,
    event_id: str = "$ev",
    type: str = "m.room.message",
    content: dict[str, Any] | None = None,
    state_key: str | None = None,
    **extra: Any,
) -> Event:
    pdu: dict[str, Any] = {
        "type": type,
        "room_id": ROOM,
        "sender": ALICE,
        "content": content if content is not None else {"msgtype": "m.text", "body": "hi"},
        "origin_server_ts": TS,
        "auth_events": ["$a"],
        "prev_events": ["$p"],
        "depth": 12,
        "hashes": {"sha256": "abc"},
        "signatures": {"example.org": {"ed25519:a": "sig"}},
        "origin": "example.org",
        "unsigned": {"age_ts": 5, "invite_room_state": []},
        **extra,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(event_id=event_id, room_version=room_version, pdu=pdu)


def test_a_message_has_exactly_the_client_event_keys() -> None:
    out = client_event(_event())
    assert out == {
        "event_id": "$ev",
        "type": "m.room.message",
        "sender": ALICE,
        "origin_server_ts": TS,
        "content": {"msgtype": "m.text", "body": "hi"},
        "room_id": ROOM,
    }


def test_state_events_carry_their_state_key_even_when_empty() -> None:
    out = client_event(_event(type="m.room.topic", content={"topic": "t"}, state_key=""))
    assert out["state_key"] == ""
    assert "state_key" not in client_event(_event())


def test_sync_format_has_no_room_id() -> None:
    assert "room_id" not in client_event(_event(), include_room_id=False)


def test_v12_create_event_gets_the_room_id_derived_from_its_event_id() -> None:
    pdu = {
        "type": "m.room.create",
        "state_key": "",
        "sender": ALICE,
        "content": {"room_version": "12"},
        "origin_server_ts": TS,
        "auth_events": [],
        "prev_events": [],
        "depth": 1,
    }
    out = client_event(Event(event_id="$abc", room_version=ROOM_V12, pdu=pdu))
    assert out["room_id"] == "!abc"


def test_age_is_computed_from_now_ms() -> None:
    out = client_event(_event(), now_ms=TS + 1500)
    assert out["unsigned"] == {"age": 1500}


def test_the_pdus_own_unsigned_is_not_passed_through() -> None:
    assert "unsigned" not in client_event(_event())


def test_caller_unsigned_is_merged_with_age() -> None:
    out = client_event(
        _event(),
        now_ms=TS + 10,
        unsigned={"transaction_id": "txn1", "prev_content": {"topic": "old"}},
    )
    assert out["unsigned"] == {
        "age": 10,
        "transaction_id": "txn1",
        "prev_content": {"topic": "old"},
    }


def test_the_result_shares_nothing_with_the_pdu() -> None:
    event = _event(content={"nested": {"a": 1}})
    prev = {"x": {"y": 1}}
    out = client_event(event, unsigned={"prev_content": prev})
    out["content"]["nested"]["a"] = 2
    out["unsigned"]["prev_content"]["x"]["y"] = 2
    assert event.pdu["content"] == {"nested": {"a": 1}}
    assert prev == {"x": {"y": 1}}


@pytest.mark.parametrize("room_version", [ROOM_V11, ROOM_V12])
def test_v11_redactions_get_a_top_level_redacts_copy(room_version: RoomVersion) -> None:
    event = _event(room_version, type="m.room.redaction", content={"redacts": TARGET})
    out = client_event(event)
    assert out["redacts"] == TARGET
    assert out["content"] == {"redacts": TARGET}


def test_v10_redactions_keep_top_level_redacts_and_get_a_content_copy() -> None:
    event = _event(ROOM_V10, type="m.room.redaction", content={"reason": "spam"}, redacts=TARGET)
    out = client_event(event)
    assert out["redacts"] == TARGET
    assert out["content"] == {"reason": "spam", "redacts": TARGET}
    assert "redacts" not in event.pdu["content"]


def test_a_redaction_without_a_target_gets_no_redacts_copy() -> None:
    out = client_event(_event(type="m.room.redaction", content={}))
    assert "redacts" not in out
    assert out["content"] == {}


def test_stripped_state_event_has_only_four_keys() -> None:
    event = _event(type="m.room.name", content={"name": "Room"}, state_key="")
    assert stripped_state_event(event) == {
        "type": "m.room.name",
        "state_key": "",
        "content": {"name": "Room"},
        "sender": ALICE,
    }


def test_recommended_stripped_state_types_match_the_spec_list() -> None:
    assert STRIPPED_STATE_TYPES == (
        "m.room.create",
        "m.room.name",
        "m.room.avatar",
        "m.room.topic",
        "m.room.join_rules",
        "m.room.canonical_alias",
        "m.room.encryption",
    )
