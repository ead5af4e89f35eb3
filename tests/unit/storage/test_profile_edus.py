"""storage.profile_edus: one cursor per destination into profile_stream (MSC4259 sending side),
on a real SQLite file opened as the server opens it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from refserver.profiles.edus import cursor_after
from refserver.storage import profile_edus as store
from refserver.storage import profiles as profile_store
from refserver.storage.database import _migrations, connect, migrate

ORIGIN = "hs1"
ALICE, BOB, CAROL = "@alice:hs1", "@bob:hs1", "@carol:hs1"
NOW_MS = 1_000_000
KEEP_MS = 5_000


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "refserver.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(db_path)
    for user in (ALICE, BOB, CAROL):
        conn.execute(
            "INSERT INTO users (user_id, localpart, created_ts) VALUES (?,?,0)",
            (user, user[1:].split(":")[0]),
        )
    yield conn
    conn.close()


def join(conn: sqlite3.Connection, room: str, user: str) -> None:
    server = user.split(":", 1)[1]
    conn.execute(
        "INSERT INTO room_memberships (room_id, user_id, server_name, membership, event_id,"
        " stream_ordering) VALUES (?,?,?,'join','$e',0)"
        " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = 'join'",
        (room, user, server),
    )


def leave(conn: sqlite3.Connection, room: str, user: str) -> None:
    conn.execute(
        "UPDATE room_memberships SET membership = 'leave' WHERE room_id = ? AND user_id = ?",
        (room, user),
    )


def put(conn: sqlite3.Connection, user: str, field: str, value: str, at_ms: int = NOW_MS) -> int:
    return profile_store.set_field(conn, user, field, value, at_ms)


def pending(conn: sqlite3.Connection, dest: str = "hs2", **kw: object) -> store.Pending:
    return store.pending_for(conn, dest, origin=ORIGIN, **kw)  # type: ignore[arg-type]


def fields_of(p: store.Pending) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(d.user_id, d.field): (d.first_pos, d.stream_pos, d.changes) for d in p.fields}


def ack_all(
    conn: sqlite3.Connection, p: store.Pending, dest: str = "hs2", at_ms: int = NOW_MS
) -> None:
    sent = [(d.user_id, d.field) for d in p.fields]
    store.ack(
        conn,
        dest,
        sent=sent,
        head=p.head,
        cursor=cursor_after(p.fields, sent, cursor=p.cursor, head=p.head),
        owed_users=list(p.owed),
        now_ms=at_ms,
        keep_ms=KEEP_MS,
    )


def test_a_profile_write_costs_the_same_rows_for_one_or_a_thousand_destinations(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    for n in range(1000):
        join(conn, "!r", f"@u:hs{n + 2}")
    before = store.table_sizes(conn)
    put(conn, ALICE, "displayname", "Alice")
    # Only profile_stream (and profiles) grew: nothing per destination.
    assert store.table_sizes(conn) == before
    assert len(store.destinations_with_pending(conn, origin=ORIGIN)) == 0  # no cursors yet


def test_pending_is_the_newest_change_per_field_of_local_users_sharing_a_room(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@bob:hs2")
    join(conn, "!other", CAROL)  # shares no room with hs2
    join(conn, "!r", "@dave:hs3")
    store.start_cursor(conn, "hs2")
    p1 = put(conn, ALICE, "m.tz", "A")
    p2 = put(conn, ALICE, "m.tz", "B")
    p3 = put(conn, ALICE, "displayname", "Alice")
    put(conn, CAROL, "m.tz", "C")
    put(conn, ALICE, "org.example.secret", "x")
    # A remote user's cached changes are in the stream too, never ours to send.
    conn.execute(
        "INSERT INTO profile_stream (user_id, field, value_json, ts)"
        " VALUES ('@dave:hs3', 'm.tz', '\"D\"', 0)"
    )
    p = pending(conn, exclude_fields=("org.example.secret",))
    assert p.cursor == 0
    assert fields_of(p) == {(ALICE, "m.tz"): (p1, p2, 2), (ALICE, "displayname"): (p3, p3, 1)}
    assert p.owed == {}


def test_acknowledging_moves_the_cursor_and_nothing_is_pending_any_more(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@bob:hs2")
    store.start_cursor(conn, "hs2")
    put(conn, ALICE, "m.tz", "A")
    assert store.destinations_with_pending(conn, origin=ORIGIN) == {"hs2"}
    p = pending(conn)
    ack_all(conn, p)
    assert pending(conn).fields == []
    assert pending(conn).cursor == p.head
    assert store.destinations_with_pending(conn, origin=ORIGIN) == set()
    # The send time is kept for the rate limit …
    put(conn, ALICE, "m.tz", "B", NOW_MS + 100)
    assert pending(conn).last_sent == {(ALICE, "m.tz"): NOW_MS / 1000}


def test_a_field_held_back_holds_the_cursor_and_a_sent_one_is_not_read_again(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", BOB)
    join(conn, "!r", "@x:hs2")
    store.start_cursor(conn, "hs2")
    held = put(conn, ALICE, "m.tz", "A")
    put(conn, BOB, "displayname", "Bob")
    p = pending(conn)
    sent = [(BOB, "displayname")]
    cursor = cursor_after(p.fields, sent, cursor=p.cursor, head=p.head)
    assert cursor == held - 1
    store.ack(
        conn,
        "hs2",
        sent=sent,
        head=p.head,
        cursor=cursor,
        owed_users=[],
        now_ms=NOW_MS,
        keep_ms=KEEP_MS,
    )
    # bob's change is above the cursor but covered by the recent EDU: only alice's is owed.
    assert set(fields_of(pending(conn))) == {(ALICE, "m.tz")}
    assert store.destinations_with_pending(conn, origin=ORIGIN) == {"hs2"}
    # bob changes again: owed again, from the new change only.
    again = put(conn, BOB, "displayname", "Bobby")
    assert fields_of(pending(conn))[(BOB, "displayname")] == (again, again, 1)


def test_recent_rows_are_pruned_once_older_than_every_interval_and_below_the_cursor(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@x:hs2")
    store.start_cursor(conn, "hs2")
    for n in range(50):
        put(conn, ALICE, f"org.example.f{n}", "v")
    ack_all(conn, pending(conn), at_ms=NOW_MS)
    assert store.table_sizes(conn)["profile_edu_recent"] == 50
    put(conn, ALICE, "m.tz", "A")
    ack_all(conn, pending(conn), at_ms=NOW_MS + KEEP_MS + 1)
    # Only what was sent within the longest interval is kept.
    assert store.table_sizes(conn) == {
        "profile_edu_cursors": 1,
        "profile_edu_recent": 1,
        "profile_edu_owed": 0,
    }


def test_a_destination_that_stopped_sharing_is_not_pending(conn: sqlite3.Connection) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@x:hs2")
    store.start_cursor(conn, "hs2")
    leave(conn, "!r", "@x:hs2")
    put(conn, ALICE, "m.tz", "A")
    assert store.destinations_with_pending(conn, origin=ORIGIN) == set()
    assert pending(conn).fields == []


def test_the_join_time_marker_is_owed_until_acknowledged_and_survives_a_restart(
    db_path: Path, conn: sqlite3.Connection
) -> None:
    join(conn, "!r", ALICE)
    put(conn, ALICE, "m.tz", "old")  # before hs2 shared a room: covered by the marker
    join(conn, "!r", "@x:hs2")
    store.owe_full_profile(conn, "hs2", ALICE)
    conn.commit()
    conn.close()
    reopened = connect(db_path)  # the server restarts before sending
    try:
        assert store.destinations_with_pending(reopened, origin=ORIGIN) == {"hs2"}
        p = pending(reopened)
        assert p.fields == []  # the cursor started at the head
        assert list(p.owed) == [ALICE]
        ack_all(reopened, p)
        assert pending(reopened).owed == {}
        assert store.destinations_with_pending(reopened, origin=ORIGIN) == set()
    finally:
        reopened.close()


def test_a_marker_renewed_while_in_flight_is_kept(conn: sqlite3.Connection) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@x:hs2")
    store.owe_full_profile(conn, "hs2", ALICE)
    p = pending(conn)
    put(conn, ALICE, "m.tz", "A")  # moves the head
    store.owe_full_profile(conn, "hs2", ALICE)  # left and joined again meanwhile
    ack_all(conn, p)
    assert list(pending(conn).owed) == [ALICE]


def test_a_marker_for_a_user_who_no_longer_shares_a_room_is_dropped(
    conn: sqlite3.Connection,
) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@x:hs2")
    store.owe_full_profile(conn, "hs2", ALICE)
    leave(conn, "!r", ALICE)
    assert pending(conn).owed == {}
    assert store.table_sizes(conn)["profile_edu_owed"] == 0


def test_pending_changes_survive_a_restart(db_path: Path, conn: sqlite3.Connection) -> None:
    join(conn, "!r", ALICE)
    join(conn, "!r", "@x:hs2")
    store.start_cursor(conn, "hs2")
    pos = put(conn, ALICE, "displayname", "Alice")
    conn.commit()
    conn.close()
    reopened = connect(db_path)
    try:
        assert store.destinations_with_pending(reopened, origin=ORIGIN) == {"hs2"}
        assert fields_of(pending(reopened)) == {(ALICE, "displayname"): (pos, pos, 1)}
    finally:
        reopened.close()


def test_the_migration_carries_dirty_rows_over_as_cursors_and_markers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db")
    for version, sql in _migrations():
        if version <= 5:
            conn.executescript(sql)
    conn.execute("PRAGMA user_version = 5")
    conn.execute(
        "INSERT INTO users (user_id, localpart, created_ts) VALUES (?, 'alice', 0)", (ALICE,)
    )
    for n in range(6):
        put(conn, ALICE, "m.tz", f"v{n}")
    for room, user in (("!r", ALICE), ("!r", "@x:hs2"), ("!r", "@y:hs3"), ("!r", "@z:hs4")):
        join(conn, room, user)
    # hs2 owed a change at 4, hs3 a join-time exchange at 6, hs4 nothing.
    conn.execute(
        "INSERT INTO profile_edu_dirty VALUES"
        " ('hs2', ?, 'm.tz', 5, 5, 4), ('hs3', ?, 'm.tz', 0, 6, 6)",
        (ALICE, ALICE),
    )
    conn.commit()
    migrate(conn)
    try:
        cursors = dict(conn.execute("SELECT destination, stream_pos FROM profile_edu_cursors"))
        assert cursors["hs2"] == 3 and cursors["hs4"] == 6
        assert list(conn.execute("SELECT destination, user_id FROM profile_edu_owed")) == [
            ("hs3", ALICE)
        ]
        assert store.destinations_with_pending(conn, origin=ORIGIN) == {"hs2", "hs3"}
    finally:
        conn.close()
