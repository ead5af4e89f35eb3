"""Building new PDUs: auth events selection, the unsigned PDU, hashing and signing (pure).

Spec: server-server API §"Auth events selection", §"PDUs"; rooms/v11 (``redacts`` in
content), rooms/v12 (no ``room_id`` on ``m.room.create``; the create event is never an auth
event).

The caller supplies everything that depends on the world (current state, forward extremities,
depth, clock, key), so building an event is a pure function of its arguments:

    auth_events = select_auth_events(type, state_key, sender, content, current_state, rv)
    pdu = build_pdu(room_version=rv, room_id=..., ..., auth_events=auth_events, ...)
    check_pdu_format(pdu_after_signing, rv)           # refserver.events.format
    event = finalise_pdu(pdu, rv, signing_name=server_name, signing_key=key)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from signedjson.types import SigningKey

from refserver.events.hashing import compute_event_id
from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion
from refserver.events.signing import add_hashes_and_signatures
from refserver.types import JsonDict, JsonValue, copy_json

#: pdu_v6.yaml: depth is capped; v6 strict canonical JSON caps it at 2**53 - 1.
MAX_DEPTH = 2**53 - 1

#: State keys of the auth-relevant state, ``(type, state_key)``.
StateKey = tuple[str, str]


def auth_event_state_keys(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, JsonValue],
    room_version: RoomVersion,
) -> list[StateKey]:
    """The ``(type, state_key)`` pairs whose current state events become ``auth_events``.

    Server-server API §"Auth events selection":

    - ``m.room.create`` events have no auth events.
    - Otherwise: the ``m.room.create`` event (not in room version 12, MSC4291), the current
      ``m.room.power_levels`` event, and the sender's current ``m.room.member`` event.
    - For ``m.room.member`` events additionally: the target's current ``m.room.member``;
      if ``membership`` is ``join``, ``invite`` or ``knock``, the ``m.room.join_rules`` event;
      if ``membership`` is ``invite`` with ``third_party_invite``, the
      ``m.room.third_party_invite`` event with ``state_key`` = ``third_party_invite.signed.token``;
      if ``membership`` is ``join`` with ``join_authorised_via_users_server`` (room
      version 8+), that user's ``m.room.member`` event.

    Duplicates are removed; order is the order above.
    """
    if event_type == "m.room.create":
        return []
    keys: list[StateKey] = []
    if room_version.create_event_in_auth_events:
        keys.append(("m.room.create", ""))
    keys += [("m.room.power_levels", ""), ("m.room.member", sender)]
    if event_type == "m.room.member" and state_key is not None:
        keys += _member_auth_keys(state_key, content)
    return list(dict.fromkeys(keys))


def _member_auth_keys(state_key: str, content: Mapping[str, JsonValue]) -> list[StateKey]:
    keys: list[StateKey] = [("m.room.member", state_key)]
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        keys.append(("m.room.join_rules", ""))
    if membership == "invite":
        third_party_invite = content.get("third_party_invite")
        signed = (
            third_party_invite.get("signed") if isinstance(third_party_invite, Mapping) else None
        )
        token = signed.get("token") if isinstance(signed, Mapping) else None
        if isinstance(token, str):
            keys.append(("m.room.third_party_invite", token))
    if membership == "join":
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            keys.append(("m.room.member", authoriser))
    return keys


def select_auth_events(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, JsonValue],
    current_state: Mapping[StateKey, str],
    room_version: RoomVersion,
) -> list[str]:
    """Event IDs for a new event's ``auth_events`` (server-server API §"Auth events selection").

    ``current_state`` maps ``(type, state_key)`` → event ID. Entries missing from it are
    skipped (for example the sender's membership before their first join).
    """
    wanted = auth_event_state_keys(event_type, state_key, sender, content, room_version)
    return list(dict.fromkeys(current_state[key] for key in wanted if key in current_state))


def next_depth(prev_depths: Iterable[int]) -> int:
    """``depth`` for a new event: "The maximum depth of the prev_events, plus one", capped.

    pdu_v6.yaml: "If the room's depth is already at the limit, the depth must be set to the
    limit." A create event (no prev_events) gets depth 1.
    """
    return min(max(prev_depths, default=0) + 1, MAX_DEPTH)


def build_pdu(
    *,
    room_version: RoomVersion,
    room_id: str | None,
    sender: str,
    event_type: str,
    content: Mapping[str, JsonValue],
    state_key: str | None = None,
    prev_events: Iterable[str],
    auth_events: Iterable[str],
    depth: int,
    origin_server_ts: int,
    redacts: str | None = None,
) -> JsonDict:
    """An unhashed, unsigned PDU in the room version's format (pdu_v6/v11/v12.yaml).

    - rooms/v12: ``m.room.create`` has no ``room_id`` (pass ``None``); every other event needs
      one.
    - ``redacts`` (``m.room.redaction`` only): top-level in room version 10, in ``content``
      from room version 11 (MSC2174).

    Raises :class:`ValueError` for argument combinations the room version forbids.
    """
    pdu: JsonDict = {
        "type": event_type,
        "sender": sender,
        "content": copy_json(dict(content)),
        "origin_server_ts": origin_server_ts,
        "prev_events": list(prev_events),
        "auth_events": list(auth_events),
        "depth": depth,
    }
    v12_create = room_version.room_id_is_create_event_hash and event_type == "m.room.create"
    if v12_create:
        if room_id is not None:
            raise ValueError("m.room.create has no room_id in room version 12")
    elif room_id is None:
        raise ValueError("room_id is required")
    else:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        if event_type != "m.room.redaction":
            raise ValueError("redacts is only valid on m.room.redaction events")
        if room_version.redacts_in_content:
            pdu["content"]["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    return pdu


def finalise_pdu(
    pdu: Mapping[str, JsonValue],
    room_version: RoomVersion,
    *,
    signing_name: str,
    signing_key: SigningKey,
) -> Event:
    """Hash and sign ``pdu``, compute its event ID and wrap it in an :class:`Event`.

    Server-server API §"Adding hashes and signatures to outgoing events"; the event ID is
    the reference hash of the signed PDU (rooms/fragments/v4-event-ids.md).
    """
    signed = add_hashes_and_signatures(
        pdu, room_version, signing_name=signing_name, signing_key=signing_key
    )
    return Event(compute_event_id(signed, room_version), room_version, signed)
