-- A missed call's follow-up: when a tablet of the store said it called the
-- customer back, and which tablet (its token id).
ALTER TABLE calls ADD COLUMN called_back_at BIGINT;
ALTER TABLE calls ADD COLUMN called_back_by TEXT;
