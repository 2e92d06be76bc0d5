-- Whether token-less tablets (compat.anonymous) may follow this store's
-- calls on the legacy destination: off until the operator opts it in.
ALTER TABLE stores ADD COLUMN anonymous_tablets BOOLEAN NOT NULL DEFAULT FALSE;
