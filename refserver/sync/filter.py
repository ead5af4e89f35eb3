"""Event filters: parse, validate, match (pure).

Spec: CS API §"Filtering" and ``data/api/client-server/definitions/sync_filter.yaml``
(``Filter``, ``RoomFilter``), ``room_event_filter.yaml`` (``RoomEventFilter``),
``event_filter.yaml`` (``EventFilter``); appendices §"Dot-separated property paths" for
``event_fields``.

Parsing follows the schemas: a value of the wrong JSON type is ``M_BAD_JSON``, a value of the
right type that the spec does not allow (a negative ``limit``, an unknown ``event_format``)
is ``M_INVALID_PARAM``, and an inline filter that is not JSON at all is ``M_NOT_JSON``.
Unknown keys are ignored but kept: :meth:`Filter.to_json` gives back exactly what was
uploaded, extension keys such as ``org.matrix.msc4429.profile_fields`` included. A ``null``
value counts as an absent key.

Matching rules, quoted from the schemas:

* "A matching [sender/type/room] will be excluded even if it is listed in the
  [senders/types/rooms] filter" — exclusion lists win.
* "If this list is absent then all [senders/types/rooms] are included."
* ``types`` / ``not_types``: "A ``*`` can be used as a wildcard to match any sequence of
  characters."
* ``contains_url``: "If ``true``, includes only events with a ``url`` key in their content.
  If ``false``, excludes those events. If omitted, ``url`` key is not considered."
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from refserver.crypto.canonical_json import MAX_JSON_DEPTH, json_depth
from refserver.errors import M_BAD_JSON, M_INVALID_PARAM, M_NOT_JSON, ProtocolError
from refserver.events.model import Event
from refserver.sync.event_fields import apply_event_fields, split_property_path
from refserver.types import JsonDict, JsonValue

__all__ = [
    "DEFAULT_FILTER",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "EventFilter",
    "Filter",
    "FilterError",
    "RoomEventFilter",
    "RoomFilter",
    "apply_event_fields",
    "parse_filter",
    "parse_filter_text",
    "split_property_path",
    "type_matches",
]

#: event_filter.yaml: "Servers should apply a default value, and impose a maximum value to
#: avoid resource exhaustion." 10 is Synapse's default, 100 its default timeline cap.
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 100

EVENT_FORMATS: Final = ("client", "federation")

#: MSC4429 (profile updates in legacy /sync): the stable key and its unstable prefix.
PROFILE_FIELDS_KEYS: Final = ("profile_fields", "org.matrix.msc4429.profile_fields")
#: MSC3773's unstable name for ``unread_thread_notifications`` (stable since v1.4).
UNSTABLE_UNREAD_THREAD_NOTIFICATIONS: Final = "org.matrix.msc3773.unread_thread_notifications"

#: A PDU wrapped in :class:`Event`, or an event / EDU / account-data object as JSON.
EventLike: TypeAlias = Event | Mapping[str, Any]


class FilterError(ProtocolError, ValueError):
    """The filter JSON is invalid: 400 ``M_BAD_JSON``, ``M_INVALID_PARAM`` or ``M_NOT_JSON``."""

    errcode = M_BAD_JSON
    status = 400

    def __init__(self, message: str, *, errcode: str = M_BAD_JSON) -> None:
        super().__init__(message, errcode=errcode)


@dataclass(frozen=True)
class _Fields:
    """What a filter looks at in one event."""

    type: str | None
    sender: str | None
    room_id: str | None
    content: Mapping[str, Any]


def _fields_of(event: EventLike) -> _Fields:
    if isinstance(event, Event):
        return _Fields(event.type, event.sender, event.room_id, event.content)
    content = event.get("content")
    return _Fields(
        type=_str_or_none(event.get("type")),
        sender=_str_or_none(event.get("sender")),
        room_id=_str_or_none(event.get("room_id")),
        content=content if isinstance(content, Mapping) else {},
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def type_matches(pattern: str, event_type: str) -> bool:
    """``types`` / ``not_types`` matching: ``*`` matches any sequence of characters."""
    if "*" not in pattern:
        return pattern == event_type
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, event_type, flags=re.DOTALL) is not None


def _passes(
    value: str | None,
    include: tuple[str, ...] | None,
    exclude: tuple[str, ...],
    *,
    wildcard: bool = False,
) -> bool:
    """Exclusion wins over inclusion; an absent include list includes everything."""

    def hit(pattern: str) -> bool:
        if value is None:
            return False
        return type_matches(pattern, value) if wildcard else pattern == value

    if any(hit(p) for p in exclude):
        return False
    return include is None or any(hit(p) for p in include)


@dataclass(frozen=True)
class EventFilter:
    """``EventFilter`` (event_filter.yaml): used for ``presence`` and ``account_data``."""

    limit: int = DEFAULT_LIMIT
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()

    def matches(self, event: EventLike) -> bool:
        """True if the filter lets ``event`` through (``limit`` is not applied here)."""
        return self._matches_fields(_fields_of(event))

    def _matches_fields(self, f: _Fields) -> bool:
        return _passes(f.sender, self.senders, self.not_senders) and _passes(
            f.type, self.types, self.not_types, wildcard=True
        )


@dataclass(frozen=True)
class RoomEventFilter(EventFilter):
    """``RoomEventFilter`` (room_event_filter.yaml): the per-room filters and /messages."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    #: CS API §"Lazy-loading room members".
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    #: "Only applies to the /sync endpoint" (v1.4, MSC3773).
    unread_thread_notifications: bool = False

    def matches(self, event: EventLike, *, room_id: str | None = None) -> bool:
        """True if the filter lets ``event`` through (``limit`` is not applied here).

        ``room_id`` is for events formatted without one (``ClientEventWithoutRoomID``, EDUs,
        room account data); it overrides the event's own ``room_id``.
        """
        f = _fields_of(event)
        if room_id is not None:
            f = _Fields(f.type, f.sender, room_id, f.content)
        if not self._matches_fields(f):
            return False
        if not _passes(f.room_id, self.rooms, self.not_rooms):
            return False
        return self.contains_url is None or self.contains_url == ("url" in f.content)

    def room_allowed(self, room_id: str) -> bool:
        return _passes(room_id, self.rooms, self.not_rooms)


