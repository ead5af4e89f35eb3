"""Uploaded filters (CS API "Filtering": POST/GET /user/{userId}/filter)."""

from __future__ import annotations

import sqlite3

#: Filter IDs are decimal row numbers; anything longer cannot be one of ours.
_MAX_ID_DIGITS = 18


def add_filter(conn: sqlite3.Connection, user_id: str, filter_json: str) -> str:
    """Store ``filter_json`` (canonical JSON) for ``user_id``; return its filter ID.

    Uploading the same filter again returns the existing ID: clients such as matrix-js-sdk
    upload their filter on every start, so the table would otherwise grow without bound.
    """
    row = conn.execute(
        "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?",
        (user_id, filter_json),
    ).fetchone()
    if row is not None:
        return str(row[0])
    (next_id,) = conn.execute(
        "SELECT COALESCE(MAX(filter_id) + 1, 0) FROM user_filters WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    conn.execute(
        "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
        (user_id, next_id, filter_json),
    )
    return str(next_id)


def get_filter(conn: sqlite3.Connection, user_id: str, filter_id: str) -> str | None:
    """The stored JSON of ``user_id``'s filter ``filter_id``, or None if there is none."""
    if not _is_filter_id(filter_id):
        return None
    row = conn.execute(
        "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
        (user_id, int(filter_id)),
    ).fetchone()
    return None if row is None else str(row[0])


def _is_filter_id(text: str) -> bool:
    """A decimal number as :func:`add_filter` writes it (no sign, no leading zeros)."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_ID_DIGITS:
        return False
    return text == "0" or not text.startswith("0")
