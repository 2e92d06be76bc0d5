//! The `calls` table: the upsert that takes a CDR (idempotent by `seq`,
//! identity fixed by the first CDR, status never backwards), the call
//! lists, acknowledgements, catch-up reads and retention.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::call::{CallEvent, CallStatus, EventKind};
use crate::cdr::Cdr;

/// A stored call, as the call list serves it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CallRow {
    pub seq: String,
    pub store: String,
    pub status: String,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub caller: String,
    pub virtual_number: Option<String>,
    pub updated_at: i64,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    /// A tablet said it called the customer back (a missed call's
    /// follow-up): when, and its token id.
    pub called_back_at: Option<i64>,
    pub called_back_by: Option<String>,
}

impl CallRow {
    pub fn status(&self) -> CallStatus {
        // The column is only ever written from `CallStatus::as_str`. Text
        // put there by hand reads as ringing, the lowest rank, so the
        // provider's next CDR still moves the call on; failing the whole
        // call list for one row would hide every other call.
        self.status.parse().unwrap_or(CallStatus::Ringing)
    }

    /// The call event for this call's latest state, as published at `at`
    /// (expiring `ttl` later).
    pub fn event_at(&self, ttl: Duration, at: DateTime<Utc>) -> CallEvent {
        CallEvent {
            kind: EventKind::Call,
            call_id: self.seq.clone(),
            store: self.store.clone(),
            status: self.status(),
            caller_number: self.caller.clone(),
            virtual_number: self.virtual_number.clone(),
            started_at: from_millis(self.started_at),
            answered_at: self.answered_at.map(from_millis),
            ended_at: self.ended_at.map(from_millis),
            published_at: at,
            expires_at: at + crate::call::to_chrono(ttl),
            published_us: None,
        }
    }
}

/// What storing a CDR did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsert {
    /// A new call, or an update of one: the row as it now is, to publish.
    Changed(Box<CallRow>),
    /// Nothing changed: the same CDR again, or an update that would move
    /// the status backwards.
    Unchanged,
    /// The `seq` is stored with another identity; nothing changed.
    Conflict(Conflict),
}

/// A repeat of a `seq` that disagrees with the call its first CDR made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The first parameter that differs: `vn`, `ton`, `fromn` or `sdt`.
    pub field: &'static str,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: differs from the first CDR of this seq; a call's vn, ton, fromn and sdt are fixed by its first CDR",
            self.field
        )
    }
}

const CALL_COLUMNS: &str = "seq, store, status, started_at, answered_at, ended_at, caller, \
     virtual_number, updated_at, acknowledged_at, acknowledged_by, called_back_at, called_back_by";

/// Filters of the console's call list.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub store: Option<String>,
    pub status: Option<String>,
    /// `[from, to)` on the start time, in milliseconds.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: u32,
}

