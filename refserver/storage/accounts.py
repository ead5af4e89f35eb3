"""Users, devices and access tokens (CS API "Account registration and management", "Login")."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from refserver.errors import M_USER_IN_USE, ProtocolError


@dataclass(frozen=True)
class TokenOwner:
    user_id: str
    device_id: str


class UserExists(ProtocolError):
    """The localpart is already taken (CS API ``/register``: 400 ``M_USER_IN_USE``)."""

    errcode = M_USER_IN_USE
    status = 400


def insert_user(
    conn: sqlite3.Connection, user_id: str, localpart: str, password_hash: str | None, now_ms: int
) -> None:
    try:
        conn.execute(
            "INSERT INTO users (user_id, localpart, password_hash, created_ts) VALUES (?,?,?,?)",
            (user_id, localpart, password_hash, now_ms),
        )
    except sqlite3.IntegrityError:
        raise UserExists("user ID already taken") from None


def user_exists(conn: sqlite3.Connection, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def get_password_hash(conn: sqlite3.Connection, user_id: str) -> str | None:
    row = conn.execute(
        "SELECT password_hash FROM users WHERE user_id = ? AND deactivated = 0", (user_id,)
    ).fetchone()
    return None if row is None else row["password_hash"]


def upsert_device(
    conn: sqlite3.Connection, user_id: str, device_id: str, display_name: str | None, now_ms: int
) -> None:
    conn.execute(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES (?,?,?,?)"
        " ON CONFLICT (user_id, device_id) DO UPDATE SET"
        " display_name = COALESCE(excluded.display_name, devices.display_name)",
        (user_id, device_id, display_name, now_ms),
    )


def add_access_token(
    conn: sqlite3.Connection, token_hash: str, user_id: str, device_id: str, now_ms: int
) -> None:
    conn.execute(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES (?,?,?,?)",
        (token_hash, user_id, device_id, now_ms),
    )


def delete_device_tokens(conn: sqlite3.Connection, user_id: str, device_id: str) -> None:
    """Login reusing a device_id invalidates that device's older tokens (CS API "Login")."""
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )


def get_token_owner(conn: sqlite3.Connection, token_hash: str) -> TokenOwner | None:
    row = conn.execute(
        "SELECT t.user_id, t.device_id FROM access_tokens t JOIN users u USING (user_id)"
        " WHERE t.token_hash = ? AND u.deactivated = 0",
        (token_hash,),
    ).fetchone()
    return None if row is None else TokenOwner(row["user_id"], row["device_id"])


def delete_device(conn: sqlite3.Connection, user_id: str, device_id: str) -> None:
    """/logout: "the access token is invalidated and the device deleted"."""
    delete_device_tokens(conn, user_id, device_id)
    conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))


def delete_all_devices(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
