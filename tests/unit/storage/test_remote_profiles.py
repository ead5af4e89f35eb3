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
