"""storage.profile_edus.mark_dirty with the pure selection policy (MSC4259 join-time exchange)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from refserver.profiles.edus import FieldPolicy, select_ready
from refserver.storage import profile_edus as store
from refserver.storage.database import migrate

POLICY = FieldPolicy(debounce_s=0.5, max_delay_s=5.0, min_interval_s=1.0)
CUSTOM = {"org.example.status": FieldPolicy(debounce_s=1.0, max_delay_s=10.0, min_interval_s=5.0)}
NOW_MS = 1_000_000


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    migrate(conn)
    yield conn
    conn.close()


def ready_fields(conn: sqlite3.Connection, at_ms: int) -> dict[str, list[str]]:
    selection = select_ready(
        store.dirty_for(conn, "hs2"),
        now=at_ms / 1000,
        policy_for=CUSTOM,
        default_policy=POLICY,
        last_sent={},
        limit_users=100,
    )
    return {user: sorted(d.field for d in fields) for user, fields in selection.by_user.items()}


def test_an_ordinary_change_waits_for_its_debounce(conn: sqlite3.Connection) -> None:
    store.mark_dirty(conn, ["hs2"], "@a:hs1", "displayname", 1, NOW_MS)
    assert ready_fields(conn, NOW_MS) == {}
    assert ready_fields(conn, NOW_MS + 500) == {"@a:hs1": ["displayname"]}


def test_the_join_time_exchange_is_due_at_once_as_one_edu(conn: sqlite3.Connection) -> None:
    for field in ("displayname", "org.example.status"):
        store.mark_dirty(conn, ["hs2"], "@a:hs1", field, 1, NOW_MS, due_now=True)
    # Standard and custom fields together, without either debounce.
    assert ready_fields(conn, NOW_MS) == {"@a:hs1": ["displayname", "org.example.status"]}


def test_a_change_merged_into_a_due_row_keeps_it_due(conn: sqlite3.Connection) -> None:
    store.mark_dirty(conn, ["hs2"], "@a:hs1", "m.tz", 1, NOW_MS, due_now=True)
    merged = store.mark_dirty(conn, ["hs2"], "@a:hs1", "m.tz", 2, NOW_MS + 10)
    assert merged == 1
    assert ready_fields(conn, NOW_MS + 10) == {"@a:hs1": ["m.tz"]}
