"""A received or built PDU with its computed event ID (pure).

Server-server API, "PDUs": from room version 3 on, PDUs carry no ``event_id``; it is the
reference hash (see :mod:`refserver.events.hashing`). ``Event`` keeps the wire JSON untouched
and exposes the fields the auth rules and state resolution read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refserver.events.room_versions import RoomVersion
from refserver.ids import room_id_of_create_event
from refserver.types import JsonDict

#: Client-server API, "m.room.member": the event type and its ``membership`` values.
MEMBER = "m.room.member"
JOIN = "join"
INVITE = "invite"
KNOCK = "knock"
LEAVE = "leave"
BAN = "ban"


@dataclass(frozen=True)
class Event:
    event_id: str
    room_version: RoomVersion
    #: The PDU exactly as signed and sent over federation (no ``event_id`` key).
    pdu: JsonDict = field(repr=False)
    #: Set when the PDU failed auth checks (server-server API, "Rejection").
    rejected: bool = False

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def state_key(self) -> str | None:
        sk = self.pdu.get("state_key")
        return sk if isinstance(sk, str) else None

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def content(self) -> JsonDict:
        c = self.pdu.get("content")
        return c if isinstance(c, dict) else {}

    @property
    def room_id(self) -> str:
        """The room ID; for a v12 create event it is derived from the event ID."""
        if "room_id" in self.pdu:
            return str(self.pdu["room_id"])
        return room_id_of_create_event(self.event_id)

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def auth_event_ids(self) -> list[str]:
        return list(self.pdu.get("auth_events", []))

    @property
    def prev_event_ids(self) -> list[str]:
        return list(self.pdu.get("prev_events", []))

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @property
    def redacts(self) -> str | None:
        value: Any = (
            self.content.get("redacts")
            if self.room_version.redacts_in_content
            else self.pdu.get("redacts")
        )
        return value if isinstance(value, str) else None

    def state_tuple(self) -> tuple[str, str]:
        assert self.state_key is not None, "not a state event"
        return (self.type, self.state_key)
