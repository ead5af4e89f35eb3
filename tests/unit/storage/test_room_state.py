"""storage.room_state: state resolution over stored events walks the auth DAG from edges read
without decoding the PDUs (``load_auth_edges``) and loads events on demand; it must resolve as
the in-memory algorithm does over the decoded events, and read only the events it looks at.

The DAG is a long membership chain, as profile changes make one: each of Bob's member events
cites his previous one, so its auth chain holds all of them (docs/reliability.md, "Soak").
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from refserver.events.model import Event
from refserver.events.room_versions import ROOM_V11, ROOM_V12, RoomVersion
from refserver.events.state_res import auth_event_ids, resolve_state
from refserver.storage import events as event_store
from refserver.storage.database import _migrations, migrate
from refserver.storage.room_state import load_auth_edges, resolve_states
from tests.unit.events.fakes import ALICE, BOB, JOIN_RULES, MEMBER, POWER_LEVELS, room_id_for
from tests.unit.events.test_state_res import JOIN, Chain

BOTH = pytest.mark.parametrize("rv", [ROOM_V11, ROOM_V12], ids=["v11", "v12"])
CHAIN = 300


def add_room(conn: sqlite3.Connection, rv: RoomVersion) -> str:
    room_id = room_id_for(rv)
    conn.execute(
        "INSERT INTO rooms (room_id, room_version, created_ts) VALUES (?, ?, 0)",
        (room_id, rv.identifier),
    )
    return room_id


def store(conn: sqlite3.Connection, rv: RoomVersion, events: dict[str, Event]) -> None:
    """The events as rows, in the given order (no checks, no flags)."""
    room_id = add_room(conn, rv)
    for event in events.values():
        conn.execute(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, pdu_json) VALUES (?, ?, ?, ?, ?, 1, 0, ?)",
            (
                event.event_id,
                room_id,
                event.type,
                event.state_key,
                event.sender,
                json.dumps(event.pdu),
            ),
        )


def scenario(rv: RoomVersion) -> tuple[Chain, dict[str, str]]:
    """Alice's room; Bob changed his profile CHAIN times; Alice twice."""
    c = Chain(rv)
    ma = c.new("MA", MEMBER, ALICE, ALICE, JOIN, [])
    pa = c.new("PA", POWER_LEVELS, "", ALICE, {"users": {ALICE: 100}}, [ma])
    jr = c.new("JR", JOIN_RULES, "", ALICE, {"join_rule": "public"}, [ma, pa])
    names = {"MA": ma, "PA": pa, "JR": jr}
    bob = c.new("MB0", MEMBER, BOB, BOB, JOIN, [pa, jr])
    for n in range(1, CHAIN):
        bob = c.new(f"MB{n}", MEMBER, BOB, BOB, {**JOIN, "displayname": f"b{n}"}, [pa, bob])
        names[f"MB{n}"] = bob
    names["MA1"] = c.new("MA1", MEMBER, ALICE, ALICE, {**JOIN, "displayname": "a1"}, [pa, ma])
    names["MA2"] = c.new(
        "MA2", MEMBER, ALICE, ALICE, {**JOIN, "displayname": "a2"}, [pa, names["MA1"]]
    )
    return c, names


def states(names: dict[str, str], alice: tuple[str, str]) -> list[dict[tuple[str, str], str]]:
    base = {("m.room.create", ""): "$CREATE", (POWER_LEVELS, ""): names["PA"]}
    base[(JOIN_RULES, "")] = names["JR"]
    last, before = names[f"MB{CHAIN - 1}"], names[f"MB{CHAIN - 3}"]
    return [
        {**base, (MEMBER, ALICE): names[alice[0]], (MEMBER, BOB): last},
        {**base, (MEMBER, ALICE): names[alice[1]], (MEMBER, BOB): before},
    ]


