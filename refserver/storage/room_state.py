"""A room's state over stored events: the view to build on, auth closures, and state
resolution (/rooms/v2 §"State resolution") of the states after the DAG's leaves.

Plain sync functions over one connection (run through ``Database.run``), composed by
:mod:`refserver.storage.persist` and the services inside their transactions.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion, get_room_version
from refserver.events.room_view import RoomView, StateMap
from refserver.events.state_res import auth_event_ids, resolve_state
from refserver.storage import events as event_store
from refserver.storage import rooms as room_store

_V = TypeVar("_V")


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
    conn: sqlite3.Connection, room_version: RoomVersion, room_id: str, state_sets: list[StateMap]
) -> StateMap:
    """State resolution over stored events (one set needs no resolving)."""
    unique = [dict(s) for s in {tuple(sorted(s.items())): s for s in state_sets}.values()]
    if len(unique) <= 1:
        return dict(unique[0]) if unique else {}
    events = _EventsOnDemand(conn)
    if event_store.auth_order_is_topological(conn, room_id):
        # The DAG's edges and stream orderings, read as the walks reach them: the walks stop
        # where the state sets' chains meet, however long the room's history.
        dag = _StoredAuthDag(conn, room_version, room_id)
        dag.preload({e for s in unique for e in s.values()})
        return resolve_state(room_version, unique, events, dag.auth_events, dag.order)
    # Orderings out of auth order: the edges of the whole auth closure, read at once (the
    # closure grows with the room's history: every membership change of a member is in the
    # chain of their next one), and events loaded only when the algorithm looks at them.
    ids = {e for s in unique for e in s.values()}
    return resolve_state(room_version, unique, events, load_auth_edges(conn, room_version, ids))


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
        for start in range(0, len(batch), _BATCH):
            chunk = batch[start : start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT event_id, room_id, type, json_extract(pdu_json, '$.auth_events')"
                f" FROM events WHERE event_id IN ({marks})",
                chunk,
            )
            for event_id, room_id, event_type, listed in rows:
                ids = auth_event_ids(room_version, room_id, event_type, _listed_ids(listed))
                key = known.setdefault(event_id, event_id)
                edges[key] = [known.setdefault(a, a) for a in ids]
                todo.extend(a for a in edges[key] if a not in edges)
    return edges


#: Event IDs per ``IN (…)`` query (SQLite allows 32,766 parameters; smaller keeps each
#: statement cheap to prepare).
_BATCH = 500

#: The number of an event of another room: above every event, so an edge to it makes the
#: bounded walks give way to the whole-closure walk.
_FOREIGN = sys.maxsize


class _StoredAuthDag:
    """The auth DAG's edges and a topological numbering (the stream ordering), read from
    the stored PDUs' ``auth_events`` (without decoding the PDUs) when first asked for."""

    def __init__(self, conn: sqlite3.Connection, room_version: RoomVersion, room_id: str) -> None:
        self._conn = conn
        self._room_version = room_version
        self._room_id = room_id
        self._rows: dict[str, tuple[int, list[str]] | None] = {}
        self._unexpanded: list[str] = []  # rows read whose auth events are not read yet
        self.auth_events: Mapping[str, Sequence[str]] = _Column(self, lambda row: row[1])
        self.order: Mapping[str, int] = _Column(self, lambda row: row[0])

    def row(self, event_id: str) -> tuple[int, list[str]] | None:
        if event_id not in self._rows:
            # A miss: read the event and, with it, the auth events of every row read so far
            # whose auth events are not read yet. The walks go down the DAG, so that is what
            # they ask for next; a walk of any shape takes about one query per level, not
            # one per event, and reads at most one level more than it walks.
            cited = [a for e in self._unexpanded if (r := self._rows[e]) for a in r[1]]
            self._unexpanded = []
            self.preload([event_id, *cited])
        return self._rows[event_id]

    def preload(self, event_ids: Iterable[str]) -> None:
        """Read the rows of ``event_ids`` not read yet, ``_BATCH`` to a query."""
        todo = list(dict.fromkeys(e for e in event_ids if e not in self._rows))
        for start in range(0, len(todo), _BATCH):
            self._load(todo[start : start + _BATCH])

    def loaded(self) -> Iterator[str]:
        return (e for e, row in self._rows.items() if row is not None)

    def _load(self, event_ids: list[str]) -> None:
        self._rows.update(dict.fromkeys(event_ids))
        marks = ",".join("?" * len(event_ids))
        cursor = self._conn.cursor()
        cursor.row_factory = None  # plain tuples: thousands of rows per resolution
        rows = cursor.execute(
            "SELECT event_id, stream_ordering, room_id, type,"
            " json_extract(pdu_json, '$.auth_events')"
            f" FROM events WHERE event_id IN ({marks})",
            event_ids,
        )
        for event_id, ordering, room_id, event_type, listed in rows:
            ids = _listed_ids(listed)
            ids = auth_event_ids(self._room_version, room_id, event_type, ids)
            number = ordering if room_id == self._room_id else _FOREIGN
            self._rows[event_id] = (number, ids)
            self._unexpanded.append(event_id)


class _Column(Mapping[str, _V]):
    """One column of a :class:`_StoredAuthDag`, as a mapping by event ID."""

    def __init__(self, dag: _StoredAuthDag, pick: Callable[[tuple[int, list[str]]], _V]) -> None:
        self._dag = dag
        self._pick = pick

    def __getitem__(self, event_id: str) -> _V:
        row = self._dag.row(event_id)
        if row is None:
            raise KeyError(event_id)
        return self._pick(row)

    def __iter__(self) -> Iterator[str]:
        return self._dag.loaded()

    def __len__(self) -> int:
        return sum(1 for _ in self._dag.loaded())


def _listed_ids(listed: str | None) -> list[str]:
    """The event IDs of a stored PDU's ``auth_events`` (as ``json_extract`` gives it)."""
    auth = json.loads(listed) if listed else []
    return [a for a in auth if isinstance(a, str)] if isinstance(auth, list) else []


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
    conn: sqlite3.Connection, room_version: RoomVersion, room_id: str, event_ids: Iterable[str]
) -> StateMap | None:
    """The resolved state after ``event_ids`` (a new event's state before it), or None if
    the state after any of them is unknown."""
    sets = []
    for event_id in event_ids:
        state = event_store.get_state_after(conn, event_id)
        if state is None:
            return None
        sets.append(state)
    return resolve_states(conn, room_version, room_id, sets)


def recompute_current_state(
    conn: sqlite3.Connection, room_id: str, room_version: RoomVersion
) -> None:
    """Current state = the resolution of the states after every forward extremity."""
    extremities = event_store.get_forward_extremities(conn, room_id)
    state = state_after_events(conn, room_version, room_id, extremities)
    if state is not None:
        room_store.set_current_state(conn, room_id, state)
