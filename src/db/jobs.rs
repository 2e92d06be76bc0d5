//! Leases on fleet jobs (`fleet_jobs`): which instance runs a job, until
//! when, and when it last ran.

use super::*;

impl Db {
    /// Takes or renews the lease on `job` for `holder` until `until` (ms)
    /// when it is free, expired (before `now`) or `holder`'s already.
    /// Returns the job's last run (ms) when `holder` holds the lease now,
    /// `Some(None)` when it never ran, `None` when another instance holds it.
    pub async fn job_lease(
        &self,
        job: &str,
        holder: &str,
        until: i64,
        now: i64,
    ) -> Result<Option<Option<i64>>> {
        // Read to the end: SQLite reports a failed commit only then.
        let rows: Vec<(Option<i64>,)> = on_pool!(self, pool => sqlx::query_as(
            "INSERT INTO fleet_jobs (job, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
                expires_at = excluded.expires_at \
             WHERE fleet_jobs.holder = excluded.holder OR fleet_jobs.expires_at < $4 \
             RETURNING last_run_at",
        )
        .bind(job)
        .bind(holder)
        .bind(until)
        .bind(now)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().next().map(|(last,)| last))
    }

    /// Notes that `holder` ran `job` at `at` (ms), if it still holds it.
    pub async fn job_ran(&self, job: &str, holder: &str, at: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE fleet_jobs SET last_run_at = $1 WHERE job = $2 AND holder = $3",
        )
        .bind(at)
        .bind(job)
        .bind(holder)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Gives the lease up (an instance stopping), so another takes over at
    /// its next check instead of waiting for the lease to expire.
    pub async fn job_release(&self, job: &str, holder: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE fleet_jobs SET expires_at = 0 WHERE job = $1 AND holder = $2",
        )
        .bind(job)
        .bind(holder)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
