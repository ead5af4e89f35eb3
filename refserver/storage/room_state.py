"""A room's state over stored events: the view to build on, auth closures, and state
resolution (/rooms/v2 §"State resolution") of the states after the DAG's leaves.

Plain sync functions over one connection (run through ``Database.run``), composed by
:mod:`refserver.storage.persist` and the services inside their transactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping

from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion, get_room_version
from refserver.events.room_view import RoomView, StateMap
from refserver.events.state_res import auth_event_ids, resolve_state
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store


def load_view(conn: sqlite3.Connection, room_id: str) -> RoomView | None:
    rv_id = room_store.get_room_version_id(conn, room_id)
    if rv_id is None:
        return None
    state = room_store.get_current_state(conn, room_id)
    prev_events = event_store.get_forward_extremities(conn, room_id)
    events = event_store.get_events(conn, [*state.values(), *prev_events])
    return RoomView(
        room_version=get_room_version(rv_id),
        room_id=room_id,
        state=state,
        events=events,
        prev_events=sorted(prev_events),
        prev_depth=max((events[e].depth for e in prev_events if e in events), default=0),
    )


def load_auth_closure(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, Event]:
    """``event_ids`` and their full auth chains, as far as we hold them."""
    found: dict[str, Event] = {}
    todo = list(event_ids)
    while todo:
        batch = [e for e in dict.fromkeys(todo) if e not in found]
        todo = []
        for event_id, event in event_store.get_events(conn, batch).items():
            found[event_id] = event
            todo.extend(a for a in event.auth_event_ids if a not in found)
    return found


def resolve_states(
    conn: sqlite3.Connection, room_version: RoomVersion, state_sets: list[StateMap]
) -> StateMap:
    """State resolution over stored events (one set needs no resolving)."""
    unique = [dict(s) for s in {tuple(sorted(s.items())): s for s in state_sets}.values()]
    if len(unique) <= 1:
        return dict(unique[0]) if unique else {}
    ids = {e for s in unique for e in s.values()}
    # The DAG's edges only, and events loaded when the algorithm looks at them: the full
    # auth closure grows with the room's history (every membership change of a member is in
    # the chain of their next one), the events resolution reads do not.
    return resolve_state(
        room_version, unique, _EventsOnDemand(conn), load_auth_edges(conn, room_version, ids)
    )


def load_auth_edges(
    conn: sqlite3.Connection, room_version: RoomVersion, event_ids: Iterable[str]
) -> dict[str, list[str]]:
    """``event_ids`` and their full auth chains (as far as we hold them), each with its
    auth event IDs as state resolution walks them; read from the stored PDUs' ``auth_events``
    without decoding the PDUs."""
    edges: dict[str, list[str]] = {}
    # One string object per event ID, however many events cite it: the walk holds the
    # whole closure at once, so its size is what a resolution costs in memory.
    known: dict[str, str] = {}
    todo = list(event_ids)
    while todo:
        batch = [e for e in dict.fromkeys(todo) if e not in edges]
        todo = []
        for start in range(0, len(batch), 500):
            chunk = batch[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT event_id, room_id, type, json_extract(pdu_json, '$.auth_events')"
                f" FROM events WHERE event_id IN ({marks})",
                chunk,
            )
            for event_id, room_id, event_type, listed in rows:
                auth = json.loads(listed) if listed else []
                ids = [a for a in auth if isinstance(a, str)] if isinstance(auth, list) else []
                ids = auth_event_ids(room_version, room_id, event_type, ids)
                key = known.setdefault(event_id, event_id)
                edges[key] = [known.setdefault(a, a) for a in ids]
                todo.extend(a for a in edges[key] if a not in edges)
    return edges


class _EventsOnDemand(Mapping[str, Event]):
    """Stored events by ID, each read from the database when first asked for."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._loaded: dict[str, Event | None] = {}

    def __getitem__(self, event_id: str) -> Event:
        if event_id not in self._loaded:
            self._loaded[event_id] = event_store.get_events(self._conn, [event_id]).get(event_id)
        event = self._loaded[event_id]
        if event is None:
            raise KeyError(event_id)
        return event

    def __iter__(self) -> Iterator[str]:
        return (e for e, event in self._loaded.items() if event is not None)

    def __len__(self) -> int:
        return sum(1 for event in self._loaded.values() if event is not None)


def state_after_events(
    conn: sqlite3.Connection, room_version: RoomVersion, event_ids: Iterable[str]
) -> StateMap | None:
    """The resolved state after ``event_ids`` (a new event's state before it), or None if
    the state after any of them is unknown."""
    sets = []
    for event_id in event_ids:
        state = event_store.get_state_after(conn, event_id)
        if state is None:
            return None
        sets.append(state)
    return resolve_states(conn, room_version, sets)


def recompute_current_state(
    conn: sqlite3.Connection, room_id: str, room_version: RoomVersion
) -> None:
    """Current state = the resolution of the states after every forward extremity."""
    extremities = event_store.get_forward_extremities(conn, room_id)
    state = state_after_events(conn, room_version, extremities)
    if state is not None:
        room_store.set_current_state(conn, room_id, state)
