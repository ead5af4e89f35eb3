"""Feed the remote profile cache from ``m.room.member`` joins, for peers with or without
MSC4259 (docs/msc4259.md §6.14).

MSC4429 says the initial ``/sync`` "MUST" carry all current profile values of users sharing
a room, and "SHOULD" cover all of them. Without this module the ``users`` section shows only
what MSC4259 EDUs put into the cache, so a Synapse user (no profile EDUs) never appears.

When a remote user starts sharing a room with a local user (they join a room of ours, or
our user joins a room they are in) and nothing is cached about them:

1. ``displayname`` and ``avatar_url`` of their join event go into the cache (an
   incomplete entry; the spec's "Profiles" module: these two are copied into
   ``m.room.member``);
2. :meth:`RemoteProfileCache.schedule_fetch` queries their full profile after a grace
   period, unless an EDU from their server has made the cached copy complete by then.

Later join → join events (a displayname or avatar change) keep updating the two fields for
users of servers that do not send MSC4259 EDUs. For users of servers that do, the EDU is the
better source: their member events never overwrite the cache (a room-specific name in one
room's member event is not the profile).

Every cache change goes through ``storage/remote_profiles.apply_changes`` and so reaches the
profile stream that ``/sync`` reads.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

from refserver.clock import Clock
from refserver.events.model import JOIN, MEMBER, Event
from refserver.ids import server_name_of
from refserver.notifier import Notifier
from refserver.profiles.fields import AVATAR_URL, DISPLAYNAME, ProfileFieldError, check_value
from refserver.profiles.remote_cache import RemoteProfileCache
from refserver.storage import events as event_store
from refserver.storage import remote_profiles as cache_store
from refserver.storage import rooms as room_store
from refserver.storage.database import Database
from refserver.storage.persist import Persisted
from refserver.types import JsonDict, JsonValue

if TYPE_CHECKING:  # the [msc4259] section, read only at construction
    from refserver.settings import Msc4259Section

log = logging.getLogger(__name__)


def member_profile(content: JsonDict) -> dict[str, JsonValue | None]:
    """``displayname`` and ``avatar_url`` of a member event's content; a missing or invalid
    one is ``None`` (removed), as a member event without it says the user has none."""
    out: dict[str, JsonValue | None] = {}
    for key in (DISPLAYNAME, AVATAR_URL):
        value = content.get(key)
        try:
            check_value(key, value)
        except ProfileFieldError:
            value = None
        out[key] = value if isinstance(value, str) else None
    return out


class MemberProfileFeed:
    def __init__(
        self,
        db: Database,
        cache: RemoteProfileCache,
        *,
        server_name: str,
        config: Msc4259Section,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self._db = db
        self._clock = clock
        self._cache = cache
        self._server_name = server_name
        # A server counts as sending EDUs for as long as its users' profiles stay fresh.
        self._edu_window_ms = int(config.remote_cache_ttl_edu_s * 1000)
        self._notifier = notifier

    async def on_membership(self, persisted: Persisted) -> None:
        """Listener of every persisted event, local or federated (``rooms.persisted``)."""
        event = persisted.event
        if event.type != MEMBER or event.membership != JOIN or not event.state_key:
            return
        change = persisted.membership
        if (
            change is not None
            and change.before == JOIN
            and server_name_of(event.state_key) == self._server_name
        ):
            # Our member's profile change (join → join): they already shared the room
            # with every remote member, so nobody is new — no scan of the room's members
            # (that scan made a displayname PUT cost O(room size)).
            return
        to_fetch, changed = await self._db.run(self._feed_txn, event, self._clock.time_ms())
        for user_id in to_fetch:
            self._cache.schedule_fetch(user_id)
        if changed:
            self._notifier.notify()

    def _feed_txn(self, conn: sqlite3.Connection, event: Event, now: int) -> tuple[list[str], int]:
        joiner = event.state_key or ""
        if server_name_of(joiner) != self._server_name:
            candidates = {joiner: event}
        else:
            # Our user joined: every remote member of the room may be new to us.
            remote = [
                m
                for m in room_store.get_members(conn, event.room_id, "join")
                if server_name_of(m.user_id) != self._server_name
            ]
            events = event_store.get_events(conn, [m.event_id for m in remote])
            candidates = {m.user_id: events[m.event_id] for m in remote if m.event_id in events}
        to_fetch: list[str] = []
        changed = 0
        edu_servers: dict[str, bool] = {}
        for user_id, member in sorted(candidates.items()):
            if not cache_store.shares_room_with_local_user(conn, user_id):
                continue
            _, meta = cache_store.get_cached(conn, user_id)
            newly_shared = meta is None
            if not newly_shared and member is not event:
                continue  # already known; another room's member event is no news
            server = server_name_of(user_id)
            if server not in edu_servers:
                edu_servers[server] = cache_store.sends_edus(
                    conn, server, since_ms=now - self._edu_window_ms
                )
            if not edu_servers[server]:
                changed += cache_store.apply_changes(
                    conn, user_id, member_profile(member.content), now
                )
            if newly_shared:
                to_fetch.append(user_id)
        return to_fetch, changed
