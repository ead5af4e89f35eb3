-- Accounts, devices, access tokens (CS API "Account registration", "Login").
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    localpart      TEXT NOT NULL UNIQUE,
    password_hash  TEXT,               -- argon2id; NULL = no password login
    created_ts     INTEGER NOT NULL,
    deactivated    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE devices (
    user_id       TEXT NOT NULL REFERENCES users(user_id),
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    created_ts    INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as sha256 digests: a leaked database does not leak sessions.
CREATE TABLE access_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    device_id   TEXT NOT NULL,
    created_ts  INTEGER NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens(user_id, device_id);

-- Current profile of local users, one row per field (Matrix 1.16 extended profiles).
CREATE TABLE profiles (
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    field       TEXT NOT NULL,
    value_json  TEXT NOT NULL,          -- canonical JSON of the value
    stream_pos  INTEGER NOT NULL,       -- position of the write in profile_stream
    PRIMARY KEY (user_id, field)
);

-- Every profile write, in order. /sync (MSC4429) and the federation sender (MSC4259)
-- consume this stream; value_json NULL means the field was removed.
CREATE TABLE profile_stream (
    stream_pos  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL,
    field       TEXT NOT NULL,
    value_json  TEXT,
    ts          INTEGER NOT NULL
);
CREATE INDEX profile_stream_user ON profile_stream(user_id, stream_pos);
