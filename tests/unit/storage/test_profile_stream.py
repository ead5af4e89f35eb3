"""storage.profiles.latest_writes on an in-memory database (MSC4429 incremental /sync)."""

from __future__ import annotations

import json
import sqlite3

from refserver.storage import profiles as store


def append(conn: sqlite3.Connection, rows: list[tuple[str, str, object]]) -> None:
    conn.executemany(
        "INSERT INTO profile_stream (user_id, field, value_json, ts) VALUES (?,?,?,0)",
        [(u, f, None if v is None else json.dumps(v)) for u, f, v in rows],
    )


def test_the_newest_write_per_user_and_field_in_the_range_removals_included(
    conn: sqlite3.Connection,
) -> None:
    append(
        conn,
        [
            ("@a:x", "m.tz", "old"),  # 1: before the range
            ("@a:x", "displayname", "A1"),  # 2
            ("@b:x", "m.tz", "B"),  # 3: not asked for
            ("@a:x", "displayname", "A2"),  # 4
            ("@a:x", "m.tz", None),  # 5: removed
            ("@a:x", "displayname", "A3"),  # 6: after the range
        ],
    )
    got = store.latest_writes(conn, ["@a:x"], ["displayname", "m.tz"], after=1, upto=5)
    assert [(w.stream_pos, w.field, w.value, w.removed) for w in got] == [
        (4, "displayname", "A2", False),
        (5, "m.tz", None, True),
    ]


def test_more_users_and_fields_than_one_query_takes(conn: sqlite3.Connection) -> None:
    users = [f"@u{n}:x" for n in range(1200)]
    fields = [f"org.example.f{n}" for n in range(450)]
    rows: list[tuple[str, str, object]] = [
        (users[n % len(users)], fields[n % len(fields)], n) for n in range(6000)
    ]
    append(conn, rows)
    newest = {(u, f): pos for pos, (u, f, _) in enumerate(rows, start=1)}
    got = store.latest_writes(conn, users, fields, after=0, upto=len(rows))
    assert {(w.user_id, w.field): w.stream_pos for w in got} == newest
    assert [w.stream_pos for w in got] == sorted(newest.values())