@BOTH
@pytest.mark.parametrize("alice", [("MA1", "MA2"), ("MA", "MA2")], ids=["recent", "join"])
def test_stored_events_resolve_as_in_memory(
    conn: sqlite3.Connection, rv: RoomVersion, alice: tuple[str, str]
) -> None:
    """With Alice's join itself conflicted, every event of Bob's chain lies on a path from
    his member event to her join, so v2.1 replays the whole chain; with two recent changes
    conflicted, only the events between them."""
    c, names = scenario(rv)
    store(conn, rv, c.events)
    sets = states(names, alice)
    assert resolve_states(conn, rv, room_id_for(rv), sets) == resolve_state(rv, sets, c.events)
    lone = [{("m.room.create", ""): "$CREATE"}, sets[0]]
    assert resolve_states(conn, rv, room_id_for(rv), lone) == resolve_state(rv, lone, c.events)


@BOTH
def test_edges_are_the_events_auth_events(conn: sqlite3.Connection, rv: RoomVersion) -> None:
    c, names = scenario(rv)
    store(conn, rv, c.events)
    edges = load_auth_edges(conn, rv, [names[f"MB{CHAIN - 1}"]])
    assert len(edges) == CHAIN + 4  # Bob's chain, JR, PA, MA and the create event
    for event_id, auth in edges.items():
        event = c.events[event_id]
        assert auth == auth_event_ids(rv, event.room_id, event.type, event.auth_event_ids)


def count_event_reads(conn: sqlite3.Connection) -> list[str]:
    """Every statement that reads rows of ``events``, as the connection runs them."""
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: seen.append(sql) if "FROM events" in sql else None)
    return seen


@BOTH
def test_a_room_stored_in_auth_order_is_resolved_with_bounded_walks(
    conn: sqlite3.Connection, rv: RoomVersion
) -> None:
    """Events stored after their auth events: the stream ordering is a topological
    numbering, so resolving two recent changes reads a few rows, not Bob's whole chain."""
    c, names = scenario(rv)
    store(conn, rv, c.events)
    sets = states(names, ("MA1", "MA2"))
    reads = count_event_reads(conn)
    assert resolve_states(conn, rv, room_id_for(rv), sets) == resolve_state(rv, sets, c.events)
    assert 0 < len(reads) < 40, len(reads)


@BOTH
def test_a_room_with_an_event_stored_before_its_auth_events_walks_whole_closures(
    conn: sqlite3.Connection, rv: RoomVersion
) -> None:
    """An event stored before one of its auth events (a remote invite kept before we joined)
    flags the room; its resolutions then walk the whole closures, and agree."""
    c, names = scenario(rv)
    room_id = add_room(conn, rv)
    early = c.events[names["MA2"]]
    assert event_store.auth_order_is_topological(conn, room_id)
    event_store.insert_event(conn, early, state_before=None, outlier=True)
    assert not event_store.auth_order_is_topological(conn, room_id)
    for event in c.events.values():
        if event.event_id != early.event_id:
            event_store.insert_event(conn, event, state_before=None, outlier=True)
    sets = states(names, ("MA1", "MA2"))
    reads = count_event_reads(conn)
    assert resolve_states(conn, rv, room_id, sets) == resolve_state(rv, sets, c.events)
    assert len(reads) > CHAIN  # one batch per level of Bob's chain


def test_storing_events_in_auth_order_keeps_the_room_unflagged(conn: sqlite3.Connection) -> None:
    c, _ = scenario(ROOM_V12)
    room_id = add_room(conn, ROOM_V12)
    for event in c.events.values():
        event_store.insert_event(conn, event, state_before=None, outlier=True)
    assert event_store.auth_order_is_topological(conn, room_id)


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_the_migration_flags_rooms_already_stored_out_of_auth_order(reverse: bool) -> None:
    """Schema 008 finds, in a database written before it, the rooms where an event was
    stored before one of its auth events (or cites one we never got)."""
    conn = sqlite3.connect(":memory:")
    for version, sql in _migrations():
        if version < 8:
            conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
    events = scenario(ROOM_V11)[0].events
    store(conn, ROOM_V11, dict(reversed(events.items())) if reverse else events)
    migrate(conn)
    assert event_store.auth_order_is_topological(conn, room_id_for(ROOM_V11)) is not reverse
