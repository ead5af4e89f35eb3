"""Values nested far deeper than the parse-time limits (docs/limits.md) pass through event
building, hashing, signing, redaction, client formatting and response encoding without
recursion.

Such values cannot arrive any more, but one stored before the limits existed (up to ~980
levels) or built in code still must not raise ``RecursionError``: on the sender that killed
the process, on ``/sync`` it answered 500 (issue 13, item 1). 3,000 levels are well past the
interpreter's recursion limit, so any recursive copy or encoder on the way fails these tests.
"""

from __future__ import annotations

from typing import Any

from refserver.app.http import create_app
from refserver.crypto.canonical_json import encode_canonical_json
from refserver.events.builder import build_pdu, finalise_pdu
from refserver.events.client_format import client_event, stripped_state_event
from refserver.events.redaction import redact
from refserver.events.room_versions import ROOM_V12
from refserver.events.signing import check_signatures_and_hashes, sign_event
from refserver.types import copy_json
from tests.unit.spec_vectors import spec_signing_key, spec_verify_key

LEVELS = 3000


def deep_value(levels: int = LEVELS) -> dict[str, Any]:
    """``{"k": [{"k": [… {"leaf": "x"}]}]}``, ``levels`` objects deep."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        child: dict[str, Any] = {}
        node["k"] = [child]
        node = child
    node["leaf"] = "x"
    return root


def _leaf(value: dict[str, Any]) -> Any:
    for _ in range(LEVELS):
        value = value["k"][0]
    return value["leaf"]


def test_copy_json_copies_every_container_and_shares_scalars() -> None:
    original: dict[str, Any] = {"a": [1, {"b": "c"}, [None, True]], "d": {"e": 2**53 - 1}}
    copied = copy_json(original)
    assert copied == original
    assert copied["a"] is not original["a"] and copied["a"][1] is not original["a"][1]
    assert copied["d"] is not original["d"]
    copied["a"][1]["b"] = "changed"
    assert original["a"][1]["b"] == "c"
    assert copy_json("s") == "s" and copy_json(None) is None


def test_copy_json_of_a_very_deep_value() -> None:
    deep = deep_value()
    copied = copy_json(deep)
    assert copied is not deep and _leaf(copied) == "x"


def test_a_very_deep_event_is_built_signed_checked_redacted_and_formatted() -> None:
    pdu = build_pdu(
        room_version=ROOM_V12,
        room_id="!room:example.org",
        sender="@a:example.org",
        event_type="org.example.deep",
        content=deep_value(),
        state_key="",
        prev_events=[],
        auth_events=[],
        depth=1,
        origin_server_ts=1,
    )
    event = finalise_pdu(pdu, ROOM_V12, signing_name="example.org", signing_key=spec_signing_key())
    assert _leaf(event.content) == "x"
    cosigned = sign_event(
        event.pdu, ROOM_V12, signing_name="other.example", signing_key=spec_signing_key()
    )
    assert _leaf(cosigned["content"]) == "x"
    kept = check_signatures_and_hashes(
        event.pdu,
        ROOM_V12,
        {"example.org": {"ed25519:" + spec_signing_key().version: spec_verify_key()}},
    )
    assert not kept.redacted and _leaf(kept.pdu["content"]) == "x"
    assert "k" not in redact(event.pdu, ROOM_V12)["content"]
    assert _leaf(client_event(event, unsigned={"deep": deep_value()})["content"]) == "x"
    assert _leaf(stripped_state_event(event)["content"]) == "x"


def test_a_response_too_deep_for_the_json_encoder_is_encoded_without_recursion() -> None:
    app = create_app([], max_body_bytes=1024)
    body = {"content": deep_value()}
    assert app.json.dumps(body) == encode_canonical_json(body).decode()
    # Everything else keeps quart's own encoding.
    assert app.json.dumps({"b": 1, "a": "é"}) == '{"a": "\\u00e9", "b": 1}'
