-- Jobs the fleet runs once per interval, whichever instance holds the
-- job's lease (src/fleet_jobs.rs): retention and the trail prune.
CREATE TABLE fleet_jobs (
    job         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    last_run_at BIGINT
);
