//! Groups "published" marks: each webhook request waits for its own mark,
//! but marks that arrive while one transaction runs share the next one, so
//! at 1,000 CDRs a second the database sees a few dozen small transactions
//! rather than a thousand.

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::{BackgroundError, Db, DbError};

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