impl Db {
    /// Stores a CDR idempotently by `seq`, in one statement. The owning
    /// store is the one that registered `vn`, else `ton` ("" for none).
    ///
    /// A call's identity — `vn`, `ton`, `fromn`, `sdt` and the store it
    /// matched — is fixed by its first CDR: an update only applies when the
    /// identity agrees (and the status does not move backwards), and the
    /// store is never rewritten. A repeat with the same fields changes
    /// nothing. Since the identity columns are written once, the follow-up
    /// read that names a conflict cannot race with another update.
    pub async fn upsert_call(&self, cdr: &Cdr) -> Result<Upsert> {
        let now = millis(crate::clock::now());
        let status = cdr.status();
        let extras = serde_json::to_string(
            &cdr.extras
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap_or_else(|_| "{}".into());
        // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's `ON`.
        let sql = format!(
            "WITH owner AS (SELECT COALESCE( \
                (SELECT s.slug FROM store_numbers n JOIN stores s ON s.id = n.store_id WHERE n.number = $8), \
                (SELECT s.slug FROM store_numbers n JOIN stores s ON s.id = n.store_id WHERE n.number = $9), \
                '') AS slug) \
             INSERT INTO calls (seq, store, status, status_rank, started_at, answered_at, ended_at, \
                caller, virtual_number, destination, extras, fingerprint, received_at, updated_at, \
                event_pending) \
             SELECT $1, owner.slug, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, \
                CASE WHEN owner.slug = '' THEN 0 ELSE 1 END \
             FROM owner WHERE true \
             ON CONFLICT (seq) DO UPDATE SET status = excluded.status, \
                status_rank = excluded.status_rank, \
                answered_at = excluded.answered_at, ended_at = excluded.ended_at, \
                extras = excluded.extras, \
                fingerprint = excluded.fingerprint, updated_at = excluded.updated_at, \
                event_pending = CASE WHEN calls.store = '' THEN 0 ELSE 1 END \
             WHERE calls.fingerprint <> excluded.fingerprint \
                AND calls.status_rank <= excluded.status_rank \
                AND COALESCE(calls.virtual_number, '') = COALESCE(excluded.virtual_number, '') \
                AND calls.destination = excluded.destination \
                AND calls.caller = excluded.caller \
                AND calls.started_at = excluded.started_at \
             RETURNING {CALL_COLUMNS}"
        );
        // Read to the end, not just the first row: SQLite commits an
        // autocommit statement when it completes, and a commit that fails
        // (a full disk) is reported only then. `fetch_optional` stopped at
        // the row and never saw it: the CDR was answered OK and rolled back.
        let changed = on_pool!(self, pool => sqlx::query_as::<_, CallRow>(&sql)
            .bind(&cdr.seq)
            .bind(status.as_str())
            .bind(i64::from(status.rank()))
            .bind(millis(cdr.started_at))
            .bind(cdr.answered_at.map(millis))
            .bind(cdr.ended_at.map(millis))
            .bind(&cdr.caller)
            .bind(cdr.virtual_number.as_deref())
            .bind(&cdr.destination)
            .bind(&extras)
            .bind(cdr.fingerprint())
            .bind(now)
            .fetch_all(pool)
            .await)?;
        if let Some(row) = changed.into_iter().next() {
            return Ok(Upsert::Changed(Box::new(row)));
        }
        let first: Option<(String, Option<String>, String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT caller, virtual_number, destination, started_at FROM calls WHERE seq = $1",
        )
        .bind(&cdr.seq)
        .fetch_optional(pool)
        .await)?;
        let Some((caller, virtual_number, destination, started_at)) = first else {
            // Deleted by retention in between: nothing to conflict with.
            return Ok(Upsert::Unchanged);
        };
        let field = if virtual_number.as_deref().unwrap_or("")
            != cdr.virtual_number.as_deref().unwrap_or("")
        {
            "vn"
        } else if destination != cdr.destination {
            "ton"
        } else if caller != cdr.caller {
            "fromn"
        } else if started_at != millis(cdr.started_at) {
            "sdt"
        } else {
            return Ok(Upsert::Unchanged);
        };
        Ok(Upsert::Conflict(Conflict { field }))
    }

