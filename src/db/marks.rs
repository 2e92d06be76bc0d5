//! Groups "published" marks: each webhook request waits for its own mark,
//! but marks that arrive while one transaction runs share the next one, so
//! at 1,000 CDRs a second the database sees a few dozen small transactions
//! rather than a thousand.

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::{BackgroundError, Db, DbError, Result};

/// Most marks written by one transaction.
const BATCH: usize = 512;

type Waiter = oneshot::Sender<Result<(), BackgroundError>>;

/// A handle on the task that writes marks; cheap to clone.
#[derive(Clone, Debug)]
pub struct PublishMarks {
    tx: mpsc::UnboundedSender<((String, i64), Waiter)>,
}

impl PublishMarks {
    /// Starts the writer; it ends when every handle is dropped.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // Its own connection, whose commits do not wait for the disk: one
        // round trip per batch instead of BEGIN, SET LOCAL, UPDATE and COMMIT.
        tokio::spawn(write_marks(db.background_writer(), rx));
        PublishMarks { tx }
    }

    /// Records that `seq`'s change made at `updated_at` reached the bus;
    /// returns once it is written (or failed).
    pub async fn mark(&self, seq: &str, updated_at: i64) -> Result<(), DbError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(((seq.to_string(), updated_at), done))
            .map_err(|_| BackgroundError::Stopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BackgroundError::Stopped.into()),
        }
    }
}

async fn write_marks(target: Db, mut rx: mpsc::UnboundedReceiver<((String, i64), Waiter)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (marks, waiters): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let result = target.mark_published(&marks).await.map_err(|e| match e {
            DbError::Sql(e) => BackgroundError::Failed(Arc::new(e)),
            DbError::Background(e) => e,
            other => BackgroundError::Failed(Arc::new(sqlx::Error::Protocol(other.to_string()))),
        });
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Db {
    /// These calls' latest changes (`(seq, updated_at)`) have been handed
    /// to the bus; one statement (PostgreSQL) or one transaction (SQLite)
    /// for them all. Losing a mark in a crash only means a repeat of the CDR
    /// publishes the change again (tablets drop the duplicate), so
    /// `PublishMarks` runs this on a PostgreSQL connection whose commits do
    /// not wait for the disk.
    pub async fn mark_published(&self, marks: &[(String, i64)]) -> Result<()> {
        if marks.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                let (seqs, times): (Vec<String>, Vec<i64>) = marks.iter().cloned().unzip();
                let mut tx = super::background_tx(pool).await?;
                sqlx::query(
                    "UPDATE calls SET event_pending = 0 \
                     FROM UNNEST($1::text[], $2::int8[]) AS p(seq, updated_at) \
                     WHERE calls.seq = p.seq AND calls.updated_at = p.updated_at",
                )
                .bind(seqs)
                .bind(times)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for (seq, updated_at) in marks {
                    sqlx::query(
                        "UPDATE calls SET event_pending = 0 WHERE seq = $1 AND updated_at = $2",
                    )
                    .bind(seq)
                    .bind(updated_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}
