"""Persisting one event, local or received, in one transaction: the event with its state,
the redaction it applies, the room's leaves and current state, and the servers owed it.

This is the only place events enter the room DAG. Local events (the room service) and
received ones (the federation handler, our joins through other servers) all come through
:func:`persist_event`, which returns what happened as a :class:`Persisted`; the caller
tells listeners after the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from refserver.events.model import MEMBER, Event
from refserver.events.power_levels import get_named_level, get_user_power_level
from refserver.events.room_view import RoomView, StateMap
from refserver.ids import server_name_of
from refserver.storage import events as event_store
from refserver.storage import federation as fed_store
from refserver.storage import rooms as room_store
from refserver.storage.room_state import recompute_current_state


@dataclass(frozen=True)
class MembershipChange:
    """An ``m.room.member`` event's effect: the target's membership before and after it."""

    user_id: str
    before: str | None  # None: no member event for them in the state before
    after: str


@dataclass(frozen=True)
class Persisted:
    """What persisting one event did."""

    event: Event
    stream_ordering: int
    #: Owed to the room's servers: recorded in the same transaction (``pdu_fanout``);
    #: :func:`expand_owed` writes the per-server outbox rows.
    owed: bool = False
    #: Set for an accepted ``m.room.member`` event.
    membership: MembershipChange | None = None
    soft_failed: bool = False
    rejected: bool = False

    @property
    def accepted(self) -> bool:
        """Part of the room's current state and timeline (not rejected, not soft-failed)."""
        return not (self.rejected or self.soft_failed)


def persist_event(
    conn: sqlite3.Connection,
    event: Event,
    *,
    state_before: StateMap | None,
    soft_failed: bool = False,
    redaction_checked: bool = False,
    owe_except: Collection[str] | None = None,
) -> Persisted:
    """Store ``event`` (``event.rejected`` says whether it failed the auth rules) with the
    state before it; for an accepted event also:

    - make it a leaf of the DAG and recompute the room's current state from the leaves;
    - apply it when it is a redaction (:func:`apply_redaction`);
    - owe it to every server of the room except ``owe_except`` (None: owe nobody), in this
      transaction, so a crash cannot keep the event and lose the fact that others are owed it
      (one ``pdu_fanout`` row; :func:`expand_owed` names the servers).
    """
    ordering = event_store.insert_event(
        conn, event, state_before=state_before, soft_failed=soft_failed
    )
    persisted = Persisted(event, ordering, soft_failed=soft_failed, rejected=event.rejected)
    if not persisted.accepted:
        return persisted
    event_store.update_forward_extremities(conn, event)
    recompute_current_state(conn, event.room_id, event.room_version)
    apply_redaction(conn, event, state_before or {}, checked=redaction_checked)
    if owe_except is not None:
        fed_store.owe_to_room(conn, ordering, event.event_id, list(owe_except))
    return Persisted(
        event,
        ordering,
        owed=owe_except is not None,
        membership=_membership_change(conn, event, state_before or {}),
    )


def expand_owed(conn: sqlite3.Connection) -> list[tuple[Event, tuple[str, ...]]]:
    """Turn every owed event (``pdu_fanout``) into outbox rows, oldest first: one per server
    with a user joined to the room now, plus a member event's target's server, except the
    recorded ones. Returns each event with the servers it is now owed to.

    Kept out of :func:`persist_event` so that storing an event costs the same whether its
    room spans 10 servers or 10,000: the sender calls this after the request is answered.
    """
    owed = fed_store.take_fanout(conn)
    events = event_store.get_events(conn, [event_id for _, event_id, _ in owed])
    out: list[tuple[Event, tuple[str, ...]]] = []
    for ordering, event_id, except_servers in owed:
        event = events.get(event_id)
        if event is None:
            continue
        servers = room_store.room_destinations(conn, event) - set(except_servers)
        destinations = tuple(sorted(servers))
        fed_store.enqueue_pdu(conn, list(destinations), ordering, event_id)
        out.append((event, destinations))
    return out


def persist_built(
    conn: sqlite3.Connection,
    view: RoomView,
    *,
    state_before_first: StateMap,
    txn: tuple[str, str, str] | None = None,
    new_room: bool = False,
    now_ms: int = 0,
    owe_except: Collection[str] | None = None,
) -> list[Persisted]:
    """Store the local events ``view.built`` in order, each with the state before it.

    ``txn`` = (user_id, device_id, txn_id) of the last event. Local redactions were checked
    by the room service (the sender may redact the target), so they apply as they are.
    """
    assert view.room_id is not None
    if new_room:
        room_store.insert_room(conn, view.room_id, view.room_version.identifier, now_ms)
    state = dict(state_before_first)
    out: list[Persisted] = []
    for event in view.built:
        out.append(
            persist_event(
                conn, event, state_before=state, redaction_checked=True, owe_except=owe_except
            )
        )
        if event.is_state:
            state = {**state, event.state_tuple(): event.event_id}
    if txn is not None and view.built:
        room_store.record_txn_id(conn, *txn, view.built[-1].event_id)
    return out


def apply_redaction(
    conn: sqlite3.Connection, event: Event, state_before: StateMap, *, checked: bool
) -> None:
    """rooms/fragments/v3-handling-redactions: redact the target when we hold it in the same
    room and the redaction is allowed: ``checked`` (a local redaction, checked by the room
    service before it was sent), or the sender has the room's ``redact`` power level in the
    state before the redaction, or is on the same server as the target's sender."""
    if event.type != "m.room.redaction" or not event.redacts:
        return
    target = event_store.get_events(conn, [event.redacts]).get(event.redacts)
    if target is None or target.room_id != event.room_id:
        return
    if not checked and server_name_of(target.sender) != server_name_of(event.sender):
        state_events = state_events_of(conn, state_before)
        power = get_user_power_level(event.sender, state_events, event.room_version)
        if power < get_named_level(state_events, "redact"):
            return
    event_store.mark_redacted(conn, event.redacts, event.event_id)


def state_events_of(conn: sqlite3.Connection, state: StateMap) -> dict[tuple[str, str], Event]:
    """The events of ``state`` that we hold, by state key."""
    events = event_store.get_events(conn, state.values())
    return {key: events[eid] for key, eid in state.items() if eid in events}


def _membership_change(
    conn: sqlite3.Connection, event: Event, state_before: StateMap
) -> MembershipChange | None:
    if event.type != MEMBER or event.state_key is None or event.membership is None:
        return None
    previous_id = state_before.get((MEMBER, event.state_key))
    previous = event_store.get_events(conn, [previous_id]).get(previous_id) if previous_id else None
    return MembershipChange(
        event.state_key, None if previous is None else previous.membership, event.membership
    )
