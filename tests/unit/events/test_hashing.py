"""refserver.events.hashing: content hash, reference hash, event IDs, v12 room IDs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from refserver.crypto.canonical_json import decode_base64
from refserver.events.hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    content_hash_base64,
)
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from refserver.ids import room_id_of_create_event
from tests.unit.spec_vectors import load_vectors

EVENTS = load_vectors("appendix_events")["events"]
URLSAFE_ID = re.compile(r"^[$!][A-Za-z0-9_-]{43}$")


def _hashed(vector: dict[str, Any]) -> dict[str, Any]:
    return {**vector["input"], "hashes": {"sha256": vector["content_hash"]}}


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
def test_content_hash_matches_the_spec_vector(vector: dict[str, Any]) -> None:
    assert content_hash_base64(vector["input"]) == vector["content_hash"]
    assert compute_content_hash(vector["input"]) == decode_base64(vector["content_hash"])


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
def test_content_hash_ignores_unsigned_signatures_and_hashes(vector: dict[str, Any]) -> None:
    changed = {
        **vector["input"],
        "unsigned": {"age": 1},
        "signatures": {"x": {"ed25519:1": "y"}},
        "hashes": {"sha256": "zzz"},
    }
    assert content_hash_base64(changed) == vector["content_hash"]


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
def test_check_content_hash(vector: dict[str, Any]) -> None:
    hashed = _hashed(vector)
    assert check_content_hash(hashed)
    assert check_content_hash({**hashed, "hashes": {"sha256": vector["content_hash"] + "="}})
    assert not check_content_hash({**hashed, "content": {"body": "tampered"}})
    assert not check_content_hash({**hashed, "hashes": {}})
    assert not check_content_hash({**hashed, "hashes": {"sha256": "not base64!"}})
    assert not check_content_hash({k: v for k, v in hashed.items() if k != "hashes"})


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
@pytest.mark.parametrize("room_version", [ROOM_V10, ROOM_V11], ids=lambda rv: rv.identifier)
def test_event_id_matches_the_derived_vectors(vector: dict[str, Any], room_version: Any) -> None:
    event_id = compute_event_id(_hashed(vector), room_version)
    assert event_id == vector["event_id"][room_version.identifier]
    assert URLSAFE_ID.match(event_id)


def test_event_id_ignores_signatures_unsigned_and_redactable_content() -> None:
    vector = EVENTS[1]
    base = _hashed(vector)
    changed = {
        **base,
        "signatures": {"domain": {"ed25519:1": "sig"}},
        "unsigned": {"age": 1234},
        "content": {"body": "different body, same hashes"},
    }
    for rv in (ROOM_V10, ROOM_V11, ROOM_V12):
        assert compute_event_id(changed, rv) == compute_event_id(base, rv)
        assert compute_reference_hash(changed, rv) == compute_reference_hash(base, rv)


def test_event_id_changes_with_the_content_hash() -> None:
    base = _hashed(EVENTS[0])
    assert compute_event_id(base, ROOM_V11) != compute_event_id(
        {**base, "hashes": {"sha256": "other"}}, ROOM_V11
    )


def test_v12_room_id_is_the_create_event_id_with_a_bang() -> None:
    create = {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@alice:example.org",
        "content": {"room_version": "12"},
        "origin_server_ts": 1,
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    event_id = compute_event_id(create, ROOM_V12)
    room_id = room_id_of_create_event(event_id)
    assert room_id == "!" + event_id[1:]
    assert URLSAFE_ID.match(room_id)
    assert ":" not in room_id
    # Create content is fully protected in v12, so it changes the room ID.
    other = {**create, "content": {"room_version": "12", "additional_creators": ["@b:x"]}}
    assert room_id_of_create_event(compute_event_id(other, ROOM_V12)) != room_id
