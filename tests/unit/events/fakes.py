"""Fake events for the auth-rule and state-resolution tests.

Event IDs are ``"$" + name`` rather than reference hashes, so these tests do not depend on
:mod:`refserver.events.hashing`. In v12 rooms the room ID is ``"!" + create_event_id[1:]``,
exactly as MSC4291 derives it from the real hash.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from refserver.events.auth_rules import auth_types_for_event, check_auth
from refserver.events.model import Event
from refserver.events.power_levels import StateKey
from refserver.events.room_versions import RoomVersion

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
DAVE = "@dave:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"
REMOTE = "@remote:other.example"

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"

#: Room ID for v10/v11 test rooms (v12 room IDs derive from the create event).
LEGACY_ROOM_ID = "!room:example.com"
CREATE_ID = "$CREATE"


def room_id_for(room_version: RoomVersion, create_id: str = CREATE_ID) -> str:
    if room_version.room_id_is_create_event_hash:
        return "!" + create_id[1:]
    return LEGACY_ROOM_ID


def make_event(
    name: str,
    room_version: RoomVersion,
    *,
    type: str,
    sender: str,
    state_key: str | None = None,
    content: Mapping[str, Any] | None = None,
    auth_events: Iterable[str] = (),
    prev_events: Iterable[str] = (),
    ts: int = 0,
    room_id: str | None = None,
    rejected: bool = False,
) -> Event:
    """An ``Event`` with ID ``"$" + name``; ``room_id`` defaults to the test room's."""
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": dict(content or {}),
        "auth_events": list(auth_events),
        "prev_events": list(prev_events),
        "origin_server_ts": ts,
        "depth": 1,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    is_v12_create = type == CREATE and room_version.room_id_is_create_event_hash
    if room_id is not None:
        pdu["room_id"] = room_id
    elif not is_v12_create:
        pdu["room_id"] = room_id_for(room_version)
    return Event(event_id="$" + name, room_version=room_version, pdu=pdu, rejected=rejected)


def make_create(
    room_version: RoomVersion,
    *,
    sender: str = ALICE,
    name: str = "CREATE",
    extra_content: Mapping[str, Any] | None = None,
) -> Event:
    """A valid create event for ``room_version`` (v10 gets ``content.creator``)."""
    content: dict[str, Any] = {"room_version": room_version.identifier}
    if not room_version.implicit_room_creator:
        content["creator"] = sender
    content.update(extra_content or {})
    return make_event(name, room_version, type=CREATE, sender=sender, state_key="", content=content)


def pl_content(
    room_version: RoomVersion, users: Mapping[str, int], **levels: Any
) -> dict[str, Any]:
    """power_levels content; in v12 the creator (ALICE) is dropped from ``users`` (rule 10.4)."""
    if room_version.privileged_creators:
        users = {u: level for u, level in users.items() if u != ALICE}
    return {"users": dict(users), **levels}


class Room:
    """A room's current state, grown one accepted event at a time.

    New events cite as ``auth_events`` the current state entries chosen by the auth events
    selection algorithm, as a real server would.
    """

    def __init__(self, room_version: RoomVersion, *, create: Event | None = None) -> None:
        self.room_version = room_version
        self.create = create or make_create(room_version)
        self.state: dict[StateKey, Event] = {(CREATE, ""): self.create}
        self.events: dict[str, Event] = {self.create.event_id: self.create}
        self._ts = itertools.count(1)
        self._names = itertools.count(1)
        self.last = self.create

    def build(
        self,
        type: str,
        sender: str,
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        prev_events: Iterable[str] | None = None,
    ) -> Event:
        """An event on top of the current state; not checked, not applied."""
        content = dict(content or {})
        types = auth_types_for_event(type, state_key, sender, content, self.room_version)
        auth_ids = sorted(self.state[k].event_id for k in types if k in self.state)
        return make_event(
            name or f"E{next(self._names)}",
            self.room_version,
            type=type,
            sender=sender,
            state_key=state_key,
            content=content,
            auth_events=auth_ids,
            prev_events=[self.last.event_id] if prev_events is None else prev_events,
            ts=next(self._ts),
        )

    def check(self, event: Event) -> None:
        """Rules 1, 2, 4–11 against the current state (raises AuthError)."""
        check_auth(event, self.state, create_event=self.create)

    def apply(self, event: Event) -> Event:
        """Check ``event`` against the current state and add it to the state."""
        self.check(event)
        self.events[event.event_id] = event
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event
        self.last = event
        return event

    def send(
        self,
        type: str,
        sender: str,
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> Event:
        return self.apply(self.build(type, sender, state_key, content))

    def join(self, user_id: str) -> Event:
        return self.send(MEMBER, user_id, user_id, {"membership": "join"})

    def set_membership(self, sender: str, target: str, membership: str) -> Event:
        return self.send(MEMBER, sender, target, {"membership": membership})
