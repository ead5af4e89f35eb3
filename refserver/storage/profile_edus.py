"""MSC4259 sending-side storage: one cursor per destination into ``profile_stream``.

A local profile write appends one ``profile_stream`` row and nothing else, whatever the
number of servers sharing a room with the user (schema ``006_msc4259_edu_cursors.sql``):

- ``profile_edu_cursors``: per destination, the stream position up to which every local
  change is acknowledged by (or not owed to) it;
- ``profile_edu_recent``: what went recently per (destination, user, field): the time (the
  per-field rate limit) and the stream head the values were read at (rows above the cursor
  that are already covered); pruned on acknowledgement;
- ``profile_edu_owed``: the join-time exchange, "owe this destination the user's whole
  profile as of ``since_pos``".

:func:`pending_for` is everything a transaction needs to be built, :func:`ack` everything
its 200 changes; each runs as one ``Database.run`` (one round trip).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

#: Local users sharing a room with the destination ``:d`` (``:origin`` is our server name).
_SHARING = (
    "SELECT DISTINCT mine.user_id FROM room_memberships theirs"
    " JOIN room_memberships mine ON mine.room_id = theirs.room_id"
    " AND mine.server_name = :origin AND mine.membership = 'join'"
    " WHERE theirs.server_name = :d AND theirs.membership = 'join'"
)


class ChangedField(NamedTuple):
    """The unsent changes of one (user, field) after a destination's cursor: stream
    positions ``first_pos`` to ``stream_pos``, written ``first_ms`` to ``last_ms``."""

    user_id: str
    field: str
    first_ms: int
    last_ms: int
    stream_pos: int
    first_pos: int
    changes: int


@dataclass(frozen=True)
class Pending:
    """What ``destination`` is owed, read in one transaction."""

    cursor: int
    #: The stream head when read: values read in the same transaction are current at it.
    head: int
    #: Per (user, field): the unsent changes after the cursor (users sharing a room only).
    fields: list[ChangedField]
    #: When an EDU about (user, field) last went, for the pending fields (seconds).
    last_sent: dict[tuple[str, str], float]
    #: Join-time exchange: user → the stream position its whole profile is owed as of.
    owed: dict[str, int]


def _head(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT COALESCE(MAX(stream_pos), 0) FROM profile_stream").fetchone()[0]
    )


def _not_in(column: str, values: Sequence[str]) -> str:
    return f" AND {column} NOT IN ({','.join('?' * len(values))})" if values else ""


def pending_for(
    conn: sqlite3.Connection, destination: str, *, origin: str, exclude_fields: Sequence[str] = ()
) -> Pending:
    """Read what ``destination`` is owed: the newest change per (user, field) after its cursor
    not already covered by a recent EDU, for the local users sharing a room with it, plus
    the join-time markers of users still sharing one (markers of users who no longer share a
    room are deleted). A destination without a cursor has never been sent anything: it
    starts at 0."""
    row = conn.execute(
        "SELECT stream_pos FROM profile_edu_cursors WHERE destination = ?", (destination,)
    ).fetchone()
    cursor = int(row[0]) if row else 0
    head = _head(conn)
    params: dict[str, object] = {"d": destination, "origin": origin, "cursor": cursor, "head": head}
    excluded = {f"x{i}": f for i, f in enumerate(exclude_fields)}
    params.update(excluded)
    not_excluded = (
        f" AND s.field NOT IN ({','.join(':' + k for k in excluded)})" if excluded else ""
    )
    rows = conn.execute(
        f"WITH sharing(user_id) AS ({_SHARING})"
        " SELECT s.user_id, s.field, MIN(s.stream_pos), MAX(s.stream_pos), MIN(s.ts), MAX(s.ts),"
        " COUNT(*), r.sent_ms"
        " FROM sharing JOIN profile_stream s ON s.user_id = sharing.user_id"
        " LEFT JOIN profile_edu_recent r"
        " ON r.destination = :d AND r.user_id = s.user_id AND r.field = s.field"
        " WHERE s.stream_pos > :cursor AND s.stream_pos <= :head"
        " AND s.stream_pos > COALESCE(r.sent_pos, 0)"
        + not_excluded
        + " GROUP BY s.user_id, s.field",
        params,
    ).fetchall()
    fields = [ChangedField(r[0], r[1], r[4], r[5], r[3], r[2], r[6]) for r in rows]
    last_sent = {(r[0], r[1]): r[7] / 1000 for r in rows if r[7] is not None}
    conn.execute(
        f"DELETE FROM profile_edu_owed WHERE destination = :d AND user_id NOT IN ({_SHARING})",
        {"d": destination, "origin": origin},
    )
    owed = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT user_id, since_pos FROM profile_edu_owed WHERE destination = ?", (destination,)
        )
    }
    return Pending(cursor, head, fields, last_sent, owed)


def owe_full_profile(conn: sqlite3.Connection, destination: str, user_id: str) -> None:
    """Join-time exchange: ``destination`` is owed ``user_id``'s whole profile as of now.
    Creates the destination's cursor at the head if it has none (a server we never shared a
    room with is owed nothing older)."""
    head = _head(conn)
    conn.execute(
        "INSERT OR IGNORE INTO profile_edu_cursors (destination, stream_pos) VALUES (?,?)",
        (destination, head),
    )
    conn.execute(
        "INSERT INTO profile_edu_owed (destination, user_id, since_pos) VALUES (?,?,?)"
        " ON CONFLICT (destination, user_id) DO UPDATE SET since_pos = excluded.since_pos",
        (destination, user_id, head),
    )


def start_cursor(conn: sqlite3.Connection, destination: str) -> None:
    """Give ``destination`` a cursor at the head if it has none (it starts sharing a room)."""
    conn.execute(
        "INSERT OR IGNORE INTO profile_edu_cursors (destination, stream_pos) VALUES (?,?)",
        (destination, _head(conn)),
    )


def drop_owed(conn: sqlite3.Connection, destination: str, users: Iterable[str]) -> None:
    """Forget join-time markers with nothing to send (an empty profile)."""
    conn.executemany(
        "DELETE FROM profile_edu_owed WHERE destination = ? AND user_id = ?",
        [(destination, u) for u in users],
    )


def advance_cursor(conn: sqlite3.Connection, destination: str, stream_pos: int) -> None:
    """Move the cursor forward to ``stream_pos`` (never back)."""
    conn.execute(
        "INSERT INTO profile_edu_cursors (destination, stream_pos) VALUES (?,?)"
        " ON CONFLICT (destination) DO UPDATE"
        " SET stream_pos = MAX(stream_pos, excluded.stream_pos)",
        (destination, stream_pos),
    )


def ack(
    conn: sqlite3.Connection,
    destination: str,
    *,
    sent: Iterable[tuple[str, str]],
    covered: Iterable[tuple[str, str]] = (),
    head: int,
    cursor: int,
    owed_users: Iterable[str],
    now_ms: int,
    keep_ms: int,
) -> None:
    """A transaction carrying ``sent`` (user, field) values read at stream position
    ``head`` got 200: record them as sent, clear the join-time markers it carried (unless
    renewed since), move the cursor to ``cursor`` and prune what is older than ``keep_ms``
    (the longest ``min_interval_s``) and at or below the cursor. ``covered`` pairs were
    superseded without being sent (a join-time exchange replaces changes made while no room
    was shared): they count as read at ``head`` without a send time."""
    conn.executemany(
        "INSERT INTO profile_edu_recent (destination, user_id, field, sent_pos, sent_ms)"
        " VALUES (?,?,?,?,?) ON CONFLICT (destination, user_id, field)"
        " DO UPDATE SET sent_pos = excluded.sent_pos, sent_ms = excluded.sent_ms",
        [(destination, u, f, head, now_ms) for u, f in sent],
    )
    conn.executemany(
        "INSERT INTO profile_edu_recent (destination, user_id, field, sent_pos, sent_ms)"
        " VALUES (?,?,?,?,0) ON CONFLICT (destination, user_id, field)"
        " DO UPDATE SET sent_pos = MAX(sent_pos, excluded.sent_pos)",
        [(destination, u, f, head) for u, f in covered],
    )
    conn.executemany(
        "DELETE FROM profile_edu_owed WHERE destination = ? AND user_id = ? AND since_pos <= ?",
        [(destination, u, head) for u in owed_users],
    )
    advance_cursor(conn, destination, cursor)
    conn.execute(
        "DELETE FROM profile_edu_recent WHERE destination = ? AND sent_ms < ?"
        " AND sent_pos <= (SELECT stream_pos FROM profile_edu_cursors WHERE destination = ?)",
        (destination, now_ms - keep_ms, destination),
    )


def destinations_with_pending(
    conn: sqlite3.Connection, *, origin: str, exclude_fields: Sequence[str] = ()
) -> set[str]:
    """Destinations owed something: a join-time marker, or a change after their cursor by a
    local user sharing a room with them and not covered by a recent EDU (start-up)."""
    not_excluded = _not_in("s.field", exclude_fields)
    rows = conn.execute(
        "SELECT c.destination FROM profile_edu_cursors c WHERE c.destination != ? AND EXISTS ("
        " SELECT 1 FROM room_memberships theirs JOIN room_memberships mine"
        " ON mine.room_id = theirs.room_id AND mine.server_name = ? AND mine.membership = 'join'"
        " JOIN profile_stream s ON s.user_id = mine.user_id AND s.stream_pos > c.stream_pos"
        " WHERE theirs.server_name = c.destination AND theirs.membership = 'join'"
        + not_excluded
        + " AND NOT EXISTS (SELECT 1 FROM profile_edu_recent r WHERE r.destination = c.destination"
        " AND r.user_id = s.user_id AND r.field = s.field AND r.sent_pos >= s.stream_pos))"
        " UNION SELECT destination FROM profile_edu_owed",
        (origin, origin, *exclude_fields),
    )
    return {r[0] for r in rows}


def table_sizes(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per sending-side table (tests, and to show the state stays bounded)."""
    return {
        t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
        for t in ("profile_edu_cursors", "profile_edu_recent", "profile_edu_owed")
    }
