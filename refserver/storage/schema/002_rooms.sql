-- Rooms, events and state (room versions 10–12).
CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    created_ts    INTEGER NOT NULL,
    is_public     INTEGER NOT NULL DEFAULT 0       -- published in the room directory
);

-- Every PDU we hold. stream_ordering is the local arrival order: /sync and /messages
-- tokens are positions in it.
CREATE TABLE events (
    stream_ordering  INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT,                         -- NULL for non-state events
    sender           TEXT NOT NULL,
    depth            INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    pdu_json         TEXT NOT NULL,                -- the PDU as signed (canonical JSON)
    rejected         INTEGER NOT NULL DEFAULT 0,   -- failed auth: never served, never a prev_event
    soft_failed      INTEGER NOT NULL DEFAULT 0,   -- stored, not sent to clients, not a prev_event
    outlier          INTEGER NOT NULL DEFAULT 0,   -- known without its place in the DAG (auth chains)
    redacted_by      TEXT                          -- event ID of an applied redaction
);
CREATE INDEX events_room_order ON events(room_id, stream_ordering);

-- State snapshots. Each state event gets a group holding the complete state after it;
-- any event's state_group_before points at the state before it.
CREATE TABLE state_groups (
    state_group  INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id      TEXT NOT NULL,
    state_json   TEXT NOT NULL                     -- {"type\u0000state_key": event_id}
);
CREATE TABLE event_state (
    event_id            TEXT PRIMARY KEY,
    state_group_before  INTEGER NOT NULL REFERENCES state_groups(state_group),
    state_group_after   INTEGER NOT NULL REFERENCES state_groups(state_group)
);

-- Events in the room DAG with no children yet: the prev_events of the next event.
CREATE TABLE forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Current membership per user, kept in step with current_state. The set of servers with a
-- joined user is the federation sender's destination source.
CREATE TABLE room_memberships (
    room_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    server_name      TEXT NOT NULL,
    membership       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    stream_ordering  INTEGER NOT NULL,
    forgotten        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships(user_id, membership);
CREATE INDEX room_memberships_server ON room_memberships(room_id, server_name, membership);

-- Client transaction IDs: PUT /send/{type}/{txnId} is idempotent per device.
CREATE TABLE event_txn_ids (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX event_txn_ids_event ON event_txn_ids(event_id);

CREATE TABLE room_aliases (
    room_alias  TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    creator     TEXT NOT NULL
);

-- DAG edges of non-outlier events (event → each of its prev_events).
CREATE TABLE event_edges (
    event_id       TEXT NOT NULL,
    prev_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges(prev_event_id);
