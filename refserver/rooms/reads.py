"""Reading rooms for clients: state, members, messages, single events (CS API "Rooms").

Everything a client reads passes history visibility (CS API "History visibility") and is
formatted as a ClientEvent with ``unsigned`` filled in: ``prev_content`` on state events
(mautrix classifies profile changes by it), ``transaction_id`` on the sender's own echo.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from refserver.clock import Clock
from refserver.errors import M_NOT_FOUND, MatrixError, forbidden
from refserver.events.client_format import client_event
from refserver.events.model import MEMBER, Event
from refserver.events.redaction import redact
from refserver.events.visibility import history_visibility_of, is_visible
from refserver.requester import Requester
from refserver.rooms.service import txn_id_of
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.events import StateMap, StoredEvent
from refserver.streams import StreamToken
from refserver.types import JsonDict


@dataclass(frozen=True)
class Page:
    chunk: list[JsonDict]
    start: str
    end: str | None
    state: list[JsonDict]


def format_events(
    conn: sqlite3.Connection,
    stored: Sequence[StoredEvent],
    requester: Requester | None,
    *,
    include_room_id: bool = True,
    now_ms: int,
) -> list[JsonDict]:
    """ClientEvents with ``unsigned`` (prev_content, transaction_id, redacted_because)."""
    txns = room_store.get_txn_ids(conn, [s.event.event_id for s in stored])
    state_before_cache: dict[str, StateMap | None] = {}
    out = []
    for s in stored:
        event = s.event
        unsigned: JsonDict = {}
        txn = txns.get(event.event_id)
        if (
            requester is not None
            and txn is not None
            and txn[:2] == (requester.user_id, requester.device_id)
        ):
            unsigned["transaction_id"] = txn_id_of(txn[2])
        if event.is_state:
            before = state_before_cache.setdefault(
                event.event_id, event_store.get_state_before(conn, event.event_id)
            )
            prev_id = (before or {}).get(event.state_tuple())
            if prev_id is not None and prev_id != event.event_id:
                prev = event_store.get_events(conn, [prev_id]).get(prev_id)
                if prev is not None:
                    unsigned.update(
                        prev_content=prev.content, prev_sender=prev.sender, replaces_state=prev_id
                    )
        if s.redacted_by is not None:
            event = Event(event.event_id, event.room_version, redact(event.pdu, event.room_version))
            unsigned["redacted_because"] = {"event_id": s.redacted_by, "type": "m.room.redaction"}
        out.append(
            client_event(event, include_room_id=include_room_id, unsigned=unsigned, now_ms=now_ms)
        )
    return out


def visible_to(
    conn: sqlite3.Connection, user_id: str, stored: Sequence[StoredEvent]
) -> list[StoredEvent]:
    """Filter by history visibility, using each event's state before it."""
    out = []
    joined_now: dict[str, bool] = {}
    for s in stored:
        event = s.event
        room_id = event.room_id
        if room_id not in joined_now:
            m = room_store.get_membership(conn, room_id, user_id)
            joined_now[room_id] = m is not None and m.membership == "join"
        before = event_store.get_state_before(conn, event.event_id) or {}
        member_id = before.get((MEMBER, user_id))
        member = event_store.get_events(conn, [member_id]).get(member_id) if member_id else None
        hv_id = before.get(("m.room.history_visibility", ""))
        hv_event = event_store.get_events(conn, [hv_id]).get(hv_id) if hv_id else None
        if is_visible(
            event,
            user_id,
            history_visibility_before=history_visibility_of(hv_event.content if hv_event else None),
            membership_before=member.membership if member else None,
            currently_joined=joined_now[room_id],
        ):
            out.append(s)
    return out


