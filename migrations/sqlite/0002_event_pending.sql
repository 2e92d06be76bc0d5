-- 1 while a call's latest change has not been handed to the bus: a repeat of
-- the CDR then publishes it (the instance may have died before publishing).
ALTER TABLE calls ADD COLUMN event_pending INTEGER NOT NULL DEFAULT 0;
