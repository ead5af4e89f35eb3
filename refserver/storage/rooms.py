"""Rooms, current state, current membership, aliases, client transaction IDs."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from refserver.events.model import Event
from refserver.ids import server_name_of
from refserver.storage.events import StateMap


@dataclass(frozen=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str
    stream_ordering: int


def insert_room(
    conn: sqlite3.Connection,
    room_id: str,
    room_version: str,
    now_ms: int,
    *,
    is_public: bool = False,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO rooms (room_id, room_version, created_ts, is_public)"
        " VALUES (?,?,?,?)",
        (room_id, room_version, now_ms, int(is_public)),
    )


def get_room_version_id(conn: sqlite3.Connection, room_id: str) -> str | None:
    row = conn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    return None if row is None else str(row[0])


def get_current_state(conn: sqlite3.Connection, room_id: str) -> StateMap:
    rows = conn.execute(
        "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", (room_id,)
    )
    return {(row[0], row[1]): row[2] for row in rows}


def set_current_state(conn: sqlite3.Connection, room_id: str, new_state: StateMap) -> None:
    """Replace the room's current state and keep ``room_memberships`` in step."""
    old = get_current_state(conn, room_id)
    for key in old.keys() - new_state.keys():
        conn.execute(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, *key),
        )
    for (etype, state_key), event_id in new_state.items():
        if old.get((etype, state_key)) == event_id:
            continue
        conn.execute(
            "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?,?,?,?)"
            " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
            (room_id, etype, state_key, event_id),
        )
        if etype == "m.room.member":
            _set_membership(conn, room_id, state_key, event_id)


