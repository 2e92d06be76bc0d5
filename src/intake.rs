//! The CDR use case, whatever carries the CDR in: store it, hand what
//! changed to the bus, and record that it got there. The webhook turns the
//! outcome into an HTTP answer; tests and tools call it directly.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::bus::SharedBus;
use crate::call::{mask_number, BusEvent};
use crate::cdr::Cdr;
use crate::config::Config;
use crate::db::{CallRow, Conflict, Db, DbError, PublishMarks, Upsert};
use crate::log_budget::LogBudget;
use crate::metrics as m;

/// What accepting one CDR did.
#[derive(Debug)]
pub enum Outcome {
    /// A new call or an update, handed to the bus (a failed publish is kept
    /// and retried by the bus; the row stays pending).
    Stored(CallRow),
    /// Stored, but no store registered its `vn` or `ton`: no popup.
    Unmatched(CallRow),
    /// Nothing changed: the same CDR again, or an update that would move the
    /// status backwards. A repeat of a change that never reached the bus
    /// (its instance died first) publishes it again.
    Repeat,
    /// The `seq` is stored with another identity; nothing changed.
    Conflict(Conflict),
    /// Not stored: the database did not answer. Nothing is half-written.
    Unavailable(DbError),
}

/// What the CDR use case needs of the instance.
#[derive(Clone)]
pub struct Intake {
    pub config: Arc<Config>,
    pub db: Db,
    pub bus: SharedBus,
    /// Writes "handed to the bus" marks in shared transactions.
    pub marks: PublishMarks,
    /// This instance's part of calls' delivery trails.
    pub trail: Arc<crate::trail::Trail>,
    /// The server's background jobs: a publish that outlives the answer
    /// runs on to its end there, and a stopping instance waits for it.
    pub tasks: TaskTracker,
}

/// The longest a CDR's answer waits for the broker's confirm. The answer's
/// `OK` means "stored" (the database holds the change and the relay can
/// carry it): a broker that is slow or silent must not hold the provider's
/// webhook, so past this the publish goes on in the background.
const PUBLISH_WAIT: Duration = Duration::from_millis(300);

