"""Federation state: server keys, destination back-off, the PDU outbox, inbound txn dedupe."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredKey:
    server_name: str
    key_id: str
    verify_key: str
    valid_until_ts: int
    expired_ts: int | None


def store_server_keys(
    conn: sqlite3.Connection,
    server_name: str,
    keys: list[StoredKey],
    response_json: str,
    valid_until_ts: int,
    now_ms: int,
) -> None:
    for k in keys:
        conn.execute(
            "INSERT INTO server_keys"
            " (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (server_name, key_id) DO UPDATE SET"
            " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
            " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts",
            (server_name, k.key_id, k.verify_key, k.valid_until_ts, k.expired_ts, now_ms),
        )
    conn.execute(
        "INSERT INTO server_key_responses (server_name, response_json, valid_until_ts)"
        " VALUES (?,?,?)"
        " ON CONFLICT (server_name) DO UPDATE SET response_json = excluded.response_json,"
        " valid_until_ts = excluded.valid_until_ts",
        (server_name, response_json, valid_until_ts),
    )


def get_server_key(conn: sqlite3.Connection, server_name: str, key_id: str) -> StoredKey | None:
    row = conn.execute(
        "SELECT server_name, key_id, verify_key, valid_until_ts, expired_ts FROM server_keys"
        " WHERE server_name = ? AND key_id = ?",
        (server_name, key_id),
    ).fetchone()
    return None if row is None else StoredKey(*row)


def get_key_response(conn: sqlite3.Connection, server_name: str) -> tuple[str, int] | None:
    row = conn.execute(
        "SELECT response_json, valid_until_ts FROM server_key_responses WHERE server_name = ?",
        (server_name,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


# -- destinations ----------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationState:
    failures: int
    delay_s: float
    retry_at_ms: int


def get_destination(conn: sqlite3.Connection, destination: str) -> DestinationState:
    row = conn.execute(
        "SELECT failures, delay_s, retry_at_ms FROM destinations WHERE destination = ?",
        (destination,),
    ).fetchone()
    return DestinationState(0, 0.0, 0) if row is None else DestinationState(*row)


def set_destination(conn: sqlite3.Connection, destination: str, state: DestinationState) -> None:
    conn.execute(
        "INSERT INTO destinations (destination, failures, delay_s, retry_at_ms) VALUES (?,?,?,?)"
        " ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures,"
        " delay_s = excluded.delay_s, retry_at_ms = excluded.retry_at_ms",
        (destination, state.failures, state.delay_s, state.retry_at_ms),
    )


# -- outbox ------------------------------------------------------------------------------


def enqueue_pdu(
    conn: sqlite3.Connection, destinations: list[str], stream_ordering: int, event_id: str
) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO destination_pdus (destination, stream_ordering, event_id)"
        " VALUES (?,?,?)",
        [(d, stream_ordering, event_id) for d in destinations],
    )


def owe_to_room(
    conn: sqlite3.Connection, stream_ordering: int, event_id: str, except_servers: list[str]
) -> None:
    """Record that an event is owed to its room's servers except ``except_servers``: one row
    now, expanded later by :func:`take_fanout` and :func:`enqueue_pdu`."""
    conn.execute(
        "INSERT OR IGNORE INTO pdu_fanout (stream_ordering, event_id, except_servers)"
        " VALUES (?,?,?)",
        (stream_ordering, event_id, json.dumps(sorted(except_servers))),
    )


def take_fanout(conn: sqlite3.Connection) -> list[tuple[int, str, list[str]]]:
    """Every owed event not yet expanded, oldest first, removed from ``pdu_fanout`` (the
    caller writes their outbox rows in the same transaction)."""
    rows = conn.execute(
        "SELECT stream_ordering, event_id, except_servers FROM pdu_fanout ORDER BY stream_ordering"
    ).fetchall()
    if rows:
        conn.execute("DELETE FROM pdu_fanout WHERE stream_ordering <= ?", (rows[-1][0],))
    return [(row[0], row[1], json.loads(row[2])) for row in rows]


def pending_pdus(conn: sqlite3.Connection, destination: str, limit: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT stream_ordering, event_id FROM destination_pdus WHERE destination = ?"
        " ORDER BY stream_ordering LIMIT ?",
        (destination, limit),
    )
    return [(row[0], row[1]) for row in rows]


def ack_pdus(conn: sqlite3.Connection, destination: str, orderings: list[int]) -> None:
    """Clear exactly the PDUs a transaction carried (one enqueued meanwhile with a lower
    ordering must stay)."""
    conn.executemany(
        "DELETE FROM destination_pdus WHERE destination = ? AND stream_ordering = ?",
        [(destination, o) for o in orderings],
    )


def destinations_with_pending_pdus(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT DISTINCT destination FROM destination_pdus")]


# -- inbound transactions ----------------------------------------------------------------


def get_received_transaction(
    conn: sqlite3.Connection, origin: str, txn_id: str
) -> dict[str, object] | None:
    row = conn.execute(
        "SELECT response_json FROM received_transactions WHERE origin = ? AND txn_id = ?",
        (origin, txn_id),
    ).fetchone()
    return None if row is None else json.loads(row[0])


def store_received_transaction(
    conn: sqlite3.Connection, origin: str, txn_id: str, response: dict[str, object], now_ms: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO received_transactions (origin, txn_id, response_json, received_ts)"
        " VALUES (?,?,?,?)",
        (origin, txn_id, json.dumps(response), now_ms),
    )


# -- remote invites --------------------------------------------------------------------------


def store_remote_invite(
    conn: sqlite3.Connection,
    room_id: str,
    user_id: str,
    event_id: str,
    invite_state: list[dict[str, object]],
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO remote_invites (room_id, user_id, event_id, invite_state)"
        " VALUES (?,?,?,?)",
        (room_id, user_id, event_id, json.dumps(invite_state)),
    )


def get_remote_invite_state(
    conn: sqlite3.Connection, room_id: str, user_id: str
) -> list[dict[str, object]] | None:
    row = conn.execute(
        "SELECT invite_state FROM remote_invites WHERE room_id = ? AND user_id = ?",
        (room_id, user_id),
    ).fetchone()
    return None if row is None else json.loads(row[0])
