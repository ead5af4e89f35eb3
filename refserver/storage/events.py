"""Events, state snapshots, forward extremities (server-server API "PDUs", "Room State").

State is kept as snapshots: every state event gets a state group holding the complete
state after it; every event records the groups before and after it. Rooms here are small
(a reference server on a laptop), so whole-map snapshots keep the code obvious.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.events.model import Event
from refserver.events.room_versions import get_room_version
from refserver.events.state_res import auth_event_ids

#: ``(type, state_key) → event_id``.
StateMap = dict[tuple[str, str], str]


@dataclass(frozen=True)
class StoredEvent:
    event: Event
    stream_ordering: int
    soft_failed: bool
    outlier: bool
    redacted_by: str | None


def _encode_state(state: Mapping[tuple[str, str], str]) -> str:
    return json.dumps({f"{t}\x00{k}": e for (t, k), e in sorted(state.items())})


def _decode_state(text: str) -> StateMap:
    out: StateMap = {}
    for key, event_id in json.loads(text).items():
        t, _, k = key.partition("\x00")
        out[(t, k)] = event_id
    return out


def _row_to_stored(row: sqlite3.Row) -> StoredEvent:
    rv = get_room_version(row["room_version"])
    event = Event(row["event_id"], rv, json.loads(row["pdu_json"]), rejected=bool(row["rejected"]))
    return StoredEvent(
        event=event,
        stream_ordering=row["stream_ordering"],
        soft_failed=bool(row["soft_failed"]),
        outlier=bool(row["outlier"]),
        redacted_by=row["redacted_by"],
    )


_SELECT = (
    "SELECT e.stream_ordering, e.event_id, e.pdu_json, e.rejected, e.soft_failed, e.outlier,"
    " e.redacted_by, r.room_version FROM events e JOIN rooms r USING (room_id)"
)


def get_stored_events(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
    ids = list(dict.fromkeys(event_ids))
    out: dict[str, StoredEvent] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{_SELECT} WHERE e.event_id IN ({marks})", chunk):
            out[row["event_id"]] = _row_to_stored(row)
    return out


def get_events(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, Event]:
    return {eid: s.event for eid, s in get_stored_events(conn, event_ids).items()}


def have_events(conn: sqlite3.Connection, event_ids: Iterable[str]) -> set[str]:
    return set(get_stored_events(conn, event_ids))


def insert_state_group(
    conn: sqlite3.Connection, room_id: str, state: Mapping[tuple[str, str], str]
) -> int:
    cur = conn.execute(
        "INSERT INTO state_groups (room_id, state_json) VALUES (?, ?)",
        (room_id, _encode_state(state)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def get_state_group(conn: sqlite3.Connection, state_group: int) -> StateMap:
    row = conn.execute(
        "SELECT state_json FROM state_groups WHERE state_group = ?", (state_group,)
    ).fetchone()
    return _decode_state(row["state_json"])


def _event_state_groups(conn: sqlite3.Connection, event_id: str) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT state_group_before, state_group_after FROM event_state WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def get_state_before(conn: sqlite3.Connection, event_id: str) -> StateMap | None:
    groups = _event_state_groups(conn, event_id)
    return None if groups is None else get_state_group(conn, groups[0])


def get_state_after(conn: sqlite3.Connection, event_id: str) -> StateMap | None:
    groups = _event_state_groups(conn, event_id)
    return None if groups is None else get_state_group(conn, groups[1])


def _state_group_for(
    conn: sqlite3.Connection, room_id: str, state: StateMap, candidates: Iterable[str]
) -> int:
    """Reuse the after-group of a prev_event when it holds exactly ``state``."""
    for event_id in candidates:
        groups = _event_state_groups(conn, event_id)
        if groups is not None and get_state_group(conn, groups[1]) == state:
            return groups[1]
    return insert_state_group(conn, room_id, state)


def insert_event(
    conn: sqlite3.Connection,
    event: Event,
    *,
    state_before: StateMap | None,
    soft_failed: bool = False,
    outlier: bool = False,
) -> int:
    """Store ``event``; with ``state_before`` also record its place in the room's state.

    Outliers (events known only as part of an auth chain or a send_join response) carry no
    state. Returns the stream ordering.
    """
    pdu = event.pdu
    cur = conn.execute(
        "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
        " pdu_json, rejected, soft_failed, outlier) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            event.event_id,
            event.room_id,
            event.type,
            event.state_key,
            event.sender,
            event.depth,
            event.origin_server_ts,
            encode_canonical_json(pdu).decode(),
            int(event.rejected),
            int(soft_failed),
            int(outlier),
        ),
    )
    assert cur.lastrowid is not None
    _note_auth_order(conn, event)
    if state_before is not None:
        before = _state_group_for(conn, event.room_id, state_before, event.prev_event_ids)
        after = before
        if event.is_state and not event.rejected:
            state_after = dict(state_before)
            state_after[event.state_tuple()] = event.event_id
            after = insert_state_group(conn, event.room_id, state_after)
        conn.execute(
            "INSERT INTO event_state (event_id, state_group_before, state_group_after)"
            " VALUES (?,?,?)",
            (event.event_id, before, after),
        )
    return cur.lastrowid


def _note_auth_order(conn: sqlite3.Connection, event: Event) -> None:
    """Flag the room if ``event`` cites an auth event not stored yet: that one will be
    stored with a higher stream ordering, so the room's orderings are no longer a
    topological numbering of its auth DAG (what bounded state resolution relies on)."""
    cited = set(auth_event_ids(event.room_version, event.room_id, event.type, event.auth_event_ids))
    if not cited:
        return
    marks = ",".join("?" * len(cited))
    (stored,) = conn.execute(
        f"SELECT COUNT(*) FROM events WHERE event_id IN ({marks})", list(cited)
    ).fetchone()
    if stored < len(cited):
        conn.execute(
            "INSERT OR IGNORE INTO rooms_auth_unordered (room_id) VALUES (?)", (event.room_id,)
        )


def auth_order_is_topological(conn: sqlite3.Connection, room_id: str) -> bool:
    """Whether every event of the room was stored after all its auth events."""
    row = conn.execute("SELECT 1 FROM rooms_auth_unordered WHERE room_id = ?", (room_id,))
    return row.fetchone() is None


def mark_redacted(conn: sqlite3.Connection, event_id: str, redaction_id: str) -> None:
    conn.execute(
        "UPDATE events SET redacted_by = ? WHERE event_id = ? AND redacted_by IS NULL",
        (redaction_id, event_id),
    )


def get_forward_extremities(conn: sqlite3.Connection, room_id: str) -> list[str]:
    rows = conn.execute("SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,))
    return [row[0] for row in rows]


def update_forward_extremities(conn: sqlite3.Connection, event: Event) -> None:
    """The new event replaces its prev_events as a leaf of the DAG."""
    conn.executemany(
        "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
        [(event.room_id, p) for p in event.prev_event_ids],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO event_edges (event_id, prev_event_id) VALUES (?, ?)",
        [(event.event_id, p) for p in event.prev_event_ids],
    )
    # An event that already has a child (we received it late) is not a leaf.
    has_child = conn.execute(
        "SELECT 1 FROM event_edges WHERE prev_event_id = ? LIMIT 1", (event.event_id,)
    ).fetchone()
    if has_child is None:
        conn.execute(
            "INSERT OR IGNORE INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
            (event.room_id, event.event_id),
        )


def max_stream_ordering(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(stream_ordering) FROM events").fetchone()
    return int(row[0] or 0)


def get_room_events(
    conn: sqlite3.Connection,
    room_id: str,
    *,
    after: int,
    upto: int,
    limit: int,
    newest_first: bool,
) -> list[StoredEvent]:
    """Non-outlier, non-rejected events with ``after < stream_ordering <= upto``."""
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"{_SELECT} WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
        f" AND e.outlier = 0 AND e.rejected = 0 ORDER BY e.stream_ordering {order} LIMIT ?",
        (room_id, after, upto, limit),
    )
    return [_row_to_stored(row) for row in rows]


@dataclass(frozen=True)
class MemberChange:
    """An ``m.room.member`` event in a room's timeline: ``user_id`` is its state_key."""

    room_id: str
    user_id: str
    membership: str
    event_id: str
    stream_ordering: int


