-- Remote servers' signing keys (server-server API "Retrieving server keys").
CREATE TABLE server_keys (
    server_name     TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    verify_key      TEXT NOT NULL,        -- unpadded base64 ed25519 public key
    valid_until_ts  INTEGER NOT NULL,     -- capped at fetch time + 7 days (rooms v5+)
    expired_ts      INTEGER,              -- set for old_verify_keys: valid only for events
    fetched_ts      INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
-- The last /_matrix/key/v2/server response per server, as signed by it (for notary answers).
CREATE TABLE server_key_responses (
    server_name     TEXT PRIMARY KEY,
    response_json   TEXT NOT NULL,
    valid_until_ts  INTEGER NOT NULL
);

-- Per-destination retry state, persisted so a restart keeps backing off a dead peer.
CREATE TABLE destinations (
    destination   TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL DEFAULT 0,
    delay_s       REAL NOT NULL DEFAULT 0,
    retry_at_ms   INTEGER NOT NULL DEFAULT 0
);

-- PDUs owed to each destination until it acknowledges a transaction carrying them: the
-- durable outbox that makes catch-up after downtime work.
CREATE TABLE destination_pdus (
    destination      TEXT NOT NULL,
    stream_ordering  INTEGER NOT NULL,
    event_id         TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);

-- Inbound transaction dedupe on (origin, txn_id): a retry gets the first answer.
CREATE TABLE received_transactions (
    origin         TEXT NOT NULL,
    txn_id         TEXT NOT NULL,
    response_json  TEXT NOT NULL,
    received_ts    INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Invites to remote rooms we are not in: the stripped state the inviting server sent.
CREATE TABLE remote_invites (
    room_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    invite_state     TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