def _set_membership(conn: sqlite3.Connection, room_id: str, user_id: str, event_id: str) -> None:
    row = conn.execute(
        "SELECT stream_ordering, json_extract(pdu_json, '$.content.membership') FROM events"
        " WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    if row is None or not isinstance(row[1], str):
        return
    conn.execute(
        "INSERT INTO room_memberships (room_id, user_id, server_name, membership, event_id,"
        " stream_ordering, forgotten) VALUES (?,?,?,?,?,?,0)"
        " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,"
        " event_id = excluded.event_id, stream_ordering = excluded.stream_ordering,"
        " forgotten = 0",
        (room_id, user_id, server_name_of(user_id), row[1], event_id, row[0]),
    )


def set_membership_outside_state(
    conn: sqlite3.Connection, room_id: str, user_id: str, event_id: str
) -> None:
    """Membership of a local user in a room we are not in (remote invites, their rejection)."""
    _set_membership(conn, room_id, user_id, event_id)


def get_membership(conn: sqlite3.Connection, room_id: str, user_id: str) -> Membership | None:
    row = conn.execute(
        "SELECT room_id, user_id, membership, event_id, stream_ordering FROM room_memberships"
        " WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    ).fetchone()
    return None if row is None else Membership(*row)


def get_rooms_for_user(
    conn: sqlite3.Connection,
    user_id: str,
    memberships: tuple[str, ...],
    *,
    include_forgotten: bool = False,
) -> list[Membership]:
    marks = ",".join("?" * len(memberships))
    forgotten = "" if include_forgotten else " AND forgotten = 0"
    rows = conn.execute(
        "SELECT room_id, user_id, membership, event_id, stream_ordering FROM room_memberships"
        f" WHERE user_id = ? AND membership IN ({marks}){forgotten}",
        (user_id, *memberships),
    )
    return [Membership(*row) for row in rows]


def get_members(
    conn: sqlite3.Connection, room_id: str, membership: str | None = None
) -> list[Membership]:
    sql = (
        "SELECT room_id, user_id, membership, event_id, stream_ordering FROM room_memberships"
        " WHERE room_id = ?"
    )
    args: tuple[str, ...] = (room_id,)
    if membership is not None:
        sql += " AND membership = ?"
        args = (room_id, membership)
    return [Membership(*row) for row in conn.execute(sql, args)]


def get_joined_servers(conn: sqlite3.Connection, room_id: str) -> set[str]:
    """Servers with at least one joined user: who receives the room's events."""
    rows = conn.execute(
        "SELECT DISTINCT server_name FROM room_memberships"
        " WHERE room_id = ? AND membership = 'join'",
        (room_id,),
    )
    return {row[0] for row in rows}


def _sharing_rooms_with(conn: sqlite3.Connection, user_id: str, column: str) -> set[str]:
    """``column`` (user_id or server_name) of everyone joined to a room ``user_id`` is in."""
    assert column in ("user_id", "server_name")
    rows = conn.execute(
        f"SELECT DISTINCT other.{column} FROM room_memberships mine"
        " JOIN room_memberships other ON other.room_id = mine.room_id AND other.membership = 'join'"
        " WHERE mine.user_id = ? AND mine.membership = 'join'",
        (user_id,),
    )
    return {row[0] for row in rows}


def room_destinations(conn: sqlite3.Connection, event: Event) -> set[str]:
    """Who receives a local event: every server with a user joined to the room, and for a
    membership event the target's server (just invited, kicked or banned)."""
    servers = get_joined_servers(conn, event.room_id)
    if event.type == "m.room.member" and event.state_key:
        servers.add(server_name_of(event.state_key))
    return servers


def shares_other_room(
    conn: sqlite3.Connection, user_id: str, server: str, except_room: str
) -> bool:
    """Is ``user_id`` joined to a room other than ``except_room`` that a user of ``server``
    is joined to?"""
    row = conn.execute(
        "SELECT 1 FROM room_memberships mine JOIN room_memberships other"
        " ON other.room_id = mine.room_id AND other.membership = 'join' AND other.server_name = ?"
        " WHERE mine.user_id = ? AND mine.membership = 'join' AND mine.room_id != ? LIMIT 1",
        (server, user_id, except_room),
    ).fetchone()
    return row is not None


def get_servers_sharing_rooms_with(conn: sqlite3.Connection, user_id: str) -> set[str]:
    """Every server with a user joined to a room ``user_id`` is joined to (MSC4259)."""
    return _sharing_rooms_with(conn, user_id, "server_name")


def servers_sharing_rooms_with_any(conn: sqlite3.Connection, user_ids: Sequence[str]) -> set[str]:
    """Every server with a user joined to a room one of ``user_ids`` is joined to."""
    out: set[str] = set()
    for user_id in user_ids:
        out |= _sharing_rooms_with(conn, user_id, "server_name")
    return out


def users_sharing_rooms_with(conn: sqlite3.Connection, user_id: str) -> set[str]:
    """Every user joined to a room ``user_id`` is joined to (MSC4429)."""
    return _sharing_rooms_with(conn, user_id, "user_id")


def forget_room(conn: sqlite3.Connection, room_id: str, user_id: str) -> None:
    conn.execute(
        "UPDATE room_memberships SET forgotten = 1 WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    )


def record_txn_id(
    conn: sqlite3.Connection, user_id: str, device_id: str, txn_id: str, event_id: str
) -> None:
    conn.execute(
        "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id) VALUES (?,?,?,?)",
        (user_id, device_id, txn_id, event_id),
    )


def get_event_for_txn(
    conn: sqlite3.Connection, user_id: str, device_id: str, txn_id: str
) -> str | None:
    row = conn.execute(
        "SELECT event_id FROM event_txn_ids WHERE user_id = ? AND device_id = ? AND txn_id = ?",
        (user_id, device_id, txn_id),
    ).fetchone()
    return None if row is None else str(row[0])


def get_txn_ids(conn: sqlite3.Connection, event_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """event_id → (user_id, device_id, txn_id) for ``unsigned.transaction_id`` echoes."""
    if not event_ids:
        return {}
    marks = ",".join("?" * len(event_ids))
    rows = conn.execute(
        "SELECT event_id, user_id, device_id, txn_id FROM event_txn_ids"
        f" WHERE event_id IN ({marks})",
        event_ids,
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def set_alias(conn: sqlite3.Connection, room_alias: str, room_id: str, creator: str) -> bool:
    try:
        conn.execute(
            "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES (?,?,?)",
            (room_alias, room_id, creator),
        )
    except sqlite3.IntegrityError:
        return False
    return True


def get_alias(conn: sqlite3.Connection, room_alias: str) -> str | None:
    row = conn.execute(
        "SELECT room_id FROM room_aliases WHERE room_alias = ?", (room_alias,)
    ).fetchone()
    return None if row is None else str(row[0])


def set_room_public(conn: sqlite3.Connection, room_id: str) -> None:
    conn.execute("UPDATE rooms SET is_public = 1 WHERE room_id = ?", (room_id,))


def is_forgotten(conn: sqlite3.Connection, room_id: str, user_id: str) -> bool:
    row = conn.execute(
        "SELECT forgotten FROM room_memberships WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    ).fetchone()
    return row is not None and bool(row[0])


def get_room_visibility(conn: sqlite3.Connection, room_id: str) -> bool | None:
    row = conn.execute("SELECT is_public FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    return None if row is None else bool(row[0])


def set_room_visibility(conn: sqlite3.Connection, room_id: str, public: bool) -> None:
    conn.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(public), room_id))


def public_room_ids(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0] for r in conn.execute("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")
    ]
