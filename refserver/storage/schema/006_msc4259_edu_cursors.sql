-- MSC4259 sending side, second form: a cursor per destination into profile_stream instead of
-- one dirty row per (destination, user, field). A profile write then costs one profile_stream
-- row whatever the number of destinations; a transaction reads the rows after the
-- destination's cursor for the local users sharing a room with it.

-- Every local profile_stream row at or below stream_pos is acknowledged by, or not owed to,
-- destination.
CREATE TABLE profile_edu_cursors (
    destination  TEXT PRIMARY KEY,
    stream_pos   INTEGER NOT NULL
);
-- EDUs about (user, field) sent to a destination: the per-field rate limit (sent_ms) and the
-- rows above the cursor already covered (sent_pos: the stream head when the values were read).
-- Pruned once sent_pos is at or below the cursor and sent_ms is older than every
-- min_interval_s, so it holds only what was sent recently.
CREATE TABLE profile_edu_recent (
    destination  TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    field        TEXT NOT NULL,
    sent_pos     INTEGER NOT NULL,
    sent_ms      INTEGER NOT NULL,
    PRIMARY KEY (destination, user_id, field)
);
-- Join-time exchange: destination newly shares a room with user and is owed the whole
-- profile as of since_pos (older stream rows are superseded by it). At most one row per pair.
CREATE TABLE profile_edu_owed (
    destination  TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    since_pos    INTEGER NOT NULL,
    PRIMARY KEY (destination, user_id)
);
-- "Rooms a server is joined to", for the per-destination read.
CREATE INDEX room_memberships_by_server ON room_memberships(server_name, membership, room_id);

-- Carry over what the old tables owed: servers in a room start at the head; a destination
-- with dirty rows starts just before its oldest one; join-time rows become markers.
INSERT INTO profile_edu_cursors (destination, stream_pos)
    SELECT DISTINCT server_name, (SELECT COALESCE(MAX(stream_pos), 0) FROM profile_stream)
    FROM room_memberships WHERE membership = 'join';
INSERT OR REPLACE INTO profile_edu_cursors (destination, stream_pos)
    SELECT destination, MIN(stream_pos) - 1 FROM profile_edu_dirty GROUP BY destination;
INSERT INTO profile_edu_owed (destination, user_id, since_pos)
    SELECT destination, user_id, MAX(stream_pos) FROM profile_edu_dirty
    WHERE first_change_ms = 0 GROUP BY destination, user_id;
DROP TABLE profile_edu_dirty;
DROP TABLE profile_edu_sent;
