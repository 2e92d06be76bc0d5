-- Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE stores (
    id         BIGSERIAL PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE store_numbers (
    number   TEXT PRIMARY KEY,
    store_id BIGINT NOT NULL REFERENCES stores(id) ON DELETE CASCADE
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    store_id   BIGINT NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    label      TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE calls (
    seq             TEXT PRIMARY KEY,
    store           TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_rank     BIGINT NOT NULL,
    started_at      BIGINT NOT NULL,
    answered_at     BIGINT,
    ended_at        BIGINT,
    caller          TEXT NOT NULL,
    virtual_number  TEXT,
    destination     TEXT NOT NULL,
    extras          TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    received_at     BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT
);
CREATE INDEX calls_store_started ON calls (store, started_at DESC);
CREATE INDEX calls_received ON calls (received_at);

CREATE TABLE reservations (
    id              BIGSERIAL PRIMARY KEY,
    store           TEXT NOT NULL,
    call_id         TEXT,
    customer_number TEXT NOT NULL,
    car_number      TEXT,
    car_model       TEXT,
    service         TEXT,
    reserved_at     BIGINT NOT NULL,
    memo            TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX reservations_store_time ON reservations (store, reserved_at);
