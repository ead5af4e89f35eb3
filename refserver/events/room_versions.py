"""Room versions 10, 11 and 12 as frozen records of behaviour flags.

Spec: /rooms/v10, /rooms/v11, /rooms/v12 and their fragments. Each flag names the room
version (and MSC) that introduced the behaviour, as Synapse's ``RoomVersion`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from refserver.errors import M_UNSUPPORTED_ROOM_VERSION, ProtocolError


class StateResAlgorithm(Enum):
    V2 = "v2"  # rooms/fragments/v2-state-res.md (room versions 2–11)
    V2_1 = "v2.1"  # rooms/v12 (MSC4297): empty starting state + conflicted state subgraph


class RedactionAlgorithm(Enum):
    V9 = "v9"  # rooms/fragments/v9-redactions.md (used by v10)
    V11 = "v11"  # rooms/fragments/v11-redactions.md (used by v11, v12)


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    redaction: RedactionAlgorithm
    state_res: StateResAlgorithm
    #: v11 (MSC2175): m.room.create has no ``creator``; the create event's sender is the creator.
    implicit_room_creator: bool
    #: v11 (MSC2174): ``redacts`` lives in the content of m.room.redaction.
    redacts_in_content: bool
    #: v12 (MSC4291): room ID is ``!`` + the create event's reference hash; create has no room_id.
    room_id_is_create_event_hash: bool
    #: v12 (MSC4291): the create event is never listed in ``auth_events``.
    create_event_in_auth_events: bool
    #: v12 (MSC4289): the create sender and ``additional_creators`` have infinite power.
    privileged_creators: bool


ROOM_V10 = RoomVersion(
    identifier="10",
    redaction=RedactionAlgorithm.V9,
    state_res=StateResAlgorithm.V2,
    implicit_room_creator=False,
    redacts_in_content=False,
    room_id_is_create_event_hash=False,
    create_event_in_auth_events=True,
    privileged_creators=False,
)
ROOM_V11 = RoomVersion(
    identifier="11",
    redaction=RedactionAlgorithm.V11,
    state_res=StateResAlgorithm.V2,
    implicit_room_creator=True,
    redacts_in_content=True,
    room_id_is_create_event_hash=False,
    create_event_in_auth_events=True,
    privileged_creators=False,
)
ROOM_V12 = RoomVersion(
    identifier="12",
    redaction=RedactionAlgorithm.V11,
    state_res=StateResAlgorithm.V2_1,
    implicit_room_creator=True,
    redacts_in_content=True,
    room_id_is_create_event_hash=True,
    create_event_in_auth_events=False,
    privileged_creators=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (ROOM_V10, ROOM_V11, ROOM_V12)
}
#: /rooms: "servers SHOULD use room version 12 as the default" (MSC4304).
DEFAULT_ROOM_VERSION = ROOM_V12


class UnsupportedRoomVersion(ProtocolError, ValueError):
    """A room version this server does not implement (CS API "Room versions")."""

    errcode = M_UNSUPPORTED_ROOM_VERSION
    status = 400


def get_room_version(identifier: str) -> RoomVersion:
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnsupportedRoomVersion(f"unsupported room version {identifier!r}") from None
