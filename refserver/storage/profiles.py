"""Local users' profiles and the profile write stream (Matrix 1.16 "Profiles")."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.types import JsonDict, JsonValue


@dataclass(frozen=True)
class ProfileWrite:
    """One row of the profile stream: ``value`` None with ``removed`` means deleted."""

    stream_pos: int
    user_id: str
    field: str
    value: JsonValue
    removed: bool


def get_profile(conn: sqlite3.Connection, user_id: str) -> JsonDict:
    rows = conn.execute(
        "SELECT field, value_json FROM profiles WHERE user_id = ? ORDER BY field", (user_id,)
    )
    return {row["field"]: json.loads(row["value_json"]) for row in rows}


def set_field(
    conn: sqlite3.Connection, user_id: str, field: str, value: JsonValue, now_ms: int
) -> int:
    """Store ``field = value``; return the write's stream position."""
    value_json = encode_canonical_json(value).decode()
    pos = _append_stream(conn, user_id, field, value_json, now_ms)
    conn.execute(
        "INSERT INTO profiles (user_id, field, value_json, stream_pos) VALUES (?,?,?,?)"
        " ON CONFLICT (user_id, field) DO UPDATE SET"
        " value_json = excluded.value_json, stream_pos = excluded.stream_pos",
        (user_id, field, value_json, pos),
    )
    return pos


def delete_field(conn: sqlite3.Connection, user_id: str, field: str, now_ms: int) -> int | None:
    """Remove ``field``; return the stream position, or None if it was not set."""
    cur = conn.execute("DELETE FROM profiles WHERE user_id = ? AND field = ?", (user_id, field))
    if cur.rowcount == 0:
        return None
    return _append_stream(conn, user_id, field, None, now_ms)


def _append_stream(
    conn: sqlite3.Connection, user_id: str, field: str, value_json: str | None, now_ms: int
) -> int:
    cur = conn.execute(
        "INSERT INTO profile_stream (user_id, field, value_json, ts) VALUES (?,?,?,?)",
        (user_id, field, value_json, now_ms),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def current_stream_pos(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(stream_pos) FROM profile_stream").fetchone()
    return int(row[0] or 0)


#: Users and fields per query: together they stay below SQLite's historical bound of 999
#: host parameters (a filter may ask for any number of fields).
_USER_CHUNK = 500
_FIELD_CHUNK = 200


def latest_writes(
    conn: sqlite3.Connection,
    user_ids: Iterable[str],
    fields: Iterable[str],
    *,
    after: int,
    upto: int,
) -> list[ProfileWrite]:
    """The newest write of each (user, field) of ``user_ids`` × ``fields`` with
    ``after < stream_pos <= upto``, in stream order.

    The index on ``(user_id, stream_pos)`` makes the cost depend on the writes of these users
    in that range only, not on how many other users wrote meanwhile. There is no row cap: the
    answer has at most one row per (user, field).
    """
    users = sorted(set(user_ids))
    wanted = sorted(set(fields))
    out: list[ProfileWrite] = []
    for u in range(0, len(users), _USER_CHUNK):
        for f in range(0, len(wanted), _FIELD_CHUNK):
            out.extend(
                _latest_writes(
                    conn,
                    users[u : u + _USER_CHUNK],
                    wanted[f : f + _FIELD_CHUNK],
                    after=after,
                    upto=upto,
                )
            )
    out.sort(key=lambda w: w.stream_pos)
    return out


def _latest_writes(
    conn: sqlite3.Connection, users: list[str], fields: list[str], *, after: int, upto: int
) -> list[ProfileWrite]:
    user_marks = ",".join("?" * len(users))
    field_marks = ",".join("?" * len(fields))
    rows = conn.execute(
        "SELECT s.stream_pos, s.user_id, s.field, s.value_json FROM profile_stream s"
        " JOIN (SELECT MAX(stream_pos) AS pos FROM profile_stream"
        f" WHERE user_id IN ({user_marks}) AND field IN ({field_marks})"
        " AND stream_pos > ? AND stream_pos <= ? GROUP BY user_id, field) latest"
        " ON s.stream_pos = latest.pos",
        (*users, *fields, after, upto),
    )
    return [
        ProfileWrite(
            stream_pos=row["stream_pos"],
            user_id=row["user_id"],
            field=row["field"],
            value=None if row["value_json"] is None else json.loads(row["value_json"]),
            removed=row["value_json"] is None,
        )
        for row in rows
    ]
