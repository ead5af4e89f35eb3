"""The redaction algorithm (pure).

Spec: rooms/fragments/v9-redactions.md (used by room version 10) and
rooms/fragments/v11-redactions.md (room versions 11 and 12).

"Upon receipt of a redaction event, the server must strip off any keys not in the following
list [...] The content object must also be stripped of all keys, unless it is one of the
following event types [...]"

Redaction is also the first step of signing and of the reference hash
(server-server API §"Signing Events"), so these lists decide event IDs and signatures.
"""

from __future__ import annotations

from collections.abc import Mapping

from refserver.events.room_versions import RedactionAlgorithm, RoomVersion
from refserver.types import JsonDict, JsonValue, copy_json

# v9-redactions.md: top-level keys that survive redaction.
_V9_TOP_LEVEL_KEYS = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11-redactions.md: "The top-level origin, membership, and prev_state properties are no
# longer protected from redaction."
_V11_TOP_LEVEL_KEYS = _V9_TOP_LEVEL_KEYS - {"origin", "membership", "prev_state"}

# v9-redactions.md: content keys kept, by event type ("all others": none).
_V9_CONTENT_KEYS: Mapping[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        }
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}
# v11-redactions.md: m.room.create keeps *all* content (handled in code), power_levels keeps
# `invite`, m.room.redaction keeps `redacts`.
_V11_CONTENT_KEYS: Mapping[str, frozenset[str]] = {
    **_V9_CONTENT_KEYS,
    "m.room.power_levels": _V9_CONTENT_KEYS["m.room.power_levels"] | {"invite"},
    "m.room.redaction": frozenset({"redacts"}),
}


def redact(pdu: Mapping[str, JsonValue], room_version: RoomVersion) -> JsonDict:
    """Return a redacted deep copy of ``pdu`` following ``room_version``'s redaction rules.

    ``pdu`` is not modified. ``unsigned`` is dropped, like every key not in the list.
    """
    if room_version.redaction is RedactionAlgorithm.V9:
        top_level_keys, content_keys = _V9_TOP_LEVEL_KEYS, _V9_CONTENT_KEYS
    else:
        top_level_keys, content_keys = _V11_TOP_LEVEL_KEYS, _V11_CONTENT_KEYS

    redacted: JsonDict = {k: copy_json(v) for k, v in pdu.items() if k in top_level_keys}
    content = pdu.get("content")
    redacted["content"] = _redact_content(
        pdu.get("type"),
        content if isinstance(content, Mapping) else {},
        room_version,
        content_keys,
    )
    return redacted


def _redact_content(
    event_type: JsonValue,
    content: Mapping[str, JsonValue],
    room_version: RoomVersion,
    content_keys: Mapping[str, frozenset[str]],
) -> JsonDict:
    v11 = room_version.redaction is RedactionAlgorithm.V11
    if v11 and event_type == "m.room.create":
        # v11: "m.room.create allows all keys."
        return copy_json(dict(content))
    allowed = content_keys.get(event_type, frozenset()) if isinstance(event_type, str) else ()
    kept: JsonDict = {k: copy_json(v) for k, v in content.items() if k in allowed}
    if v11 and event_type == "m.room.member":
        # v11: "Additionally, it allows the signed key of the third_party_invite key."
        third_party_invite = content.get("third_party_invite")
        if isinstance(third_party_invite, Mapping):
            kept["third_party_invite"] = {
                k: copy_json(v) for k, v in third_party_invite.items() if k == "signed"
            }
    return kept
