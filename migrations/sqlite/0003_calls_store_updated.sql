-- Catch-up after a bus gap reads a set of stores' changes, newest first.
CREATE INDEX calls_store_updated ON calls (store, updated_at);
