"""MSC4429: profile updates in /sync (``users`` / ``org.matrix.msc4429.users``).

Opt-in through the filter's ``profile_fields.ids`` (unstable
``org.matrix.msc4429.profile_fields.ids``). For every user sharing a room with the syncing
user — local or remote, the syncing user included — the section carries
``{user_id: {"profile_updates": {field: value | null}}}``:

- an initial sync gives the current values of the requested fields;
- an incremental sync gives the latest value of each requested field changed since the
  token (``null`` = removed), plus current values for users who started sharing a room;
- ``"profile_updates": null`` tells the client to forget a user who no longer shares any
  room with it.

Remote users' values come from the remote profile cache, which MSC4259 EDUs keep current:
that is what lets this section show remote changes at all.
"""

from __future__ import annotations

import sqlite3

from refserver.ids import server_name_of
from refserver.storage import events as event_store
from refserver.storage import profiles as profile_store
from refserver.storage import remote_profiles as cache_store
from refserver.storage import rooms as room_store
from refserver.streams import StreamToken
from refserver.types import JsonDict, JsonValue


def _current(conn: sqlite3.Connection, user_id: str, server_name: str) -> JsonDict:
    if server_name_of(user_id) == server_name:
        return profile_store.get_profile(conn, user_id)
    return cache_store.get_cached(conn, user_id)[0]


def profile_updates(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    server_name: str,
    field_ids: tuple[str, ...],
    since: StreamToken | None,
    head: StreamToken,
) -> dict[str, JsonDict | None]:
    """The ``users`` section: ``{user_id: {"profile_updates": {...} | None}}``."""
    if not field_ids:
        return {}
    wanted = set(field_ids)
    sharing = room_store.users_sharing_rooms_with(conn, user_id) | {user_id}
    out: dict[str, JsonDict | None] = {}
    if since is None:
        for other in sorted(sharing):
            values = {k: v for k, v in _current(conn, other, server_name).items() if k in wanted}
            if values:
                out[other] = {"profile_updates": values}
        return out
    # Latest value per (user, field) written since the token.
    latest: dict[str, dict[str, JsonValue | None]] = {}
    for write in profile_store.get_writes_since(conn, since.profiles, limit=100_000):
        if (
            write.stream_pos > head.profiles
            or write.user_id not in sharing
            or write.field not in wanted
        ):
            continue
        latest.setdefault(write.user_id, {})[write.field] = None if write.removed else write.value
    # Membership changes since the token: who started or stopped sharing a room.
    my_rooms = [
        m.room_id
        for m in room_store.get_rooms_for_user(
            conn, user_id, ("join", "leave", "ban", "invite"), include_forgotten=True
        )
    ]
    changes = event_store.member_changes_since(conn, my_rooms, after=since.events, upto=head.events)
    started: set[str] = set()
    touched: set[str] = set()
    for room_id, member, membership in changes:
        if member == user_id:
            # Our own membership changed: everyone in that room may have come or gone.
            if membership in ("leave", "ban"):
                touched |= {m.user_id for m in room_store.get_members(conn, room_id)}
            if membership == "join":
                started |= {m.user_id for m in room_store.get_members(conn, room_id, "join")}
        elif membership in ("leave", "ban"):
            # Only someone who left can have stopped sharing (an invitee never shared).
            touched.add(member)
        elif membership == "join":
            started.add(member)
    for other in sorted(started & sharing):
        values = {k: v for k, v in _current(conn, other, server_name).items() if k in wanted}
        if values:
            latest.setdefault(other, {}).update(values)
    for other, values in sorted(latest.items()):
        out[other] = {"profile_updates": values}
    for gone in sorted(touched - sharing):
        out[gone] = {"profile_updates": None}
    return out
