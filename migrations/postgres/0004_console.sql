-- Cluster-wide presence (src/presence.rs): every running instance, and the
-- tablets connected to it per store and token ('' for anonymous ones).
-- An instance whose heart-beat is older than the staleness bound counts
-- as gone, with its tablets.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE presence (
    instance_id TEXT NOT NULL,
    store       TEXT NOT NULL,
    token_id    TEXT NOT NULL,
    tablets     BIGINT NOT NULL,
    PRIMARY KEY (instance_id, store, token_id)
);

ALTER TABLE tokens ADD COLUMN last_seen_at BIGINT;

-- A call's delivery trail (src/trail.rs): one row per instance per call,
-- written in batches after the fact.
CREATE TABLE call_trail (
    seq          TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    received_at  BIGINT,
    published_at BIGINT,
    reached_at   BIGINT,
    last_at      BIGINT,
    events       BIGINT NOT NULL,
    tablets      BIGINT NOT NULL,
    token_ids    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (seq, instance_id)
);
CREATE INDEX call_trail_updated ON call_trail (updated_at);
