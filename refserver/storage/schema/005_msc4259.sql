-- MSC4259 sending side: "(destination, user, field) is dirty". The value itself is read from
-- the profile when the EDU is built, so only the latest value is ever sent. A row is removed
-- only when a transaction carrying a value at least as new as stream_pos got 200.
CREATE TABLE profile_edu_dirty (
    destination      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    field            TEXT NOT NULL,
    first_change_ms  INTEGER NOT NULL,
    last_change_ms   INTEGER NOT NULL,
    stream_pos       INTEGER NOT NULL,
    PRIMARY KEY (destination, user_id, field)
);
-- When an EDU about (user, field) last went to a destination: the per-field rate limit.
CREATE TABLE profile_edu_sent (
    destination   TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    field         TEXT NOT NULL,
    last_sent_ms  INTEGER NOT NULL,
    PRIMARY KEY (destination, user_id, field)
);

-- MSC4259 receiving side: the cached profiles of remote users (from EDUs and queries).
CREATE TABLE remote_profiles (
    user_id     TEXT NOT NULL,
    field       TEXT NOT NULL,
    value_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);
CREATE TABLE remote_profile_meta (
    user_id     TEXT PRIMARY KEY,
    fetched_ms  INTEGER NOT NULL,   -- last full query/profile answer (0: never queried)
    updated_ms  INTEGER NOT NULL,   -- last change from any source
    complete    INTEGER NOT NULL    -- 1: the cache holds the whole profile (after a query)
);
-- Servers that have sent us profile EDUs: their users' cache entries stay fresh longer.
CREATE TABLE msc4259_servers (
    server_name   TEXT PRIMARY KEY,
    last_edu_ms   INTEGER NOT NULL
);
