"""MSC4259 storage: dirty (destination, user, field) entries and last-sent times."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from refserver.profiles.edus import DirtyField


def mark_dirty(
    conn: sqlite3.Connection,
    destinations: Iterable[str],
    user_id: str,
    field: str,
    stream_pos: int,
    now_ms: int,
    *,
    due_now: bool = False,
) -> int:
    """Mark ``field`` dirty for each destination; returns how many were already dirty
    (changes that will be merged away: the coalescing counter).

    ``due_now`` (the join-time exchange) records the field as owed since time 0, so its
    maximum delay has passed and it goes out at once, in one EDU with the user's other
    due fields, instead of after each field's debounce."""
    first_ms = 0 if due_now else now_ms
    merged = 0
    for destination in destinations:
        cur = conn.execute(
            "UPDATE profile_edu_dirty SET last_change_ms = ?, stream_pos = MAX(stream_pos, ?),"
            " first_change_ms = MIN(first_change_ms, ?)"
            " WHERE destination = ? AND user_id = ? AND field = ?",
            (now_ms, stream_pos, first_ms, destination, user_id, field),
        )
        if cur.rowcount:
            merged += 1
            continue
        conn.execute(
            "INSERT INTO profile_edu_dirty (destination, user_id, field, first_change_ms,"
            " last_change_ms, stream_pos) VALUES (?,?,?,?,?,?)",
            (destination, user_id, field, first_ms, now_ms, stream_pos),
        )
    return merged


def dirty_for(conn: sqlite3.Connection, destination: str) -> list[DirtyField]:
    rows = conn.execute(
        "SELECT user_id, field, first_change_ms, last_change_ms, stream_pos FROM profile_edu_dirty"
        " WHERE destination = ?",
        (destination,),
    )
    return [DirtyField(r[0], r[1], r[2] / 1000, r[3] / 1000, r[4]) for r in rows]


def last_sent_for(conn: sqlite3.Connection, destination: str) -> dict[tuple[str, str], float]:
    rows = conn.execute(
        "SELECT user_id, field, last_sent_ms FROM profile_edu_sent WHERE destination = ?",
        (destination,),
    )
    return {(r[0], r[1]): r[2] / 1000 for r in rows}


def ack_sent(
    conn: sqlite3.Connection, destination: str, sent: Iterable[tuple[str, str, int]], now_ms: int
) -> None:
    """A transaction with these (user, field, stream_pos) got 200: clear what it covered.

    A row whose stream_pos moved on (changed again while in flight) stays dirty.
    """
    for user_id, field, stream_pos in sent:
        conn.execute(
            "DELETE FROM profile_edu_dirty WHERE destination = ? AND user_id = ? AND field = ?"
            " AND stream_pos <= ?",
            (destination, user_id, field, stream_pos),
        )
        conn.execute(
            "INSERT INTO profile_edu_sent (destination, user_id, field, last_sent_ms)"
            " VALUES (?,?,?,?) ON CONFLICT (destination, user_id, field)"
            " DO UPDATE SET last_sent_ms = excluded.last_sent_ms",
            (destination, user_id, field, now_ms),
        )


def destinations_with_dirty(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT destination FROM profile_edu_dirty")}


def count_dirty(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM profile_edu_dirty").fetchone()[0])