@dataclass(frozen=True)
class RoomFilter:
    """``RoomFilter`` (sync_filter.yaml ``room``).

    ``rooms`` / ``not_rooms``: "This filter is applied before the filters in ``ephemeral``,
    ``state``, ``timeline`` or ``account_data``."
    """

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    #: "Include rooms that the user has left in the sync. Defaults to ``false``."
    include_leave: bool = False
    ephemeral: RoomEventFilter = field(default_factory=RoomEventFilter)
    state: RoomEventFilter = field(default_factory=RoomEventFilter)
    timeline: RoomEventFilter = field(default_factory=RoomEventFilter)
    account_data: RoomEventFilter = field(default_factory=RoomEventFilter)

    def room_allowed(self, room_id: str) -> bool:
        return _passes(room_id, self.rooms, self.not_rooms)


@dataclass(frozen=True)
class Filter:
    """``Filter`` (sync_filter.yaml): what POST /user/{userId}/filter stores and /sync uses."""

    #: Dot-separated paths to keep in each event; None means every field.
    event_fields: tuple[str, ...] | None = None
    #: ``client`` (the default) or ``federation``.
    event_format: str = "client"
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    room: RoomFilter = field(default_factory=RoomFilter)
    #: MSC4429: profile fields whose updates the client wants in /sync (empty = none).
    profile_field_ids: tuple[str, ...] = ()
    _json: JsonDict = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> JsonDict:
        """The filter exactly as uploaded, unknown keys included (GET .../filter/{id})."""
        return copy.deepcopy(self._json)

    def room_allowed(self, room_id: str) -> bool:
        """The room-level ``rooms`` / ``not_rooms`` check, applied before all others."""
        return self.room.room_allowed(room_id)

    @property
    def include_leave(self) -> bool:
        return self.room.include_leave

    @property
    def timeline_limit(self) -> int:
        return self.room.timeline.limit

    @property
    def lazy_load_members(self) -> bool:
        """Read from ``room.state``, where matrix-js-sdk sets it (Synapse does the same)."""
        return self.room.state.lazy_load_members


# -- parsing -------------------------------------------------------------------------------


def parse_filter(value: JsonValue) -> Filter:
    """Validate a ``Filter`` JSON object; raise :class:`FilterError` if it is invalid."""
    obj = _object(value, "filter")
    event_fields = _str_list(obj.get("event_fields"), "event_fields")
    event_format = obj.get("event_format", "client")
    if event_format is None:
        event_format = "client"
    if not isinstance(event_format, str):
        raise FilterError("event_format must be a string")
    if event_format not in EVENT_FORMATS:
        raise FilterError(
            f"event_format must be one of {', '.join(EVENT_FORMATS)}", errcode=M_INVALID_PARAM
        )
    return Filter(
        event_fields=event_fields,
        event_format=event_format,
        presence=_event_filter(obj.get("presence"), "presence"),
        account_data=_event_filter(obj.get("account_data"), "account_data"),
        room=_room_filter(obj.get("room")),
        profile_field_ids=_profile_field_ids(obj),
        _json=copy.deepcopy(dict(obj)),
    )


