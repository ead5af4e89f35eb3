-- Events owed to the servers of their room, written in the transaction that stores the event
-- (one row, whatever the number of servers) and expanded into destination_pdus rows by the
-- sender right after the request is answered, in stream order. A crash in between loses
-- nothing: the sender expands what is left here when it starts.
CREATE TABLE pdu_fanout (
    stream_ordering  INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL,
    -- JSON list of the servers not owed the event (ourselves; a relayed event's origin).
    except_servers   TEXT NOT NULL
);
