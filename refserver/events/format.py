"""PDU format checks per room version (pure).

Spec: server-server API §"PDUs" and ``data/api/server-server/definitions/pdu_v6.yaml``
(room version 10), ``pdu_v11.yaml``, ``pdu_v12.yaml``; client-server API §"Size limits";
rooms/fragments/v6-canonical-json.md.

Server-server API §"Checks performed on receipt of a PDU", step 1: "Is a valid event,
otherwise it is dropped. For an event to be valid, it must contain a room_id, and it must
comply with the event format of that room version." The same checks guard events that this
server builds for its own clients, where a failure becomes 400 ``M_BAD_JSON`` or
413 ``M_TOO_LARGE`` (carried by :class:`InvalidPdu`).
"""

from __future__ import annotations

from collections.abc import Mapping

from refserver.crypto.canonical_json import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
)
from refserver.errors import ProtocolError
from refserver.events.room_versions import RoomVersion
from refserver.ids import MAX_ID_BYTES, InvalidId, UserId
from refserver.types import JsonValue

#: CS API §"Size limits": "The complete event MUST NOT be larger than 65536 bytes, when
#: formatted with the federation event format, including any signatures, and encoded as
#: Canonical JSON."
MAX_PDU_BYTES = 65536
#: CS API §"Size limits": ``type`` and ``state_key`` are at most 255 bytes each.
MAX_TYPE_BYTES = 255
MAX_STATE_KEY_BYTES = 255
#: pdu_v6.yaml: ``auth_events`` / ``prev_events`` array limits.
MAX_AUTH_EVENTS = 10
MAX_PREV_EVENTS = 20
#: pdu_v6.yaml depth limit, reduced by v6 strict canonical JSON to 2**53 - 1.
MAX_DEPTH = MAX_SAFE_INTEGER

M_BAD_JSON = "M_BAD_JSON"
M_TOO_LARGE = "M_TOO_LARGE"


class InvalidPdu(ProtocolError, ValueError):
    """A PDU (or client event) does not have the room version's format.

    ``errcode`` is ``M_BAD_JSON`` (400) or ``M_TOO_LARGE`` (413).
    """

    errcode = M_BAD_JSON
    status = 400

    def __init__(self, message: str, *, errcode: str = M_BAD_JSON) -> None:
        super().__init__(message, errcode=errcode, status=413 if errcode == M_TOO_LARGE else 400)


def check_pdu_format(pdu: JsonValue, room_version: RoomVersion) -> None:
    """Raise :class:`InvalidPdu` unless ``pdu`` is a well-formed PDU for ``room_version``.

    Checks, in order: strict canonical JSON values everywhere (no floats, integers within
    ±(2**53 - 1)); the 65536-byte size limit; then every field of the PDU schema.
    ``origin`` and other unknown top-level keys are tolerated (pdu_v6.yaml is open).
    """
    if not isinstance(pdu, Mapping):
        raise InvalidPdu("PDU must be a JSON object")
    _check_canonical(pdu)
    if len(encode_canonical_json(pdu)) > MAX_PDU_BYTES:
        raise InvalidPdu(f"PDU is larger than {MAX_PDU_BYTES} bytes", errcode=M_TOO_LARGE)

    event_type = pdu.get("type")
    _check_bounded_str(event_type, "type", MAX_TYPE_BYTES)
    _check_user_id(pdu.get("sender"), "sender")
    if not isinstance(pdu.get("content"), Mapping):
        raise InvalidPdu("content must be an object")
    _check_int(pdu.get("origin_server_ts"), "origin_server_ts")
    _check_room_id(pdu, event_type, room_version)
    if "state_key" in pdu:
        _check_bounded_str(pdu["state_key"], "state_key", MAX_STATE_KEY_BYTES)
    _check_event_id_list(pdu.get("auth_events"), "auth_events", MAX_AUTH_EVENTS)
    _check_event_id_list(pdu.get("prev_events"), "prev_events", MAX_PREV_EVENTS)
    depth: JsonValue = pdu.get("depth")
    _check_int(depth, "depth")
    if not 0 <= depth <= MAX_DEPTH:
        raise InvalidPdu(f"depth must be between 0 and {MAX_DEPTH}")
    _check_hashes(pdu.get("hashes"))
    _check_signatures(pdu.get("signatures"))
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], Mapping):
        raise InvalidPdu("unsigned must be an object")
    if event_type == "m.room.redaction":
        _check_redacts(pdu, room_version)