    /// The call, if its latest change (made at or after `since`) was never
    /// handed to the bus.
    pub async fn unpublished(&self, seq: &str, since: DateTime<Utc>) -> Result<Option<CallRow>> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE seq = $1 AND event_pending = 1 AND updated_at >= $2"
        );
        Ok(on_pool!(self, pool => sqlx::query_as::<_, CallRow>(&sql)
            .bind(seq)
            .bind(millis(since))
            .fetch_optional(pool)
            .await)?)
    }

    pub async fn call(&self, seq: &str) -> Result<Option<CallRow>> {
        let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE seq = $1");
        Ok(on_pool!(self, pool => sqlx::query_as::<_, CallRow>(&sql)
            .bind(seq)
            .fetch_optional(pool)
            .await)?)
    }

    /// A store's calls, newest first, started at or after `since`.
    pub async fn calls_for_store(
        &self,
        store: &str,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<CallRow>> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE store = $1 AND started_at >= $2 \
             ORDER BY started_at DESC, seq DESC LIMIT $3"
        );
        let since = since.map(millis).unwrap_or(i64::MIN);
        Ok(on_pool!(self, pool => sqlx::query_as::<_, CallRow>(&sql)
            .bind(store)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?)
    }

    /// One page of the changes made at or after `since` to calls of
    /// `stores`, newest first, strictly before `before` (an
    /// `(updated_at, seq)` cursor: the last row of the previous page).
    pub async fn calls_changed_since(
        &self,
        stores: &[String],
        since: DateTime<Utc>,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<CallRow>> {
        self.changes(stores, since, before, limit, false).await
    }

    /// The newest `limit` changes made at or after `since` to calls of
    /// `stores` that were never handed to the bus (the relay's read while
    /// the bus is well).
    pub async fn calls_unpublished_since(
        &self,
        stores: &[String],
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CallRow>> {
        self.changes(stores, since, None, limit, true).await
    }

    async fn changes(
        &self,
        stores: &[String],
        since: DateTime<Utc>,
        before: Option<(i64, &str)>,
        limit: u32,
        unpublished: bool,
    ) -> Result<Vec<CallRow>> {
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let (before_at, before_seq) = before.unwrap_or((i64::MAX, ""));
        let pending = if unpublished {
            "AND event_pending = 1"
        } else {
            ""
        };
        let page = format!(
            "{pending} AND (updated_at < $2 OR (updated_at = $2 AND seq < $3)) \
             ORDER BY updated_at DESC, seq DESC LIMIT $4"
        );
        Ok(match self {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE updated_at >= $1 \
                     AND store IN (SELECT value FROM json_each($5)) {page}"
                );
                let list = serde_json::to_string(stores).unwrap_or_else(|_| "[]".into());
                sqlx::query_as::<_, CallRow>(&sql)
                    .bind(millis(since))
                    .bind(before_at)
                    .bind(before_seq)
                    .bind(i64::from(limit))
                    .bind(list)
                    .fetch_all(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE updated_at >= $1 \
                     AND store = ANY($5::text[]) {page}"
                );
                sqlx::query_as::<_, CallRow>(&sql)
                    .bind(millis(since))
                    .bind(before_at)
                    .bind(before_seq)
                    .bind(i64::from(limit))
                    .bind(stores)
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// Marks a call acknowledged by a tablet; only the first ACK counts.
    /// Returns whether this was the first.
    /// Notes that tablet `tablet` of `store` called the caller of `seq`
    /// back; the first such note stands. Returns the call, or `None` when
    /// the store has no such call.
    pub async fn call_back(&self, seq: &str, store: &str, tablet: &str) -> Result<Option<CallRow>> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET called_back_at = $1, called_back_by = $2 \
             WHERE seq = $3 AND store = $4 AND called_back_at IS NULL",
        )
        .bind(millis(Utc::now()))
        .bind(tablet)
        .bind(seq)
        .bind(store)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(self.call(seq).await?.filter(|c| c.store == store))
    }

    pub async fn acknowledge_call(&self, seq: &str, store: &str, tablet: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE calls SET acknowledged_at = $1, acknowledged_by = $2 \
             WHERE seq = $3 AND store = $4 AND acknowledged_at IS NULL",
        )
        .bind(millis(Utc::now()))
        .bind(tablet)
        .bind(seq)
        .bind(store)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Deletes calls received before `cutoff`; returns how many.
    pub async fn delete_calls_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(
            on_pool!(self, pool => sqlx::query("DELETE FROM calls WHERE received_at < $1")
            .bind(millis(cutoff))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?,
        )
    }

    pub async fn count_calls(&self) -> Result<i64> {
        Ok(
            on_pool!(self, pool => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM calls")
            .fetch_one(pool)
            .await)?,
        )
    }

    /// The latest call's start time per store.
    pub async fn last_call_by_store(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT s.slug, (SELECT MAX(c.started_at) FROM calls c WHERE c.store = s.slug) \
             FROM stores s",
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, at)| at.map(|at| (s, at)))
            .collect())
    }

    /// Calls for the console: newest first by start time, filtered.
    pub async fn calls_filtered(&self, f: &CallFilter) -> Result<Vec<CallRow>> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls \
             WHERE ($1 = '' OR store = $1) AND ($2 = '' OR status = $2) \
               AND started_at >= $3 AND started_at < $4 AND store <> '' \
             ORDER BY started_at DESC, seq DESC LIMIT $5"
        );
        Ok(on_pool!(self, pool => sqlx::query_as::<_, CallRow>(&sql)
            .bind(f.store.as_deref().unwrap_or(""))
            .bind(f.status.as_deref().unwrap_or(""))
            .bind(f.from.unwrap_or(i64::MIN))
            .bind(f.to.unwrap_or(i64::MAX))
            .bind(i64::from(f.limit))
            .fetch_all(pool)
            .await)?)
    }

    /// When a call was first received and whether its latest change
    /// reached the bus (`event_pending = 0`).
    pub async fn call_received(&self, seq: &str) -> Result<Option<(i64, bool)>> {
        let row: Option<(i64, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT received_at, event_pending FROM calls WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(at, pending)| (at, pending == 0)))
    }
}
