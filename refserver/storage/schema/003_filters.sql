-- Filters uploaded with POST /user/{userId}/filter (CS API "Filtering").
-- filter_id counts up from 0 per user; the API hands it out as a decimal string, which can
-- never start with "{" (filter.yaml: that marks an inline filter on /sync).
CREATE TABLE user_filters (
    user_id      TEXT NOT NULL REFERENCES users(user_id),
    filter_id    INTEGER NOT NULL,
    filter_json  TEXT NOT NULL,         -- canonical JSON of the filter as uploaded
    PRIMARY KEY (user_id, filter_id)
);
