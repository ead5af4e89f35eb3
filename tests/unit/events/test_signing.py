"""refserver.events.signing: server-server API §"Signing Events" and receipt checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.key import get_verify_key

from refserver.crypto.signing import sign_json
from refserver.events.hashing import check_content_hash, compute_event_id
from refserver.events.redaction import redact
from refserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from refserver.events.signing import (
    EventSignatureError,
    add_hashes_and_signatures,
    check_signatures_and_hashes,
    required_signing_servers,
    sign_event,
    verify_event_signatures,
)
from tests.unit.spec_vectors import (
    load_vectors,
    other_signing_key,
    spec_signing_key,
    spec_verify_key,
)

EVENTS = load_vectors("appendix_events")["events"]
SPEC_KEYS = {"domain": {"ed25519:1": spec_verify_key()}}


def _sign(vector: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    return add_hashes_and_signatures(
        vector["input"], room_version, signing_name="domain", signing_key=spec_signing_key()
    )


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
def test_room_v10_signing_reproduces_the_spec_vectors(vector: dict[str, Any]) -> None:
    original = copy.deepcopy(vector["input"])
    signed = _sign(vector, ROOM_V10)
    assert signed["hashes"] == {"sha256": vector["content_hash"]}
    assert signed["signatures"] == {"domain": {"ed25519:1": vector["signature"]["10"]}}
    # "All other fields, including unsigned, are unchanged."
    rest = {k: v for k, v in signed.items() if k not in ("hashes", "signatures")}
    assert rest == {k: v for k, v in original.items() if k not in ("hashes", "signatures")}
    assert vector["input"] == original, "the input PDU must not be modified"


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
@pytest.mark.parametrize("room_version", [ROOM_V11, ROOM_V12], ids=lambda rv: rv.identifier)
def test_v11_redaction_gives_the_derived_signatures(
    vector: dict[str, Any], room_version: RoomVersion
) -> None:
    signed = _sign(vector, room_version)
    assert signed["hashes"] == {"sha256": vector["content_hash"]}
    assert signed["signatures"] == {"domain": {"ed25519:1": vector["signature"]["11"]}}


@pytest.mark.parametrize("vector", EVENTS, ids=lambda v: v["name"])
@pytest.mark.parametrize("room_version", [ROOM_V10, ROOM_V11], ids=lambda rv: rv.identifier)
def test_signed_vectors_verify_and_have_the_derived_event_ids(
    vector: dict[str, Any], room_version: RoomVersion
) -> None:
    signed = _sign(vector, room_version)
    verify_event_signatures(signed, room_version, SPEC_KEYS)
    assert check_content_hash(signed)
    assert compute_event_id(signed, room_version) == vector["event_id"][room_version.identifier]


def _message(room_version: RoomVersion, **overrides: Any) -> dict[str, Any]:
    pdu = {
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "content": {"body": "hello", "msgtype": "m.text"},
        "origin_server_ts": 1000,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": 2,
        **overrides,
    }
    return add_hashes_and_signatures(
        pdu, room_version, signing_name="domain", signing_key=spec_signing_key()
    )


ALL_VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_a_redacted_copy_still_verifies(room_version: RoomVersion) -> None:
    signed = _message(room_version)
    verify_event_signatures(redact(signed, room_version), room_version, SPEC_KEYS)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_tampered_content_fails_the_hash_check_but_not_the_signature(
    room_version: RoomVersion,
) -> None:
    signed = _message(room_version)
    signed["content"]["body"] = "tampered"
    verify_event_signatures(signed, room_version, SPEC_KEYS)  # content is redacted away
    assert not check_content_hash(signed)
    kept = check_signatures_and_hashes(signed, room_version, SPEC_KEYS)
    assert kept.redacted
    assert kept.pdu == redact(signed, room_version)
    assert kept.pdu["content"] == {}


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_an_intact_event_is_kept_whole(room_version: RoomVersion) -> None:
    signed = _message(room_version, unsigned={"age": 3})
    assert check_signatures_and_hashes(signed, room_version, SPEC_KEYS) == (signed, False)


@pytest.mark.parametrize("room_version", ALL_VERSIONS, ids=lambda rv: rv.identifier)
def test_tampered_protected_field_fails_the_signature_check(room_version: RoomVersion) -> None:
    signed = _message(room_version)
    signed["depth"] = 3
    with pytest.raises(EventSignatureError, match="domain"):
        verify_event_signatures(signed, room_version, SPEC_KEYS)
    with pytest.raises(EventSignatureError):
        check_signatures_and_hashes(signed, room_version, SPEC_KEYS)


def test_wrong_key_fails() -> None:
    signed = _message(ROOM_V11)
    wrong = {"domain": {"ed25519:1": get_verify_key(other_signing_key())}}
    with pytest.raises(EventSignatureError, match="does not verify"):
        verify_event_signatures(signed, ROOM_V11, wrong)


def test_missing_sender_signature_fails() -> None:
    signed = _message(ROOM_V11)
    signed["signatures"] = {}
    with pytest.raises(EventSignatureError, match="domain"):
        verify_event_signatures(signed, ROOM_V11, SPEC_KEYS)


def test_signature_from_another_server_does_not_count_for_the_sender() -> None:
    pdu = _message(ROOM_V11, sender="@u:elsewhere")
    keys = {**SPEC_KEYS, "elsewhere": {"ed25519:1": get_verify_key(other_signing_key())}}
    with pytest.raises(EventSignatureError, match="elsewhere"):
        verify_event_signatures(pdu, ROOM_V11, keys)


def test_unknown_sender_server_key_fails() -> None:
    signed = _message(ROOM_V11)
    with pytest.raises(EventSignatureError, match="no known verify key"):
        verify_event_signatures(signed, ROOM_V11, {})


def _join(authoriser: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"membership": "join"}
    if authoriser is not None:
        content["join_authorised_via_users_server"] = authoriser
    return {
        "type": "m.room.member",
        "state_key": "@u:domain",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "content": content,
        "origin_server_ts": 1000,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "depth": 2,
    }


def test_required_signing_servers() -> None:
    assert required_signing_servers(_join(None)) == {"domain"}
    assert required_signing_servers(_join("@admin:resident.example")) == {
        "domain",
        "resident.example",
    }
    leave = {**_join("@admin:resident.example"), "content": {"membership": "leave"}}
    leave["content"]["join_authorised_via_users_server"] = "@admin:resident.example"
    assert required_signing_servers(leave) == {"domain"}
    third_party_invite = {
        **_join(None),
        "content": {"membership": "invite", "third_party_invite": {"signed": {}}},
    }
    assert required_signing_servers(third_party_invite) == set()


@pytest.mark.parametrize("field", ["sender", "join_authorised_via_users_server"])
def test_required_signing_servers_rejects_invalid_user_ids(field: str) -> None:
    pdu = _join("@admin:resident.example")
    if field == "sender":
        pdu["sender"] = "not-a-user"
    else:
        pdu["content"][field] = "not-a-user"
    with pytest.raises(EventSignatureError, match=field):
        required_signing_servers(pdu)


def test_restricted_join_needs_the_authorising_servers_signature() -> None:
    resident_key = other_signing_key()
    keys = {**SPEC_KEYS, "resident.example": {"ed25519:1": get_verify_key(resident_key)}}
    joined = add_hashes_and_signatures(
        _join("@admin:resident.example"),
        ROOM_V11,
        signing_name="domain",
        signing_key=spec_signing_key(),
    )
    with pytest.raises(EventSignatureError, match=r"resident\.example"):
        verify_event_signatures(joined, ROOM_V11, keys)
    cosigned = sign_event(
        joined, ROOM_V11, signing_name="resident.example", signing_key=resident_key
    )
    assert cosigned["hashes"] == joined["hashes"]
    assert set(cosigned["signatures"]) == {"domain", "resident.example"}
    verify_event_signatures(cosigned, ROOM_V11, keys)
    assert compute_event_id(cosigned, ROOM_V11) == compute_event_id(joined, ROOM_V11)


def test_add_hashes_and_signatures_keeps_existing_signatures() -> None:
    first = _message(ROOM_V11)
    again = add_hashes_and_signatures(
        first, ROOM_V11, signing_name="other.example", signing_key=other_signing_key()
    )
    assert set(again["signatures"]) == {"domain", "other.example"}
    verify_event_signatures(again, ROOM_V11, SPEC_KEYS)


def test_signing_uses_the_room_versions_redaction() -> None:
    # Signing the v11-redacted copy by hand gives what add_hashes_and_signatures stores.
    signed = _message(ROOM_V11, origin="domain")
    expected = sign_json(
        redact({**signed, "signatures": {}}, ROOM_V11), "domain", spec_signing_key()
    )
    assert signed["signatures"] == expected["signatures"]