def parse_filter_text(text: str) -> Filter:
    """An inline filter, as /sync's ``filter`` query parameter carries it when it starts with
    ``{`` (filter.yaml: a filter ID "Cannot start with a ``{``")."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FilterError(f"filter is not valid JSON: {exc}", errcode=M_NOT_JSON) from None
    # The same nesting limit as a request body (docs/limits.md): the filter is walked and
    # copied, and a deep value would exhaust the stack there.
    if json_depth(value) > MAX_JSON_DEPTH:
        raise FilterError(f"filter is nested deeper than {MAX_JSON_DEPTH} levels")
    return parse_filter(value)


def _object(value: JsonValue, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FilterError(f"{path} must be an object")
    return value


def _str_list(value: JsonValue, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FilterError(f"{path} must be an array of strings")
    return tuple(value)


def _bool(value: JsonValue, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FilterError(f"{path} must be a boolean")
    return value


def _limit(value: JsonValue, path: str) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilterError(f"{path} must be an integer")
    # event_filter.yaml says "greater than 0"; 0 is tolerated as "no events", as Synapse does.
    if value < 0:
        raise FilterError(f"{path} must not be negative", errcode=M_INVALID_PARAM)
    return min(value, MAX_LIMIT)


def _event_filter_fields(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    return {
        "limit": _limit(obj.get("limit"), f"{path}.limit"),
        "senders": _str_list(obj.get("senders"), f"{path}.senders"),
        "not_senders": _str_list(obj.get("not_senders"), f"{path}.not_senders") or (),
        "types": _str_list(obj.get("types"), f"{path}.types"),
        "not_types": _str_list(obj.get("not_types"), f"{path}.not_types") or (),
    }


def _event_filter(value: JsonValue, path: str) -> EventFilter:
    return EventFilter(**_event_filter_fields(_object(value, path), path))


def _room_event_filter(value: JsonValue, path: str) -> RoomEventFilter:
    obj = _object(value, path)
    unread = obj.get("unread_thread_notifications")
    if unread is None:
        unread = obj.get(UNSTABLE_UNREAD_THREAD_NOTIFICATIONS)
    contains_url = obj.get("contains_url")
    if contains_url is not None and not isinstance(contains_url, bool):
        raise FilterError(f"{path}.contains_url must be a boolean")
    return RoomEventFilter(
        **_event_filter_fields(obj, path),
        rooms=_str_list(obj.get("rooms"), f"{path}.rooms"),
        not_rooms=_str_list(obj.get("not_rooms"), f"{path}.not_rooms") or (),
        contains_url=contains_url,
        lazy_load_members=_bool(obj.get("lazy_load_members"), f"{path}.lazy_load_members", False),
        include_redundant_members=_bool(
            obj.get("include_redundant_members"), f"{path}.include_redundant_members", False
        ),
        unread_thread_notifications=_bool(unread, f"{path}.unread_thread_notifications", False),
    )


def _room_filter(value: JsonValue) -> RoomFilter:
    obj = _object(value, "room")
    return RoomFilter(
        rooms=_str_list(obj.get("rooms"), "room.rooms"),
        not_rooms=_str_list(obj.get("not_rooms"), "room.not_rooms") or (),
        include_leave=_bool(obj.get("include_leave"), "room.include_leave", False),
        ephemeral=_room_event_filter(obj.get("ephemeral"), "room.ephemeral"),
        state=_room_event_filter(obj.get("state"), "room.state"),
        timeline=_room_event_filter(obj.get("timeline"), "room.timeline"),
        account_data=_room_event_filter(obj.get("account_data"), "room.account_data"),
    )


def _profile_field_ids(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """MSC4429 ``{"profile_fields": {"ids": [...]}}`` (stable key first, then unstable)."""
    found: tuple[str, ...] | None = None
    for key in PROFILE_FIELDS_KEYS:
        section = _object(obj.get(key), key)
        ids = _str_list(section.get("ids"), f"{key}.ids")
        if found is None and ids is not None:
            found = ids
    return found or ()


#: The filter used when a request names none.
DEFAULT_FILTER: Final = parse_filter({})
