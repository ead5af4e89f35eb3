"""Authorisation rules for room versions 10, 11 and 12 (pure).

Spec: /rooms/v10, /rooms/v11 and /rooms/v12 §"Authorisation rules"; server-server API
§"Auth events selection" and §"Checks performed on receipt of a PDU".

How to use it. On receipt of a PDU a server runs the rules three times (checks 4–6 of
§"Checks performed on receipt of a PDU"):

1. ``check_auth_events_selection(event, auth_events)``: rule 3, on the event's own
   ``auth_events``.
2. ``check_auth(event, {(e.type, e.state_key): e for e in auth_events}, create_event=...)``:
   every other rule, against the auth events.
3. ``check_auth(event, state_before)`` and ``check_auth(event, current_state)``.

State resolution (:mod:`refserver.events.state_res`) only runs step 2's rules, against its
partially resolved state.

Rule numbers in comments and in ``AuthError.rule`` are explained in
:mod:`refserver.events.auth_state`; rule 5 (membership) is in
:mod:`refserver.events.membership_rules`.

Not done here, on purpose:

* Rule 5.2 (a restricted join must be signed by the server of
  ``join_authorised_via_users_server``) is a signature check; it belongs with the other
  signature checks (server-server API §"Validating hashes and signatures on received events").
  Rule 5.3.5.2 (the authorising user is joined and may invite) *is* checked here.
* Third-party invites (rule 5.4.1: ``m.room.member`` invites with ``third_party_invite``) are
  refused with an ``AuthError`` saying "third-party invites are not supported": verifying them needs
  ed25519 signature checks over ``signed``, which this pure module does not do. Sending
  ``m.room.third_party_invite`` itself (rule 7) is supported.
* ``content.room_version`` (rule 1.3) is "recognised" if refserver implements it
  (:data:`~refserver.events.room_versions.KNOWN_ROOM_VERSIONS`): a create event for a room
  version refserver cannot run is refused rather than half-supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refserver.events.auth_state import (
    CREATE,
    MEMBER,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    AuthError,
    AuthState,
    domain_of,
    reject,
)
from refserver.events.builder import auth_event_state_keys
from refserver.events.membership_rules import check_member
from refserver.events.model import Event
from refserver.events.power_levels import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    PowerLevel,
    StateKey,
    get_required_power_level,
    get_room_creators,
    get_user_power_level,
)
from refserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from refserver.ids import is_valid_user_id, room_id_of_create_event

__all__ = [
    "AuthError",
    "StateKey",
    "auth_types_for_event",
    "check_auth",
    "check_auth_events_selection",
    "get_room_creators",
    "get_user_power_level",
]

#: Rule 10.1: "users_default, events_default, state_default, ban, redact, kick, or invite".
_SCALAR_LEVELS = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
#: Rules 10.2, 10.7, 10.8: the maps from event type (or notification key) to level.
_LEVEL_MAPS = ("events", "notifications")


# --- Auth events selection (server-server API §"Auth events selection") and rule 3 ---


def auth_types_for_event(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    room_version: RoomVersion,
) -> set[StateKey]:
    """The ``(type, state_key)`` pairs that may appear in an event's ``auth_events``.

    Server-server API §"Auth events selection": nothing for ``m.room.create``; otherwise the
    create event (not in v12, MSC4291), the power levels, the sender's membership, and for
    ``m.room.member`` the target's membership, the join rules (join/invite/knock), the
    ``m.room.third_party_invite`` named by ``signed.token`` and the authorising user's
    membership for restricted joins.
    """
    # One definition of the selection, shared with the builder of new events.
    return set(auth_event_state_keys(event_type, state_key, sender, content, room_version))


def check_auth_events_selection(event: Event, auth_events: Sequence[Event]) -> None:
    """Rule 3 (v10/v11: rule 2): "Considering the event's ``auth_events``".

    ``auth_events`` must be the events named by ``event.auth_event_ids`` (rejected ones
    included, flagged ``rejected``); a mismatch is a caller bug and raises ``ValueError``.
    Create events are exempt: rule 1 decides them before rule 3 is reached.
    """
    if event.type == CREATE:
        return
    wanted_ids = event.auth_event_ids
    if {e.event_id for e in auth_events} != set(wanted_ids):
        raise ValueError(f"auth_events given for {event.event_id} differ from its auth_events")
    rv = event.room_version
    keys = [(e.type, e.state_key) for e in auth_events]
    # 3.1. If there are duplicate entries for a given type and state_key pair, reject.
    if len(set(wanted_ids)) != len(wanted_ids) or len(set(keys)) != len(keys):
        reject(event, "3.1", "auth_events has duplicate (type, state_key) entries")
    # 3.2. If there are entries whose type and state_key don't match those specified by the
    #      auth events selection algorithm, reject. (v12: m.room.create MUST NOT be selected.)
    allowed = auth_types_for_event(event.type, event.state_key, event.sender, event.content, rv)
    for auth_event, (event_type, state_key) in zip(auth_events, keys, strict=True):
        if state_key is None or (event_type, state_key) not in allowed:
            reject(event, "3.2", f"auth event {auth_event.event_id} is not a selectable type")
    # 3.3. If there are entries which were themselves rejected, reject.
    for auth_event in auth_events:
        if auth_event.rejected:
            reject(event, "3.3", f"auth event {auth_event.event_id} was rejected")
    # 3.4. (v10/v11 only) If there is no m.room.create event among the entries, reject.
    if rv.create_event_in_auth_events and CREATE_KEY not in keys:
        reject(event, "3.4", "no m.room.create event among auth_events")
    # 3.5. If any event in auth_events has a room_id which does not match that of the event
    #      being authorised, reject.
    for auth_event in auth_events:
        if auth_event.room_id != event.room_id:
            reject(event, "3.5", f"auth event {auth_event.event_id} is in another room")


# --- Rules 1, 2, 4–11 ---


def check_auth(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    *,
    create_event: Event | None = None,
) -> None:
    """Check ``event`` against ``auth_state`` (its auth events, or the room state before it).

    Implements every rule of /rooms/v10, /rooms/v11 and /rooms/v12 §"Authorisation rules"
    except rule 3 (see :func:`check_auth_events_selection`) and the signature part of rule
    5.2. ``create_event`` supplies the room's create event when ``auth_state`` has no
    ``("m.room.create", "")`` entry, as for v12 auth events; an entry in the map wins.

    Raises:
        AuthError: naming the failed rule. Returning means the event is allowed.
    """
    rv = event.room_version
    # 1. If type is m.room.create:
    if event.type == CREATE:
        _check_create(event)
        return
    create = auth_state.get(CREATE_KEY, create_event)
    # 2. (v12) If the event's room_id is not an event ID for an accepted (not rejected)
    #    m.room.create event, with the sigil ! instead of $, reject.
    if rv.room_id_is_create_event_hash and (
        create is None
        or create.rejected
        or event.room_id != room_id_of_create_event(create.event_id)
    ):
        reject(event, "2", "room_id is not the ID of an accepted m.room.create event")
    if create is None:
        # v10/v11 3.4 guarantees a create event among the auth events; without one there is
        # nothing to check the event against.
        reject(event, "3.4", "no m.room.create event in the auth state")
    st = AuthState(auth_state, create, rv)
    # 4. If the create event has m.federate set to false and the sender domain of the event
    #    does not match the sender domain of the create event, reject.
    if create.content.get("m.federate") is False and domain_of(event.sender) != domain_of(
        create.sender
    ):
        reject(event, "4", "room is not federated (m.federate is false)")
    # 5. If type is m.room.member:
    if event.type == MEMBER:
        check_member(event, st)
        return
    # 6. If the sender's current membership state is not join, reject.
    if st.membership(event.sender) != "join":
        reject(event, "6", f"sender {event.sender} is not joined to the room")
    sender_power = st.power(event.sender)
    # 7. If type is m.room.third_party_invite: allow if and only if sender's current power
    #    level is greater than or equal to the invite level.
    if event.type == THIRD_PARTY_INVITE:
        if sender_power >= st.level("invite"):
            return
        reject(event, "7.1", "sender's power level is below the invite level")
    # 8. If the event type's required power level is greater than the sender's, reject.
    required = get_required_power_level(auth_state, event.type, is_state=event.is_state)
    if required > sender_power:
        reject(event, "8", f"{event.type} needs power level {required}, sender has {sender_power}")
    # 9. If the event has a state_key that starts with an @ and does not match the sender,
    #    reject.
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        reject(event, "9", "state_key starting with @ must be the sender")
    # 10. If type is m.room.power_levels:
    if event.type == POWER_LEVELS:
        _check_power_levels(event, st, sender_power)
    # 11. Otherwise, allow.


def _check_create(event: Event) -> None:
    """Rule 1: "If type is m.room.create"."""
    rv = event.room_version
    # 1.1. If it has any prev_events, reject.
    if event.prev_event_ids:
        reject(event, "1.1", "m.room.create has prev_events")
    if rv.room_id_is_create_event_hash:
        # 1.2. (v12) If the event has a room_id, reject.
        if "room_id" in event.pdu:
            reject(event, "1.2", "m.room.create must not have a room_id")
    # 1.2. (v10/v11) If the domain of the room_id does not match the domain of the sender,
    #      reject.
    elif domain_of(event.room_id) is None or domain_of(event.room_id) != domain_of(event.sender):
        reject(event, "1.2", "room_id domain does not match the sender's domain")
    # 1.3. If content.room_version is present and is not a recognised version, reject.
    if "room_version" in event.content:
        room_version = event.content["room_version"]
        if not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS:
            reject(event, "1.3", f"unrecognised room version {room_version!r}")
    # 1.4. (v10) If content has no creator property, reject.
    if not rv.implicit_room_creator and "creator" not in event.content:
        reject(event, "1.4", "m.room.create has no creator")
    # 1.4. (v12) If additional_creators is present in content and is not an array of strings
    #      where each string passes the user ID validation applied to sender, reject.
    if rv.privileged_creators and "additional_creators" in event.content:
        additional = event.content["additional_creators"]
        if not isinstance(additional, list) or not all(map(is_valid_user_id, additional)):
            reject(event, "1.4", "additional_creators must be an array of user IDs")
    # 1.5. Otherwise, allow.


def _is_level_map(value: object) -> bool:
    return isinstance(value, dict) and all(type(v) is int for v in value.values())


def _check_power_levels(event: Event, st: AuthState, sender_power: PowerLevel) -> None:
    """Rule 10: "If type is m.room.power_levels"."""
    new = event.content
    # 10.1. If any of users_default, events_default, state_default, ban, redact, kick, or
    #       invite are present and not an integer, reject. (v10+: no strings, MSC3667.)
    for name in _SCALAR_LEVELS:
        if name in new and type(new[name]) is not int:
            reject(event, "10.1", f"{name} must be an integer")
    # 10.2. If either of events or notifications are present and not an object with values
    #       that are integers, reject.
    for name in _LEVEL_MAPS:
        if name in new and not _is_level_map(new[name]):
            reject(event, "10.2", f"{name} must be an object of integers")
    # 10.3. If the users property is not an object with keys that are valid user IDs with
    #       values that are integers, reject. (An absent users property is an empty one.)
    users = new.get("users", {})
    if not _is_level_map(users) or not all(map(is_valid_user_id, users)):
        reject(event, "10.3", "users must map valid user IDs to integers")
    # 10.4. (v12) If users contains a room creator, reject.
    if st.room_version.privileged_creators and get_room_creators(st.create) & users.keys():
        reject(event, "10.4", "room creators must not appear in users")
    # 10.5. If there is no previous m.room.power_levels event in the room, allow.
    previous = st.state.get(POWER_LEVELS_KEY)
    if previous is None:
        return
    old = previous.content
    # 10.6. For each of the scalar levels added, changed or removed: reject if the current
    #       value or the new value is higher than the sender's current power level.
    for name in _SCALAR_LEVELS:
        _check_level_change(event, "10.6", name, old.get(name), new.get(name), sender_power)
    # 10.7 / 10.8. For each entry changed in or removed from events or notifications, reject
    #       if the current value is greater than the sender's power level; for each entry
    #       added or changed, reject if the new value is.
    for map_name in _LEVEL_MAPS:
        old_map, new_map = _level_map(old, map_name), _level_map(new, map_name)
        for key in old_map.keys() | new_map.keys():
            _check_level_change(
                event, "10.7", f"{map_name}.{key}", old_map.get(key), new_map.get(key), sender_power
            )
    # 10.9. For each entry changed in or removed from users, other than the sender's own:
    #       reject if the current value is greater than or equal to the sender's power level.
    # 10.10. For each entry added to or changed in users: reject if the new value is greater
    #       than the sender's power level.
    old_users = _level_map(old, "users")
    for user_id in old_users.keys() | users.keys():
        before, after = old_users.get(user_id), users.get(user_id)
        if before == after:
            continue
        if before is not None and user_id != event.sender and before >= sender_power:
            reject(event, "10.9", f"cannot change the level of {user_id} (>= your own)")
        if after is not None and after > sender_power:
            reject(event, "10.10", f"cannot give {user_id} a level above your own")
    # 10.11. Otherwise, allow.


def _level_map(content: Mapping[str, Any], name: str) -> dict[str, int]:
    value = content.get(name)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if type(v) is int}


def _check_level_change(
    event: Event,
    v12_number: str,
    what: str,
    before: object,
    after: object,
    sender_power: PowerLevel,
) -> None:
    """Reject a changed level whose old or new value is above the sender's (10.6–10.8)."""
    if before == after:
        return
    if type(before) is int and before > sender_power:
        reject(event, v12_number, f"cannot change {what}: current value above your level")
    if type(after) is int and after > sender_power:
        number = "10.8" if v12_number == "10.7" else v12_number
        reject(event, number, f"cannot set {what} above your own level")
