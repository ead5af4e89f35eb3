-- Rooms where some event was stored before one of its auth events (a remote invite kept as an
-- outlier before we joined; an outlier stored without the auth events we could not fetch).
-- Everywhere else an event's stream_ordering is above those of its auth events, so state
-- resolution may stop its auth-chain walks early (storage/room_state.py); in these rooms it
-- walks the whole closures.
CREATE TABLE rooms_auth_unordered (
    room_id  TEXT PRIMARY KEY
);

-- Rooms stored before this table existed: any event citing an auth event we lack, or one
-- stored after it.
INSERT OR IGNORE INTO rooms_auth_unordered (room_id)
SELECT DISTINCT e.room_id
FROM events AS e, json_each(e.pdu_json, '$.auth_events') AS cited
LEFT JOIN events AS a ON a.event_id = cited.value
WHERE a.stream_ordering IS NULL OR a.stream_ordering > e.stream_ordering;
