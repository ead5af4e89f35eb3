"""The cache of remote users' profiles (fed by MSC4259 EDUs, query/profile answers and, for
servers that send no EDUs, ``m.room.member`` events).

Every change to a cached field is also appended to ``profile_stream``, the same stream local
writes go to, so /sync (MSC4429) shows local and remote updates the same way.

``remote_profile_meta.complete`` means "the cache holds the whole profile": set by a full
``query/profile`` answer, or by an EDU from the user's own server (docs/msc4259.md §6.12).
``fetched_ms`` is when it became known complete, the start of its freshness period.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.types import JsonDict, JsonValue


@dataclass(frozen=True)
class CacheMeta:
    fetched_ms: int
    updated_ms: int
    complete: bool


def get_cached(conn: sqlite3.Connection, user_id: str) -> tuple[JsonDict, CacheMeta | None]:
    rows = conn.execute(
        "SELECT field, value_json FROM remote_profiles WHERE user_id = ?", (user_id,)
    )
    profile = {r[0]: json.loads(r[1]) for r in rows}
    meta = conn.execute(
        "SELECT fetched_ms, updated_ms, complete FROM remote_profile_meta WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    return profile, (None if meta is None else CacheMeta(meta[0], meta[1], bool(meta[2])))


def get_cached_many(
    conn: sqlite3.Connection, user_ids: list[str]
) -> dict[str, tuple[JsonDict, CacheMeta | None]]:
    """:func:`get_cached` for several users in two queries per chunk of users."""
    out: dict[str, tuple[JsonDict, CacheMeta | None]] = {u: ({}, None) for u in user_ids}
    for chunk in _chunks(user_ids):
        marks = ",".join("?" * len(chunk))
        for user_id, field, value_json in conn.execute(
            f"SELECT user_id, field, value_json FROM remote_profiles WHERE user_id IN ({marks})",
            chunk,
        ):
            out[user_id][0][field] = json.loads(value_json)
        for user_id, fetched, updated, complete in conn.execute(
            "SELECT user_id, fetched_ms, updated_ms, complete FROM remote_profile_meta"
            f" WHERE user_id IN ({marks})",
            chunk,
        ):
            out[user_id] = (out[user_id][0], CacheMeta(fetched, updated, bool(complete)))
    return out


#: Users per ``IN (…)`` query: well under SQLite's bound on parameters.
_CHUNK = 500


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _stream(
    conn: sqlite3.Connection, user_id: str, field: str, value_json: str | None, now_ms: int
) -> None:
    conn.execute(
        "INSERT INTO profile_stream (user_id, field, value_json, ts) VALUES (?,?,?,?)",
        (user_id, field, value_json, now_ms),
    )


def apply_changes(
    conn: sqlite3.Connection,
    user_id: str,
    changes: dict[str, JsonValue | None],
    now_ms: int,
    *,
    replace_all: bool = False,
    mark_complete: bool = False,
    cached: tuple[JsonDict, CacheMeta | None] | None = None,
) -> int:
    """Set (value) or remove (None) cached fields; with ``replace_all`` (a full query
    answer) fields not in ``changes`` are removed too. ``mark_complete`` (an EDU from the
    user's server) makes an incomplete entry complete from now on. Returns how many fields
    changed.

    Values are compared by their canonical JSON encoding, not with ``==``: in Python
    ``1 == True`` and ``0 == False``, but ``1`` and ``true`` are different JSON values.

    ``cached``: the entry as :func:`get_cached` returns it, when the caller read it already
    in this transaction (batches read many users at once)."""
    current, meta = cached if cached is not None else get_cached(conn, user_id)
    target = dict(current)
    if replace_all:
        target = {k: v for k, v in changes.items() if v is not None}
    else:
        for field, value in changes.items():
            if value is None:
                target.pop(field, None)
            else:
                target[field] = value
    changed = 0
    for field in sorted(current.keys() | target.keys()):
        if field in target and field in current and _same(current[field], target[field]):
            continue
        if field not in target:
            conn.execute(
                "DELETE FROM remote_profiles WHERE user_id = ? AND field = ?", (user_id, field)
            )
            _stream(conn, user_id, field, None, now_ms)
        else:
            value_json = encode_canonical_json(target[field]).decode()
            conn.execute(
                "INSERT INTO remote_profiles (user_id, field, value_json) VALUES (?,?,?)"
                " ON CONFLICT (user_id, field) DO UPDATE SET value_json = excluded.value_json",
                (user_id, field, value_json),
            )
            _stream(conn, user_id, field, value_json, now_ms)
        changed += 1
    was_complete = meta is not None and meta.complete
    if replace_all or (mark_complete and not was_complete):
        fetched = now_ms
    else:
        fetched = meta.fetched_ms if meta else 0
    complete = replace_all or mark_complete or was_complete
    conn.execute(
        "INSERT INTO remote_profile_meta (user_id, fetched_ms, updated_ms, complete)"
        " VALUES (?,?,?,?)"
        " ON CONFLICT (user_id) DO UPDATE SET fetched_ms = excluded.fetched_ms,"
        " updated_ms = excluded.updated_ms, complete = excluded.complete",
        (user_id, fetched, now_ms, int(complete)),
    )
    return changed


def _same(a: JsonValue, b: JsonValue) -> bool:
    return encode_canonical_json(a) == encode_canonical_json(b)


def note_edu_server(conn: sqlite3.Connection, server_name: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO msc4259_servers (server_name, last_edu_ms) VALUES (?, ?)"
        " ON CONFLICT (server_name) DO UPDATE SET last_edu_ms = excluded.last_edu_ms",
        (server_name, now_ms),
    )


def sends_edus(conn: sqlite3.Connection, server_name: str, *, since_ms: int) -> bool:
    """Has ``server_name`` sent us a profile EDU since ``since_ms``? (A server that stopped
    sending them loses the longer cache lifetime.)"""
    row = conn.execute(
        "SELECT 1 FROM msc4259_servers WHERE server_name = ? AND last_edu_ms >= ?",
        (server_name, since_ms),
    ).fetchone()
    return row is not None


def stale_remote_users(
    conn: sqlite3.Connection, users: list[str], older_than_ms: dict[str, int]
) -> list[str]:
    """Of ``users``, those whose last full fetch is older than their server's bound."""
    out = []
    for user_id in users:
        server = user_id.split(":", 1)[1]
        meta = conn.execute(
            "SELECT fetched_ms FROM remote_profile_meta WHERE user_id = ?", (user_id,)
        ).fetchone()
        if meta is None or meta[0] < older_than_ms.get(server, older_than_ms.get("*", 0)):
            out.append(user_id)
    return out


def forget(conn: sqlite3.Connection, user_id: str) -> None:
    """Drop a cached profile (no stream entries: clients get ``profile_updates: null``)."""
    conn.execute("DELETE FROM remote_profiles WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM remote_profile_meta WHERE user_id = ?", (user_id,))


def shares_room_with_local_user(conn: sqlite3.Connection, user_id: str) -> bool:
    """Does ``user_id`` share a room with any user of ours? (MSC4259: receivers "COULD
    ignore the EDU if not interested in that user"; the cache keeps only such users.)"""
    row = conn.execute(
        "SELECT 1 FROM room_memberships theirs JOIN room_memberships ours"
        " ON ours.room_id = theirs.room_id AND ours.membership = 'join'"
        " JOIN users u ON u.user_id = ours.user_id"
        " WHERE theirs.user_id = ? AND theirs.membership = 'join' LIMIT 1",
        (user_id,),
    ).fetchone()
    return row is not None


def sharing_room_with_local_user(conn: sqlite3.Connection, user_ids: list[str]) -> set[str]:
    """Of ``user_ids``, those sharing a room with a user of ours
    (:func:`shares_room_with_local_user` for many users in one query per chunk)."""
    out: set[str] = set()
    for chunk in _chunks(user_ids):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT DISTINCT theirs.user_id FROM room_memberships theirs JOIN room_memberships ours"
            " ON ours.room_id = theirs.room_id AND ours.membership = 'join'"
            " JOIN users u ON u.user_id = ours.user_id"
            f" WHERE theirs.user_id IN ({marks}) AND theirs.membership = 'join'",
            chunk,
        )
        out.update(r[0] for r in rows)
    return out


def remote_users_sharing_rooms(conn: sqlite3.Connection, server_name: str) -> list[str]:
    """Users of other servers than ``server_name`` joined to a room a local user is joined to."""
    rows = conn.execute(
        "SELECT DISTINCT theirs.user_id FROM room_memberships theirs"
        " JOIN room_memberships ours"
        " ON ours.room_id = theirs.room_id AND ours.membership = 'join'"
        " JOIN users u ON u.user_id = ours.user_id"
        " WHERE theirs.membership = 'join' AND theirs.server_name != ?",
        (server_name,),
    )
    return [r[0] for r in rows]
