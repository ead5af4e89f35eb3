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
    # "Updates made since the last since token MUST be returned [...] only the latest update
    # should be returned" (MSC4429): the newest write per (user, field), read per user.
    latest: dict[str, dict[str, JsonValue | None]] = {}
    for write in profile_store.latest_writes(
        conn, sharing, wanted, after=since.profiles, upto=head.profiles
    ):
        latest.setdefault(write.user_id, {})[write.field] = None if write.removed else write.value
    started, touched = _sharing_changes(conn, user_id, sharing, since=since, head=head)
    for other in sorted(started):
        values = {k: v for k, v in _current(conn, other, server_name).items() if k in wanted}
        if values:
            latest.setdefault(other, {}).update(values)
    for other, values in sorted(latest.items()):
        out[other] = {"profile_updates": values}
    for gone in sorted(touched - sharing):
        out[gone] = {"profile_updates": None}
    return out


def _sharing_changes(
    conn: sqlite3.Connection,
    user_id: str,
    sharing: set[str],
    *,
    since: StreamToken,
    head: StreamToken,
) -> tuple[set[str], set[str]]:
    """Who started sharing a room with ``user_id`` after ``since`` (shares one now and shared
    none at ``since``), and who may have stopped (left, or was in a room we left).

    Only a change *of* membership counts: a join after a join is a displayname or avatar
    change (CS API "Events on change of profile information"), which reaches the client as
    a profile write, and announcing the user again would repeat values the client has, or
    worse, values older than the write on its way (MSC4259 EDUs arrive after the event).
    """
    mine = {
        m.room_id: m
        for m in room_store.get_rooms_for_user(
            conn, user_id, ("join", "leave", "ban", "invite", "knock"), include_forgotten=True
        )
    }
    changes = event_store.member_changes_since(conn, mine, after=since.events, upto=head.events)
    # The first change of each (room, user) after the token: the state before it holds the
    # membership at the token.
    first: dict[tuple[str, str], str] = {}
    candidates: set[str] = set()
    touched: set[str] = set()
    own_rooms: dict[str, bool] = {}  # room → did we leave it (or get banned) since the token
    for change in changes:
        first.setdefault((change.room_id, change.user_id), change.event_id)
        left = change.membership in ("leave", "ban")
        if change.user_id == user_id:
            own_rooms[change.room_id] = own_rooms.get(change.room_id, False) or left
        elif left:
            # Only someone who left can have stopped sharing (an invitee never shared).
            touched.add(change.user_id)
        elif change.membership == "join":
            candidates.add(change.user_id)
    for room_id, we_left in own_rooms.items():
        # Our own membership changed: everyone in that room may have come or gone.
        members = {m.user_id for m in room_store.get_members(conn, room_id)}
        candidates |= members
        if we_left:
            touched |= members

    def joined_at_since(m: room_store.Membership) -> bool:
        if m.stream_ordering <= since.events:
            return m.membership == "join"  # unchanged since the token
        event_id = first.get((m.room_id, m.user_id))
        if event_id is None:
            return False  # changed outside the timeline (e.g. state from a join): not before
        return event_store.membership_before(conn, event_id, m.user_id) == "join"

    mine_at_since = {r for r, m in mine.items() if joined_at_since(m)}
    started: set[str] = set()
    for other in sorted((candidates & sharing) - {user_id}):
        theirs = room_store.get_rooms_for_user(
            conn, other, ("join", "leave", "ban"), include_forgotten=True
        )
        if not any(m.room_id in mine_at_since and joined_at_since(m) for m in theirs):
            started.add(other)
    return started, touched
