"""A room's state over stored events: the view to build on, auth closures, and state
resolution (/rooms/v2 §"State resolution") of the states after the DAG's leaves.

Plain sync functions over one connection (run through ``Database.run``), composed by
:mod:`refserver.storage.persist` and the services inside their transactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence

from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion, get_room_version
from refserver.events.room_view import RoomView, StateMap
from refserver.events.state_res import (
    AuthGraph,
    StateResolutionError,
    auth_event_ids,
    resolve_state,
)
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
    # The auth chains grow with the room's history (every membership change of a member is
    # in the chain of their next one); the events resolution reads do not. So the database
    # walks the chains and events are loaded when the algorithm looks at them.
    events = _EventsOnDemand(conn)
    return resolve_state(room_version, unique, events, StoredAuthGraph(conn, room_version, events))


def _chain_cte(name: str, count: int) -> str:
    """``name(id)``: the auth chain of ``count`` events given as parameters, walked by
    SQLite over the stored PDUs' ``auth_events`` (the create event implied in v12 is not
    listed, so not included)."""
    marks = ",".join("?" * count)
    return (
        f"{name}(id) AS ("
        " SELECT j.value FROM events e, json_each(e.pdu_json, '$.auth_events') j"
        f" WHERE e.event_id IN ({marks}) AND j.type = 'text'"
        f" UNION SELECT j.value FROM {name} c JOIN events e ON e.event_id = c.id,"
        " json_each(e.pdu_json, '$.auth_events') j WHERE j.type = 'text')"
    )


class StoredAuthGraph(AuthGraph):
    """The auth DAG of a room's stored events, as state resolution asks about it.

    The two questions about whole auth chains, the auth difference and the conflicted state
    subgraph, are answered by SQLite (recursive queries over ``auth_events``), so only their
    answers, not the chains, become Python objects; single events' auth events are read when
    asked for (the power events' chains). Events we do not hold end a chain.
    """

    def __init__(
        self, conn: sqlite3.Connection, room_version: RoomVersion, events: Mapping[str, Event]
    ) -> None:
        super().__init__(events)
        self._conn = conn
        self._room_version = room_version
        self._auth: dict[str, list[str]] = {}

    def auth_ids(self, event_id: str) -> Sequence[str]:
        if event_id not in self._auth:
            row = self._conn.execute(
                "SELECT room_id, type, json_extract(pdu_json, '$.auth_events') FROM events"
                " WHERE event_id = ?",
                (event_id,),
            ).fetchone()
            if row is None:
                raise StateResolutionError(f"event {event_id} is not stored")
            listed = json.loads(row[2]) if row[2] else []
            ids = [a for a in listed if isinstance(a, str)] if isinstance(listed, list) else []
            self._auth[event_id] = auth_event_ids(self._room_version, row[0], row[1], ids)
        return self._auth[event_id]

    def _implied_create(self, event_ids: Iterable[str]) -> str | None:
        """In v12, the create event in the auth chain of every other event (MSC4291), if
        one of ``event_ids`` is another event; else None."""
        if not self._room_version.room_id_is_create_event_hash:
            return None
        for event_id in event_ids:
            row = self._conn.execute(
                "SELECT room_id FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is not None and event_id != "$" + str(row[0])[1:]:
                return "$" + str(row[0])[1:]
        return None

    def auth_difference(self, state_sets: Sequence[Mapping[tuple[str, str], str]]) -> set[str]:
        sets = [sorted(set(state.values())) for state in state_sets]
        ctes = ", ".join(_chain_cte(f"c{n}", len(ids)) for n, ids in enumerate(sets))
        union = " UNION ".join(f"SELECT id FROM c{n}" for n in range(len(sets)))
        inter = " INTERSECT ".join(f"SELECT id FROM c{n}" for n in range(len(sets)))
        rows = self._conn.execute(
            f"WITH RECURSIVE {ctes}, inter(id) AS ({inter}) {union} EXCEPT SELECT id FROM inter",
            [e for ids in sets for e in ids],
        )
        difference = {row[0] for row in rows}
        # The implied create event is in the chain of every set holding another event.
        creates = [self._implied_create(ids) for ids in sets]
        held = [c for c in creates if c is not None]
        if held and len(held) < len(creates):
            difference.add(held[0])
        return difference

    def conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        ids = sorted(conflicted)
        if self._implied_create(ids) in conflicted:
            # Every event descends from the create event through its implied link, which
            # SQLite does not see; never the case in practice (all states hold the same one).
            return super().conflicted_subgraph(conflicted)
        listed = json.dumps(ids)
        rows = self._conn.execute(
            f"WITH RECURSIVE {_chain_cte('below', len(ids))},"
            " nodes(id) AS MATERIALIZED"
            " (SELECT id FROM below UNION SELECT value FROM json_each(?)),"
            " edge(child, parent) AS MATERIALIZED (SELECT n.id, j.value FROM nodes n"
            " JOIN events e ON e.event_id = n.id, json_each(e.pdu_json, '$.auth_events') j"
            " WHERE j.type = 'text'),"
            " up(id) AS (SELECT value FROM json_each(?)"
            " UNION SELECT edge.child FROM edge JOIN up ON edge.parent = up.id)"
            " SELECT id FROM up WHERE id IN (SELECT id FROM below)",
            [*ids, listed, listed],
        )
        return conflicted | {row[0] for row in rows}


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
