"""Reading power levels and room creators out of room state (pure).

Spec: server-server API §"Definitions" (*required power level*, *invite/kick/ban/redact
level*), the ``m.room.power_levels`` schema (defaults), and /rooms/v12 §"Authorisation rules"
(room creators have infinite power, MSC4289).

Only the auth rules and state resolution read these helpers. They never raise: room versions
10+ only ever admit integer power levels (/rooms/v10, rule 9.1), so a non-integer value can
only come from a malformed state map and is read as the default.
"""

from __future__ import annotations

from collections.abc import Mapping

from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion
from refserver.ids import is_valid_user_id

StateKey = tuple[str, str]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")

#: m.room.power_levels schema: "the room's creator has a power level of 100" when the room
#: has no power_levels event (room versions 1–11).
CREATOR_DEFAULT_POWER_LEVEL = 100
#: /rooms/v12: "The power level of room creators is infinitely high."
INFINITE_POWER_LEVEL = float("inf")

#: Server-server API §"Definitions": invite defaults to 0; kick, ban and redact to 50.
#: m.room.power_levels schema: users_default and events_default 0, state_default 50.
LEVEL_DEFAULTS: Mapping[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

PowerLevel = int | float


def _as_int(value: object, default: int) -> int:
    # ``bool`` is a subclass of ``int`` but JSON true/false is not a power level.
    return value if type(value) is int else default


def get_room_creators(create_event: Event) -> set[str]:
    """The room's creators, as named by its ``m.room.create`` event.

    /rooms/v12: the create ``sender`` plus every valid user ID in ``content.additional_creators``.
    Earlier versions have a single creator: ``content.creator`` (v10) or the create ``sender``
    (v11, MSC2175).
    """
    room_version = create_event.room_version
    if not room_version.implicit_room_creator:
        creator = create_event.content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    creators = {create_event.sender}
    if room_version.privileged_creators:
        additional = create_event.content.get("additional_creators")
        if isinstance(additional, list):
            creators.update(u for u in additional if isinstance(u, str) and is_valid_user_id(u))
    return creators


def _create_event_from(
    state_map: Mapping[StateKey, Event], create_event: Event | None
) -> Event | None:
    return state_map.get(CREATE_KEY, create_event)


def get_user_power_level(
    user_id: str,
    state_map: Mapping[StateKey, Event],
    room_version: RoomVersion,
    *,
    create_event: Event | None = None,
) -> PowerLevel:
    """The power level of ``user_id`` in ``state_map``.

    * v12 creators: ``float("inf")`` (/rooms/v12, MSC4289), whatever power_levels says.
    * With a power_levels event: ``users[user_id]``, else ``users_default``, else 0.
    * Without one: 100 for the creator (v10 ``content.creator``, v11+ the create ``sender``)
      and 0 for everyone else (m.room.power_levels schema).

    ``create_event`` is used when the map has no ``("m.room.create", "")`` entry, as in v12
    where the create event is implied by the room ID rather than listed in ``auth_events``.
    """
    create = _create_event_from(state_map, create_event)
    if (
        create is not None
        and room_version.privileged_creators
        and user_id in get_room_creators(create)
    ):
        return INFINITE_POWER_LEVEL
    power_levels = state_map.get(POWER_LEVELS_KEY)
    if power_levels is not None:
        content = power_levels.content
        users = content.get("users")
        if isinstance(users, dict) and type(users.get(user_id)) is int:
            return int(users[user_id])
        return _as_int(content.get("users_default"), LEVEL_DEFAULTS["users_default"])
    if create is not None and user_id in get_room_creators(create):
        return CREATOR_DEFAULT_POWER_LEVEL
    return 0


def get_named_level(state_map: Mapping[StateKey, Event], name: str) -> int:
    """The *invite*, *kick*, *ban*, *redact* (or ``*_default``) level in force.

    Server-server API §"Definitions": "The invite level defaults to 0 if unspecified. The
    kick level, ban level and redact level each default to 50 if unspecified."
    """
    default = LEVEL_DEFAULTS[name]
    power_levels = state_map.get(POWER_LEVELS_KEY)
    if power_levels is None:
        return default
    return _as_int(power_levels.content.get(name), default)


def get_required_power_level(
    state_map: Mapping[StateKey, Event], event_type: str, *, is_state: bool
) -> int:
    """The event type's *required power level* (server-server API §"Definitions").

    "The event type is either listed explicitly in the ``events`` section or given by either
    ``state_default`` or ``events_default`` depending on if the event is a state event or not."
    """
    power_levels = state_map.get(POWER_LEVELS_KEY)
    content = power_levels.content if power_levels is not None else {}
    events = content.get("events")
    if isinstance(events, dict) and type(events.get(event_type)) is int:
        return int(events[event_type])
    return get_named_level(state_map, "state_default" if is_state else "events_default")