def check_client_event_content(
    event_type: JsonValue, state_key: JsonValue, content: JsonValue
) -> None:
    """Check the parts of an event a client supplies, before the server builds the PDU.

    CS API §"Size limits" (``type`` and ``state_key`` ≤ 255 bytes; the event ≤ 65536 bytes)
    and strict canonical JSON for ``content`` (400 ``M_BAD_JSON`` on floats or out-of-range
    integers). The full PDU must still pass :func:`check_pdu_format` once built, since
    signatures and the envelope count towards the size limit.
    """
    _check_bounded_str(event_type, "type", MAX_TYPE_BYTES)
    if state_key is not None:
        _check_bounded_str(state_key, "state_key", MAX_STATE_KEY_BYTES)
    if not isinstance(content, Mapping):
        raise InvalidPdu("content must be an object")
    _check_canonical(content)
    if len(encode_canonical_json(content)) > MAX_PDU_BYTES:
        raise InvalidPdu(f"event is larger than {MAX_PDU_BYTES} bytes", errcode=M_TOO_LARGE)


def _check_canonical(value: JsonValue) -> None:
    try:
        check_canonical_values(value)
    except CanonicalJsonError as exc:
        raise InvalidPdu(str(exc)) from exc


def _byte_len(s: str) -> int:
    return len(s.encode("utf-8"))


def _check_bounded_str(value: JsonValue, field: str, max_bytes: int) -> None:
    if not isinstance(value, str):
        raise InvalidPdu(f"{field} must be a string")
    if _byte_len(value) > max_bytes:
        raise InvalidPdu(f"{field} is longer than {max_bytes} bytes", errcode=M_TOO_LARGE)


def _check_int(value: JsonValue, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPdu(f"{field} must be an integer")


def _check_user_id(value: JsonValue, field: str) -> None:
    try:
        UserId.parse(value)
    except InvalidId as exc:
        raise InvalidPdu(f"{field} is not a valid user ID: {exc}") from None


def _check_room_id(pdu: Mapping[str, JsonValue], event_type: JsonValue, rv: RoomVersion) -> None:
    # rooms/v12 (MSC4291): "the m.room.create event [...] MUST NOT have a room_id"; every
    # other event keeps it. Earlier versions: required on every event.
    if rv.room_id_is_create_event_hash and event_type == "m.room.create":
        if "room_id" in pdu:
            raise InvalidPdu(
                f"m.room.create must not have a room_id in room version {rv.identifier}"
            )
        return
    room_id = pdu.get("room_id")
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        raise InvalidPdu("room_id must be a room ID string")
    if _byte_len(room_id) > MAX_ID_BYTES:
        raise InvalidPdu(f"room_id is longer than {MAX_ID_BYTES} bytes", errcode=M_TOO_LARGE)


def _check_event_id(value: JsonValue, field: str) -> None:
    if not isinstance(value, str) or not value.startswith("$"):
        raise InvalidPdu(f"{field} must be an event ID string")
    if _byte_len(value) > MAX_ID_BYTES:
        raise InvalidPdu(f"{field} is longer than {MAX_ID_BYTES} bytes", errcode=M_TOO_LARGE)


def _check_event_id_list(value: JsonValue, field: str, max_len: int) -> None:
    if not isinstance(value, list):
        raise InvalidPdu(f"{field} must be a list of event IDs")
    if len(value) > max_len:
        raise InvalidPdu(f"{field} has more than {max_len} entries")
    for item in value:
        _check_event_id(item, f"{field} entry")


def _check_hashes(value: JsonValue) -> None:
    if not isinstance(value, Mapping) or not isinstance(value.get("sha256"), str):
        raise InvalidPdu("hashes must be an object with a sha256 string")


def _check_signatures(value: JsonValue) -> None:
    # pdu_v6.yaml: {server_name: {key_id: signature}}.
    if not isinstance(value, Mapping):
        raise InvalidPdu("signatures must be an object")
    for by_server in value.values():
        if not isinstance(by_server, Mapping) or not all(
            isinstance(sig, str) for sig in by_server.values()
        ):
            raise InvalidPdu("signatures must map server names to {key_id: signature}")


def _check_redacts(pdu: Mapping[str, JsonValue], rv: RoomVersion) -> None:
    # rooms/v11 (MSC2174): "redacts" moved from the top level into content.
    if rv.redacts_in_content:
        content = pdu["content"]
        _check_event_id(content.get("redacts"), "content.redacts")
    else:
        _check_event_id(pdu.get("redacts"), "redacts")
