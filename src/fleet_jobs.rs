//! Jobs the fleet runs once per interval, not once per instance: the
//! retention delete and the trail prune. With a hundred instances, a
//! hundred identical hourly deletes were a hundred times the work.
//!
//! One instance at a time holds the job's lease (a row in `fleet_jobs`,
//! which works through PgBouncer in transaction mode, unlike a session
//! advisory lock). Every instance checks every tenth of
//! `database.jobs_interval`: the holder renews its lease (half an
//! interval long) and runs the jobs when an interval has passed since their
//! last run, whoever ran them; the others find the lease held and wait.
//! When the holder dies, its lease runs out within half an interval and
//! the next check of another instance takes over: within 0.6 of an
//! interval. A stopping holder gives the lease up at once.

use std::time::Duration;

use crate::app::App;
use crate::db::millis;
use crate::metrics as m;

/// The lease's name: both jobs run together.
const JOB: &str = "retention";

pub async fn run(app: App) {
    let every = app.config.database.jobs_interval;
    let check = (every / 10).max(Duration::from_millis(100));
    let lease = chrono::Duration::from_std(every / 2).unwrap_or(chrono::Duration::MAX);
    let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    let me = app.identity.id.clone();
    let mut holding = false;
    loop {
        let now = crate::clock::now();
        match app
            .db
            .job_lease(JOB, &me, millis(now + lease), millis(now))
            .await
        {
            Ok(Some(last)) => {
                if !holding {
                    holding = true;
                    m::fleet_jobs_held(true);
                    tracing::info!("fleet jobs (retention, trail prune): this instance runs them");
                }
                if last.is_none_or(|at| at + every_ms <= millis(now)) {
                    retention(&app).await;
                    m::fleet_job_ran();
                    if let Err(e) = app.db.job_ran(JOB, &me, millis(now)).await {
                        tracing::warn!(error = %e, "could not note the fleet jobs' run");
                    }
                }
            }
            Ok(None) => {
                if holding {
                    holding = false;
                    m::fleet_jobs_held(false);
                    tracing::info!("fleet jobs: another instance runs them now");
                }
            }
            Err(e) => tracing::debug!(error = %e, "fleet jobs: the lease could not be read"),
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                if holding {
                    let _ = app.db.job_release(JOB, &me).await;
                }
                return;
            }
            _ = tokio::time::sleep(check) => {}
        }
    }
}

/// Deletes calls past `database.retention_days`, and their trails.
async fn retention(app: &App) {
    let days = i64::from(app.config.database.retention_days);
    let cutoff = chrono::Utc::now() - chrono::Duration::days(days);
    match app.db.delete_calls_before(cutoff).await {
        Ok(0) => {}
        Ok(n) => {
            m::calls_deleted(n);
            tracing::info!(deleted = n, days, "retention: old calls deleted");
        }
        Err(e) => tracing::warn!(error = %e, "retention job failed; will try again"),
    }
    if let Err(e) = app.db.trail_prune(millis(cutoff)).await {
        tracing::warn!(error = %e, "retention of delivery trails failed; will try again");
    }
}
