"""storage.remote_profiles on a real SQLite file with the full schema (``connect`` migrates)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from refserver.storage import remote_profiles as store
from refserver.storage.database import connect

CAROL = "@carol:remote.example"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "refserver.db")
    yield conn
    conn.close()


def stream(conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
    rows = conn.execute("SELECT field, value_json FROM profile_stream ORDER BY rowid")
    return [(r[0], r[1]) for r in rows]


@pytest.mark.parametrize(
    ("old", "new", "new_json"),
    [(1, True, "true"), (True, 1, "1"), (0, False, "false"), (False, 0, "0")],
)
def test_true_over_a_cached_1_is_a_change_and_reaches_the_stream(
    conn: sqlite3.Connection, old: int | bool, new: int | bool, new_json: str
) -> None:
    store.apply_changes(conn, CAROL, {"org.example.flag": old}, 1000)
    changed = store.apply_changes(conn, CAROL, {"org.example.flag": new}, 2000)
    assert changed == 1
    profile, _ = store.get_cached(conn, CAROL)
    assert profile["org.example.flag"] is new
    assert stream(conn)[-1] == ("org.example.flag", new_json)


def test_an_identical_value_is_not_a_change(conn: sqlite3.Connection) -> None:
    store.apply_changes(conn, CAROL, {"org.example.obj": {"a": 1, "b": [True]}}, 1000)
    before = stream(conn)
    assert store.apply_changes(conn, CAROL, {"org.example.obj": {"b": [True], "a": 1}}, 2000) == 0
    assert stream(conn) == before


def test_a_full_answer_compares_canonically_too(conn: sqlite3.Connection) -> None:
    store.apply_changes(conn, CAROL, {"org.example.n": 0}, 1000, replace_all=True)
    assert store.apply_changes(conn, CAROL, {"org.example.n": False}, 2000, replace_all=True) == 1
    assert store.get_cached(conn, CAROL)[0] == {"org.example.n": False}


def test_mark_complete_starts_the_freshness_period_once(conn: sqlite3.Connection) -> None:
    store.apply_changes(conn, CAROL, {"displayname": "Carol"}, 1000)
    meta = store.get_cached(conn, CAROL)[1]
    assert meta is not None and not meta.complete and meta.fetched_ms == 0
    store.apply_changes(conn, CAROL, {"m.tz": "Europe/Oslo"}, 2000, mark_complete=True)
    meta = store.get_cached(conn, CAROL)[1]
    assert meta is not None and meta.complete and meta.fetched_ms == 2000
    # Later EDUs keep it current but do not extend its freshness.
    store.apply_changes(conn, CAROL, {"m.tz": "Europe/Rome"}, 3000, mark_complete=True)
    meta = store.get_cached(conn, CAROL)[1]
    assert meta is not None and meta.complete and meta.fetched_ms == 2000


def _member(conn: sqlite3.Connection, room_id: str, user_id: str, membership: str) -> None:
    conn.execute(
        "INSERT INTO room_memberships (room_id, user_id, server_name, membership, event_id,"
        " stream_ordering) VALUES (?,?,?,?,?,0)",
        (room_id, user_id, user_id.split(":", 1)[1], membership, f"$m{room_id}{user_id}"),
    )


def test_the_batch_reads_agree_with_the_single_user_reads_across_chunks(
    conn: sqlite3.Connection,
) -> None:
    """One transaction's EDUs are applied with one sharing query and one cache read
    (docs/msc4259.md §6.16): they must give what the per-user reads give, past the chunk
    size of the ``IN (…)`` queries too."""
    conn.execute(
        "INSERT INTO users (user_id, localpart, created_ts) VALUES ('@bob:here.example', 'bob', 0)"
    )
    _member(conn, "!r:here.example", "@bob:here.example", "join")
    users = [f"@u{n}:remote.example" for n in range(1200)]
    for n, user_id in enumerate(users):
        if n % 3 == 0:
            _member(conn, "!r:here.example", user_id, "join")
        elif n % 3 == 1:
            _member(conn, "!r:here.example", user_id, "leave")
        if n % 2 == 0:
            store.apply_changes(
                conn, user_id, {"displayname": f"U{n}"}, 1000, mark_complete=n % 4 == 0
            )
    asked = [*users, "@nobody:remote.example"]

    shared = store.sharing_room_with_local_user(conn, asked)
    assert shared == {u for u in asked if store.shares_room_with_local_user(conn, u)}
    assert len(shared) == 400
    cached = store.get_cached_many(conn, asked)
    assert cached == {u: store.get_cached(conn, u) for u in asked}