def member_changes_since(
    conn: sqlite3.Connection, room_ids: Iterable[str], *, after: int, upto: int
) -> list[MemberChange]:
    """Member events in ``rooms`` with after < ordering ≤ upto, oldest first (outliers, which
    have no place in the timeline, and rejected events excluded)."""
    rooms = list(dict.fromkeys(room_ids))
    out: list[MemberChange] = []
    for start in range(0, len(rooms), 500):
        chunk = rooms[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT room_id, state_key, json_extract(pdu_json, '$.content.membership'),"
            " event_id, stream_ordering FROM events"
            f" WHERE type = 'm.room.member' AND room_id IN ({marks}) AND stream_ordering > ?"
            " AND stream_ordering <= ? AND rejected = 0 AND outlier = 0",
            (*chunk, after, upto),
        )
        out.extend(MemberChange(*r) for r in rows if isinstance(r[2], str))
    out.sort(key=lambda c: c.stream_ordering)
    return out


def membership_before(conn: sqlite3.Connection, event_id: str, user_id: str) -> str | None:
    """``user_id``'s membership in the room state before ``event_id`` (server-server API
    "Room State"); None if there was no member event for them or ``event_id`` has no state."""
    state = get_state_before(conn, event_id)
    previous_id = None if state is None else state.get(("m.room.member", user_id))
    if previous_id is None:
        return None
    row = conn.execute(
        "SELECT json_extract(pdu_json, '$.content.membership') FROM events WHERE event_id = ?",
        (previous_id,),
    ).fetchone()
    return row[0] if row is not None and isinstance(row[0], str) else None