/// The upsert, tried again on another connection while the one it got
/// turns out to be dead (after the database went away and came back, every
/// idle connection of the pool is). Each such failure is immediate, and the
/// upsert is idempotent: a try whose answer was lost reads as a repeat.
async fn store(app: &Intake, cdr: &Cdr) -> Result<Upsert, DbError> {
    let mut tries = 1;
    loop {
        match app.db.upsert_call(cdr).await {
            Err(e) if e.is_dead_connection() && tries <= app.db.pool_size() => {
                tracing::debug!(seq = %cdr.seq, error = %e, "dead database connection: trying another");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Stores `cdr` and publishes what changed.
pub async fn accept(app: &Intake, cdr: &Cdr) -> Outcome {
    let limit = app.config.database.timeout;
    let stored = match tokio::time::timeout(limit, store(app, cdr)).await {
        Ok(stored) => stored,
        Err(_) => {
            m::database_timeout();
            Err(DbError::Timeout(limit))
        }
    };
    let row = match stored {
        Ok(Upsert::Changed(row)) => *row,
        Ok(Upsert::Unchanged) => {
            republish_if_unpublished(app, cdr).await;
            return Outcome::Repeat;
        }
        Ok(Upsert::Conflict(conflict)) => {
            tracing::warn!(
                seq = %cdr.seq,
                field = conflict.field,
                caller = %mask_number(&cdr.caller),
                vn = %cdr.virtual_number.as_deref().map(mask_number).unwrap_or_default(),
                ton = %mask_number(&cdr.destination),
                "CDR repeat disagrees with the call's first CDR: nothing changed"
            );
            return Outcome::Conflict(conflict);
        }
        Err(e) if e.is_disk_full() => {
            // Said once a minute while it lasts; the metric counts each CDR.
            static DISK_FULL: LogBudget = LogBudget::with_lines(
                "CDR not stored: the database's disk is full",
                crate::log_budget::INTERVAL,
                1,
            );
            m::disk_full();
            if DISK_FULL.admit() {
                tracing::error!(
                    seq = %cdr.seq,
                    error = %e,
                    "CDR not stored: the database's disk is full; CDRs are answered 503 until space returns (free space where the database lives)"
                );
            }
            return Outcome::Unavailable(e);
        }
        Err(e) => {
            tracing::error!(seq = %cdr.seq, error = %e, "CDR not stored: database unavailable");
            return Outcome::Unavailable(e);
        }
    };
    m::call_stored(row.status().as_str());
    if row.store.is_empty() {
        m::call_unmatched();
        tracing::warn!(
            seq = %cdr.seq,
            caller = %mask_number(&cdr.caller),
            vn = %cdr.virtual_number.as_deref().map(mask_number).unwrap_or_default(),
            ton = %mask_number(&cdr.destination),
            "CDR matches no store: stored without a popup"
        );
        return Outcome::Unmatched(row);
    }
    tracing::info!(
        seq = %cdr.seq,
        store = %row.store,
        status = %row.status(),
        caller = %mask_number(&cdr.caller),
        "CDR stored"
    );
    publish(app, &row).await;
    Outcome::Stored(row)
}

/// A repeat publishes nothing, unless the change it repeats was never
/// handed to the bus: then it is published now, while still inside its TTL.
async fn republish_if_unpublished(app: &Intake, cdr: &Cdr) {
    let ttl = app.config.bus.ttl();
    match app
        .db
        .unpublished(&cdr.seq, crate::clock::now() - ttl)
        .await
    {
        Ok(Some(row)) => {
            tracing::info!(seq = %cdr.seq, "CDR repeat of an unpublished change: publishing it");
            publish(app, &row).await;
        }
        Ok(None) => tracing::debug!(seq = %cdr.seq, "CDR repeat: nothing changed"),
        Err(e) => {
            tracing::warn!(seq = %cdr.seq, error = %e, "could not check a repeat for an unpublished change")
        }
    }
}

/// Publishes a stored change, waiting at most `PUBLISH_WAIT` for the
/// broker's confirm (not for the "published" mark written after it: the
/// mark only spares the relay a republish, so the answer need not wait
/// for its database round trip).
async fn publish(app: &Intake, row: &CallRow) {
    let (confirmed, on_confirm) = tokio::sync::oneshot::channel();
    {
        let (app, row) = (app.clone(), row.clone());
        app.tasks
            .clone()
            .spawn(async move { publish_now(&app, &row, confirmed).await });
    }
    // An error (the task ended without a word) means it is over too.
    if tokio::time::timeout(PUBLISH_WAIT, on_confirm)
        .await
        .is_err()
    {
        tracing::debug!(seq = %row.seq, "broker slow to confirm: answering while the publish goes on");
    }
}

/// Publishes a stored change, says so on `confirmed` once the bus has it
/// (or has refused it), then records that it reached the bus.
async fn publish_now(app: &Intake, row: &CallRow, confirmed: tokio::sync::oneshot::Sender<()>) {
    let event = row.event_at(app.config.bus.message_ttl, crate::clock::now());
    let published = app.bus.publish(&BusEvent::Call(event)).await;
    let _ = confirmed.send(());
    match published {
        Ok(()) => {
            app.trail.received(&row.seq, row.updated_at, true);
            if let Err(e) = app.marks.mark(&row.seq, row.updated_at).await {
                tracing::warn!(seq = %row.seq, error = %e, "could not mark a call event published");
            }
        }
        Err(e) => {
            app.trail.received(&row.seq, row.updated_at, false);
            tracing::warn!(seq = %row.seq, error = %e, "call event not published yet")
        }
    }
}
