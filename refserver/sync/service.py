"""GET /_matrix/client/v3/sync (CS API "Syncing").

A sync is one read transaction over the event stream: for every room the user is in (or was
invited to, or left), what happened between ``since`` and now, as the spec's ``join`` /
``invite`` / ``leave`` sections. With ``since`` and a ``timeout`` the request long-polls: it
waits on the :class:`~refserver.notifier.Notifier` and answers as soon as something for
this user arrives.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from refserver.clock import Clock
from refserver.events.client_format import STRIPPED_STATE_TYPES, stripped_state_event
from refserver.notifier import Notifier
from refserver.observe import NULL_PROBE, Probe
from refserver.requester import Requester
from refserver.rooms.reads import format_events, visible_to
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage import profiles as profile_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.events import StoredEvent
from refserver.streams import StreamToken
from refserver.sync.filter import Filter
from refserver.sync.profiles import profile_updates
from refserver.types import JsonDict

#: Longest long-poll honoured, whatever the client asks for.
MAX_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SyncRequest:
    requester: Requester
    since: StreamToken | None
    timeout_s: float
    filter: Filter
    full_state: bool = False


class SyncService:
    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        *,
        server_name: str,
        clock: Clock,
        probe: Probe = NULL_PROBE,
    ) -> None:
        self._probe = probe
        self._db = db
        self._clock = clock
        self._notifier = notifier
        self._server_name = server_name

    async def sync(self, req: SyncRequest) -> JsonDict:
        """Answer at once if there is news (or no ``since``); otherwise wait for news."""
        deadline = self._clock.monotonic() + min(req.timeout_s, MAX_TIMEOUT_S)
        while True:
            generation = self._notifier.generation
            response, has_news = await self._db.run(self._compute, req, self._clock.time_ms())
            remaining = deadline - self._clock.monotonic()
            if has_news or req.since is None or remaining <= 0:
                if "users" in response:
                    # MSC4429: the moment a profile update reached this client.
                    self._probe.emit(
                        "sync.users", user_id=req.requester.user_id, users=response["users"]
                    )
                return response
            if not await self._notifier.wait_for_change(generation, remaining):
                return response

    # -- one pass (database thread) -----------------------------------------------------

    def _compute(
        self, conn: sqlite3.Connection, req: SyncRequest, now_ms: int
    ) -> tuple[JsonDict, bool]:
        """One pass at ``now_ms`` (wall clock, for ``unsigned.age``)."""
        head = StreamToken(
            event_store.max_stream_ordering(conn), profile_store.current_stream_pos(conn)
        )
        user_id = req.requester.user_id
        since = req.since
        join: JsonDict = {}
        invite: JsonDict = {}
        leave: JsonDict = {}
        memberships = room_store.get_rooms_for_user(
            conn, user_id, ("join", "invite", "leave", "ban")
        )
        for m in memberships:
            if not req.filter.room_allowed(m.room_id):
                continue
            changed_membership = since is None or m.stream_ordering > since.events
            if m.membership == "join":
                full = since is None or changed_membership or req.full_state
                room = self._joined_room(conn, req, m.room_id, head, full=full, now_ms=now_ms)
                if room is not None:
                    join[m.room_id] = room
            elif m.membership == "invite" and changed_membership:
                invite[m.room_id] = {"invite_state": {"events": self._invite_state(conn, m)}}
            elif m.membership in ("leave", "ban") and (
                # An initial sync lists left rooms only when the filter asks (include_leave).
                changed_membership if since is not None else req.filter.include_leave
            ):
                leave[m.room_id] = self._left_room(conn, req, m, now_ms=now_ms)
        users = profile_updates(
            conn,
            user_id=user_id,
            server_name=self._server_name,
            field_ids=req.filter.profile_field_ids,
            since=since,
            head=head,
        )
        response: JsonDict = {
            "next_batch": str(head),
            "rooms": {"join": join, "invite": invite, "leave": leave},
            "account_data": {"events": []},
            "presence": {"events": []},
        }
        if users:
            # MSC4429: stable name and the unstable one matrix-js-sdk reads as a fallback.
            response["users"] = users
            response["org.matrix.msc4429.users"] = users
        return response, bool(join or invite or leave or users)

    def _timeline(
        self, conn: sqlite3.Connection, req: SyncRequest, room_id: str, *, after: int, upto: int
    ) -> tuple[list[StoredEvent], bool]:
        """The newest ``limit`` visible events in (after, upto], oldest first; and ``limited``."""
        limit = req.filter.timeline_limit
        rows = event_store.get_room_events(
            conn, room_id, after=after, upto=upto, limit=limit + 1, newest_first=True
        )
        rows = [r for r in rows if not r.soft_failed]
        limited = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        rows = visible_to(conn, req.requester.user_id, rows)
        rows = [r for r in rows if req.filter.room.timeline.matches(r.event)]
        return rows, limited

    def _joined_room(
        self,
        conn: sqlite3.Connection,
        req: SyncRequest,
        room_id: str,
        head: StreamToken,
        *,
        full: bool,
        now_ms: int,
    ) -> JsonDict | None:
        after = 0 if full or req.since is None else req.since.events
        timeline, limited = self._timeline(conn, req, room_id, after=after, upto=head.events)
        if not full and not timeline:
            return None
        state_ids = self._state_ids_before(conn, room_id, timeline, head)
        if not full:
            # Incremental: only state that changed after `since` and is not in the timeline.
            assert req.since is not None
            changed = event_store.get_stored_events(conn, state_ids)
            state_ids = [
                e
                for e in state_ids
                if e in changed and changed[e].stream_ordering > req.since.events
            ]
        in_timeline = {s.event.event_id for s in timeline}
        state = [
            s
            for s in event_store.get_stored_events(conn, state_ids).values()
            if s.event.event_id not in in_timeline
        ]
        state.sort(key=lambda s: s.stream_ordering)
        first = timeline[0].stream_ordering if timeline else head.events + 1
        return {
            "timeline": {
                "events": format_events(
                    conn, timeline, req.requester, include_room_id=False, now_ms=now_ms
                ),
                "limited": limited,
                "prev_batch": str(StreamToken(first - 1, head.profiles)),
            },
            "state": {
                "events": format_events(
                    conn, state, req.requester, include_room_id=False, now_ms=now_ms
                )
            },
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "summary": self._summary(conn, room_id, req.requester.user_id),
            "unread_notifications": {"highlight_count": 0, "notification_count": 0},
        }

    @staticmethod
    def _state_ids_before(
        conn: sqlite3.Connection, room_id: str, timeline: list[StoredEvent], head: StreamToken
    ) -> list[str]:
        """State at the start of the timeline (current state if the timeline is empty)."""
        if timeline:
            state = event_store.get_state_before(conn, timeline[0].event.event_id) or {}
        else:
            state = room_store.get_current_state(conn, room_id)
        return list(state.values())

    @staticmethod
    def _summary(conn: sqlite3.Connection, room_id: str, user_id: str) -> JsonDict:
        members = room_store.get_members(conn, room_id)
        joined = sorted(m.user_id for m in members if m.membership == "join")
        invited = sorted(m.user_id for m in members if m.membership == "invite")
        heroes = [u for u in joined + invited if u != user_id][:5]
        return {
            "m.heroes": heroes,
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
        }

    @staticmethod
    def _invite_state(conn: sqlite3.Connection, m: room_store.Membership) -> list[JsonDict]:
        """Stripped state for an invite (CS API "Stripped state"); v1.16: MUST include the
        m.room.create event. The invite itself comes last."""
        remote = fed_store.get_remote_invite_state(conn, m.room_id, m.user_id)
        if remote is not None:
            # An invite to a room we are not in: the stripped state the inviter sent.
            invite = event_store.get_events(conn, [m.event_id]).get(m.event_id)
            return [*remote, *([stripped_state_event(invite)] if invite else [])]
        state = event_store.get_state_before(conn, m.event_id) or {}
        wanted = [
            eid
            for (etype, key), eid in state.items()
            if etype in STRIPPED_STATE_TYPES and key == ""
        ]
        events = event_store.get_events(conn, [*wanted, m.event_id])
        out = [stripped_state_event(events[e]) for e in wanted if e in events]
        if m.event_id in events:
            out.append(stripped_state_event(events[m.event_id]))
        return out

    def _left_room(
        self,
        conn: sqlite3.Connection,
        req: SyncRequest,
        m: room_store.Membership,
        *,
        now_ms: int,
    ) -> JsonDict:
        after = req.since.events if req.since is not None else 0
        timeline, limited = self._timeline(
            conn, req, m.room_id, after=after, upto=m.stream_ordering
        )
        first = timeline[0].stream_ordering if timeline else m.stream_ordering
        return {
            "timeline": {
                "events": format_events(
                    conn, timeline, req.requester, include_room_id=False, now_ms=now_ms
                ),
                "limited": limited,
                "prev_batch": str(StreamToken(first - 1)),
            },
            "state": {"events": []},
            "account_data": {"events": []},
        }
