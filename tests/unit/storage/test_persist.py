"""storage.persist: one transaction stores an event, applies a redaction, updates the room's
current state and writes the outbox rows, and says what it did."""

from __future__ import annotations

import sqlite3

import pytest

from refserver.events.model import Event
from refserver.events.room_versions import get_room_version
from refserver.events.room_view import RoomView
from refserver.rooms.builder import EventBuilder
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage import rooms as room_store
from refserver.storage.persist import (
    MembershipChange,
    expand_owed,
    persist_built,
    persist_event,
)
from refserver.storage.room_state import load_view
from tests.unit.spec_vectors import spec_signing_key

ALICE = "@alice:hs1"
BOB = "@bob:hs2"
CAROL = "@carol:hs3"
ROOM = "!room:hs1"
RV = get_room_version("10")
OWE = ("hs1",)


@pytest.fixture
def builder() -> EventBuilder:
    return EventBuilder(server_name="hs1", signing_key=spec_signing_key())


def create_room(conn: sqlite3.Connection, builder: EventBuilder) -> None:
    """A public room of alice's, stored as createRoom stores it (one batch)."""
    view = RoomView(RV, ROOM, state={}, events={}, prev_events=[], prev_depth=0)
    initial: list[tuple[str, str, dict[str, object]]] = [
        ("m.room.create", "", {"creator": ALICE, "room_version": "10"}),
        ("m.room.member", ALICE, {"membership": "join"}),
        ("m.room.power_levels", "", {"users": {ALICE: 100}, "redact": 50}),
        ("m.room.join_rules", "", {"join_rule": "public"}),
    ]
    for event_type, state_key, content in initial:
        builder.build(
            view,
            sender=ALICE,
            event_type=event_type,
            content=content,
            state_key=state_key,
            now_ms=1,
        )
    persisted = persist_built(conn, view, state_before_first={}, new_room=True, owe_except=OWE)
    assert all(p.owed for p in persisted)
    assert [servers for _, servers in expand_owed(conn)] == [()] * 4  # nobody else is here


def owed_to(conn: sqlite3.Connection, event: Event) -> tuple[str, ...]:
    """The servers the one event waiting in ``pdu_fanout`` is owed to (expanding it)."""
    owed = expand_owed(conn)
    assert [e.event_id for e, _ in owed] == [event.event_id]
    return owed[0][1]


def send(
    conn: sqlite3.Connection,
    builder: EventBuilder,
    sender: str,
    event_type: str,
    content: dict[str, object],
    *,
    state_key: str | None = None,
    redacts: str | None = None,
) -> tuple[Event, dict[tuple[str, str], str]]:
    """Build the next event on the room's current state; return it and the state before it."""
    view = load_view(conn, ROOM)
    assert view is not None
    before = dict(view.state)
    event = builder.build(
        view,
        sender=sender,
        event_type=event_type,
        content=content,
        state_key=state_key,
        redacts=redacts,
        now_ms=2,
    )
    return event, before


def test_a_join_is_owed_to_the_room_and_reports_the_membership_change(
    conn: sqlite3.Connection, builder: EventBuilder
) -> None:
    create_room(conn, builder)
    join, before = send(conn, builder, BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    p = persist_event(conn, join, state_before=before, owe_except=OWE)
    assert p.accepted
    assert p.membership == MembershipChange(BOB, None, "join")
    assert room_store.get_current_state(conn, ROOM)[("m.room.member", BOB)] == join.event_id
    # One pdu_fanout row was written with the event; expanding it writes the outbox rows.
    assert fed_store.pending_pdus(conn, "hs2", 50) == []
    assert owed_to(conn, join) == ("hs2",)
    assert fed_store.pending_pdus(conn, "hs2", 50) == [(p.stream_ordering, join.event_id)]
    assert expand_owed(conn) == []  # each owed event is expanded once

    message, before = send(conn, builder, ALICE, "m.room.message", {"body": "hi"})
    p = persist_event(conn, message, state_before=before, owe_except=OWE)
    assert (owed_to(conn, message), p.membership) == (("hs2",), None)

    leave, before = send(
        conn, builder, BOB, "m.room.member", {"membership": "leave"}, state_key=BOB
    )
    p = persist_event(conn, leave, state_before=before, owe_except=OWE)
    # The leaver's server is told of its own leave (the target of a membership event).
    assert owed_to(conn, leave) == ("hs2",)
    assert p.membership == MembershipChange(BOB, "join", "leave")


def test_received_events_are_owed_to_nobody_unless_relayed(
    conn: sqlite3.Connection, builder: EventBuilder
) -> None:
    create_room(conn, builder)
    for user in (BOB, CAROL):
        join, before = send(
            conn, builder, user, "m.room.member", {"membership": "join"}, state_key=user
        )
        p = persist_event(conn, join, state_before=before)
        assert not p.owed
    assert expand_owed(conn) == []
    message, before = send(conn, builder, CAROL, "m.room.message", {"body": "hi"})
    relayed = persist_event(conn, message, state_before=before, owe_except=("hs1", "hs3"))
    assert relayed.owed and owed_to(conn, message) == ("hs2",)


def test_a_soft_failed_event_changes_nothing_and_is_owed_to_nobody(
    conn: sqlite3.Connection, builder: EventBuilder
) -> None:
    create_room(conn, builder)
    join, before = send(conn, builder, BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    p = persist_event(conn, join, state_before=before, soft_failed=True, owe_except=OWE)
    assert not p.accepted
    assert (p.owed, p.membership, expand_owed(conn)) == (False, None, [])
    assert ("m.room.member", BOB) not in room_store.get_current_state(conn, ROOM)
    assert join.event_id not in event_store.get_forward_extremities(conn, ROOM)


def redacted_by(conn: sqlite3.Connection, event_id: str) -> str | None:
    return event_store.get_stored_events(conn, [event_id])[event_id].redacted_by


@pytest.mark.parametrize(
    ("redactor", "checked", "applied"),
    [
        (CAROL, False, False),  # another server, below the redact level: not applied
        (BOB, False, True),  # the target's own server
        (ALICE, False, True),  # the redact level
        (CAROL, True, True),  # a local redaction, already checked by the room service
    ],
)
def test_a_redaction_applies_by_the_spec_rule(
    conn: sqlite3.Connection, builder: EventBuilder, redactor: str, checked: bool, applied: bool
) -> None:
    """rooms/fragments/v3-handling-redactions."""
    create_room(conn, builder)
    for user in (BOB, CAROL):
        join, before = send(
            conn, builder, user, "m.room.member", {"membership": "join"}, state_key=user
        )
        persist_event(conn, join, state_before=before)
    target, before = send(conn, builder, BOB, "m.room.message", {"body": "oops"})
    persist_event(conn, target, state_before=before)
    redaction, before = send(
        conn, builder, redactor, "m.room.redaction", {}, redacts=target.event_id
    )
    persist_event(conn, redaction, state_before=before, redaction_checked=checked)
    assert redacted_by(conn, target.event_id) == (redaction.event_id if applied else None)
