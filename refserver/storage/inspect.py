"""Read-only snapshots for the inspector page (docs/inspector.md): local users with their
profiles, rooms with their members, the remote-profile cache, and the destinations MSC4259
profile updates are tracked for. Nothing here is on a request path of the Matrix APIs."""

from __future__ import annotations

import json
import sqlite3

from refserver.storage import profiles as profile_store
from refserver.types import JsonDict


def local_users(conn: sqlite3.Connection) -> list[JsonDict]:
    rows = conn.execute("SELECT user_id FROM users WHERE deactivated = 0 ORDER BY user_id")
    return [
        {"user_id": r[0], "profile": profile_store.get_profile(conn, r[0])} for r in rows.fetchall()
    ]


def rooms(conn: sqlite3.Connection) -> list[JsonDict]:
    """Rooms with their name (``m.room.name``) and every membership this server knows."""
    result: list[JsonDict] = []
    for (room_id,) in conn.execute("SELECT room_id FROM rooms ORDER BY created_ts").fetchall():
        name_row = conn.execute(
            "SELECT e.pdu_json FROM current_state cs JOIN events e ON e.event_id = cs.event_id"
            " WHERE cs.room_id = ? AND cs.type = 'm.room.name' AND cs.state_key = ''",
            (room_id,),
        ).fetchone()
        name = json.loads(name_row[0]).get("content", {}).get("name") if name_row else None
        members = [
            {"user_id": u, "membership": m}
            for u, m in conn.execute(
                "SELECT user_id, membership FROM room_memberships WHERE room_id = ?"
                " ORDER BY user_id",
                (room_id,),
            )
        ]
        result.append({"room_id": room_id, "name": name, "members": members})
    return result


def remote_cache(conn: sqlite3.Connection) -> list[JsonDict]:
    """The remote-profile cache: each user's cached fields and how the copy stands."""
    profiles: dict[str, JsonDict] = {}
    for user_id, field, value_json in conn.execute(
        "SELECT user_id, field, value_json FROM remote_profiles ORDER BY user_id, field"
    ):
        profiles.setdefault(user_id, {})[field] = json.loads(value_json)
    result: list[JsonDict] = []
    for user_id, fetched_ms, updated_ms, complete in conn.execute(
        "SELECT user_id, fetched_ms, updated_ms, complete FROM remote_profile_meta ORDER BY user_id"
    ).fetchall():
        result.append(
            {
                "user_id": user_id,
                "profile": profiles.pop(user_id, {}),
                "fetched_ms": fetched_ms,
                "updated_ms": updated_ms,
                "complete": bool(complete),
            }
        )
    result.extend(
        {"user_id": u, "profile": p, "fetched_ms": 0, "updated_ms": 0, "complete": False}
        for u, p in profiles.items()
    )
    return result


def profile_edu_destinations(conn: sqlite3.Connection) -> list[str]:
    """Destinations with an MSC4259 cursor or a join-time exchange owed."""
    rows = conn.execute(
        "SELECT destination FROM profile_edu_cursors"
        " UNION SELECT destination FROM profile_edu_owed ORDER BY 1"
    )
    return [r[0] for r in rows]


def pending_pdu_count(conn: sqlite3.Connection, destination: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM destination_pdus WHERE destination = ?", (destination,)
    ).fetchone()
    return int(row[0])