class RoomReader:
    def __init__(self, db: Database, *, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def _membership_or_403(self, room_id: str, user_id: str) -> room_store.Membership:
        m = await self._db.run(room_store.get_membership, room_id, user_id)
        if m is None or m.membership not in ("join", "leave", "ban"):
            raise forbidden("you are not in this room")
        if m.membership != "join" and await self._db.run(room_store.is_forgotten, room_id, user_id):
            # leaving.yaml forgetRoom: "the user will no longer be able to retrieve history".
            raise forbidden("you have forgotten this room")
        return m

    async def _state_for(self, requester: Requester, room_id: str) -> StateMap:
        """Current state if joined; the state when the user left otherwise."""
        m = await self._membership_or_403(room_id, requester.user_id)
        if m.membership == "join":
            return await self._db.run(room_store.get_current_state, room_id)
        state = await self._db.run(event_store.get_state_after, m.event_id)
        if state is None:
            raise forbidden("you are not in this room")
        return state

    async def get_state(self, requester: Requester, room_id: str) -> list[JsonDict]:
        """GET /rooms/{roomId}/state"""
        state = await self._state_for(requester, room_id)

        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            stored = event_store.get_stored_events(conn, state.values())
            return format_events(
                conn,
                [stored[e] for e in state.values() if e in stored],
                requester,
                now_ms=now,
            )

        return await self._db.run(txn)

    async def get_state_event(
        self,
        requester: Requester,
        room_id: str,
        event_type: str,
        state_key: str,
        *,
        full: bool = False,
    ) -> JsonDict:
        """GET /rooms/{roomId}/state/{eventType}/{stateKey} → the content, or with
        ``format=event`` (v1.16) the whole event."""
        state = await self._state_for(requester, room_id)
        event_id = state.get((event_type, state_key))
        if event_id is None:
            raise MatrixError(404, M_NOT_FOUND, f"no {event_type} state with key {state_key!r}")
        if full:
            now = self._clock.time_ms()

            def txn(conn: sqlite3.Connection) -> JsonDict:
                stored = event_store.get_stored_events(conn, [event_id])
                return format_events(conn, [stored[event_id]], requester, now_ms=now)[0]

            return await self._db.run(txn)
        events = await self._db.run(event_store.get_events, [event_id])
        return dict(events[event_id].content)

    async def get_members(
        self,
        requester: Requester,
        room_id: str,
        *,
        membership: str | None,
        not_membership: str | None,
    ) -> list[JsonDict]:
        """GET /rooms/{roomId}/members (?membership=, ?not_membership=)."""
        state = await self._state_for(requester, room_id)
        member_ids = [eid for (t, _), eid in state.items() if t == MEMBER]

        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            stored = event_store.get_stored_events(conn, member_ids)
            chosen = [
                s
                for s in stored.values()
                if (membership is None or s.event.membership == membership)
                and (not_membership is None or s.event.membership != not_membership)
            ]
            return format_events(
                conn, sorted(chosen, key=lambda s: s.stream_ordering), requester, now_ms=now
            )

        return await self._db.run(txn)

    async def get_joined_members(self, requester: Requester, room_id: str) -> JsonDict:
        """GET /rooms/{roomId}/joined_members: note ``display_name`` with an underscore."""
        m = await self._db.run(room_store.get_membership, room_id, requester.user_id)
        if m is None or m.membership != "join":
            raise forbidden("you are not joined to this room")

        def txn(conn: sqlite3.Connection) -> JsonDict:
            members = room_store.get_members(conn, room_id, "join")
            events = event_store.get_events(conn, [mb.event_id for mb in members])
            joined: JsonDict = {}
            for mb in members:
                content = events[mb.event_id].content
                # RoomMember: display_name/avatar_url are optional strings, never null.
                member: JsonDict = {}
                if isinstance(content.get("displayname"), str):
                    member["display_name"] = content["displayname"]
                if isinstance(content.get("avatar_url"), str):
                    member["avatar_url"] = content["avatar_url"]
                joined[mb.user_id] = member
            return {"joined": joined}

        return await self._db.run(txn)

    async def get_visibility(self, room_id: str) -> str:
        """GET /directory/list/room/{roomId}"""
        public = await self._db.run(room_store.get_room_visibility, room_id)
        if public is None:
            raise MatrixError(404, M_NOT_FOUND, "unknown room")
        return "public" if public else "private"

    async def public_rooms(self) -> list[JsonDict]:
        """GET /publicRooms: a PublishedRoomsChunk per published room."""

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            out = []
            for room_id in room_store.public_room_ids(conn):
                state = room_store.get_current_state(conn, room_id)
                events = event_store.get_events(conn, state.values())

                def content(
                    etype: str, state: StateMap = state, events: dict[str, Event] = events
                ) -> JsonDict:
                    eid = state.get((etype, ""))
                    return dict(events[eid].content) if eid in events else {}

                chunk: JsonDict = {
                    "room_id": room_id,
                    "num_joined_members": len(room_store.get_members(conn, room_id, "join")),
                    "world_readable": content("m.room.history_visibility").get("history_visibility")
                    == "world_readable",
                    "guest_can_join": content("m.room.guest_access").get("guest_access")
                    == "can_join",
                    "join_rule": content("m.room.join_rules").get("join_rule", "invite"),
                }
                for key, etype, field in (
                    ("name", "m.room.name", "name"),
                    ("topic", "m.room.topic", "topic"),
                    ("canonical_alias", "m.room.canonical_alias", "alias"),
                    ("avatar_url", "m.room.avatar", "url"),
                ):
                    value = content(etype).get(field)
                    if isinstance(value, str):
                        chunk[key] = value
                out.append(chunk)
            return out

        return await self._db.run(txn)

    async def get_joined_rooms(self, requester: Requester) -> list[str]:
        rooms = await self._db.run(room_store.get_rooms_for_user, requester.user_id, ("join",))
        return sorted(m.room_id for m in rooms)

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> JsonDict:
        """GET /rooms/{roomId}/event/{eventId}: 404 also when the user may not see it
        (rooms.yaml: "not found or you do not have permission to read this event")."""
        try:
            await self._membership_or_403(room_id, requester.user_id)
        except MatrixError:
            raise MatrixError(404, M_NOT_FOUND, "event not found") from None

        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> list[JsonDict]:
            stored = event_store.get_stored_events(conn, [event_id]).get(event_id)
            if (
                stored is None
                or stored.event.room_id != room_id
                or stored.event.rejected
                or stored.outlier
            ):
                return []
            return format_events(
                conn, visible_to(conn, requester.user_id, [stored]), requester, now_ms=now
            )

        found = await self._db.run(txn)
        if not found:
            raise MatrixError(404, M_NOT_FOUND, "event not found")
        return found[0]

    async def get_messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        direction: str,
        limit: int,
    ) -> Page:
        """GET /rooms/{roomId}/messages. Tokens are stream positions (see ``streams``):
        backwards from ``from`` returns events at or before it, newest first."""
        m = await self._membership_or_403(room_id, requester.user_id)

        now = self._clock.time_ms()

        def txn(conn: sqlite3.Connection) -> Page:
            head = event_store.max_stream_ordering(conn)
            # A user who left sees nothing after their leave.
            ceiling = head if m.membership == "join" else m.stream_ordering
            start = (
                StreamToken.parse(from_token).events
                if from_token
                else (ceiling if direction == "b" else 0)
            )
            start = min(start, ceiling)
            stop = StreamToken.parse(to_token).events if to_token else None
            if direction == "b":
                rows = event_store.get_room_events(
                    conn, room_id, after=stop or 0, upto=start, limit=limit, newest_first=True
                )
                end = StreamToken(rows[-1].stream_ordering - 1) if len(rows) == limit else None
            else:
                rows = event_store.get_room_events(
                    conn,
                    room_id,
                    after=start,
                    upto=min(stop or ceiling, ceiling),
                    limit=limit,
                    newest_first=False,
                )
                end = StreamToken(rows[-1].stream_ordering) if rows else None
            rows = [r for r in rows if not r.soft_failed]
            chunk = format_events(
                conn, visible_to(conn, requester.user_id, rows), requester, now_ms=now
            )
            return Page(
                chunk=chunk,
                start=str(StreamToken(start)),
                end=None if end is None else str(end),
                state=[],
            )

        return await self._db.run(txn)
