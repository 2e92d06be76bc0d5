//! The `trails` table: each call's delivery trail, one row per instance.

use super::*;

/// One instance's part of a call's delivery trail.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrailRow {
    pub seq: String,
    pub instance_id: String,
    /// When this instance took the call's first CDR in (it is the receiver).
    pub received_at: Option<i64>,
    /// When the broker confirmed this instance's publish of it.
    pub published_at: Option<i64>,
    /// When its first event reached this instance's hub.
    pub reached_at: Option<i64>,
    /// When its latest event did.
    pub last_at: Option<i64>,
    /// Events of the call this instance handed to its tablets' queues.
    pub events: i64,
    /// Most tablets one of those events was queued for.
    pub tablets: i64,
    /// JSON array of the token ids of those tablets.
    pub token_ids: String,
    /// `received`, `delivered`, `no-tablet`, `expired` or `slow-consumer`.
    pub outcome: String,
    pub updated_at: i64,
}

const TRAIL_COLUMNS: &str = "seq, instance_id, received_at, published_at, reached_at, last_at, \
     events, tablets, token_ids, outcome, updated_at";

impl Db {
    /// Writes trail rows (each the whole of one instance's part of one
    /// call so far): one statement on PostgreSQL, one transaction on SQLite.
    pub async fn trail_write(&self, rows: &[TrailRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let upsert = "ON CONFLICT (seq, instance_id) DO UPDATE SET \
             received_at = COALESCE(excluded.received_at, call_trail.received_at), \
             published_at = COALESCE(excluded.published_at, call_trail.published_at), \
             reached_at = excluded.reached_at, last_at = excluded.last_at, \
             events = excluded.events, tablets = excluded.tablets, \
             token_ids = excluded.token_ids, outcome = excluded.outcome, \
             updated_at = excluded.updated_at";
        match self {
            Db::Postgres(pool) => {
                let col = |f: fn(&TrailRow) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
                let text = |f: fn(&TrailRow) -> &str| {
                    rows.iter().map(|r| f(r).to_string()).collect::<Vec<_>>()
                };
                let sql = format!(
                    "INSERT INTO call_trail ({TRAIL_COLUMNS}) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], \
                        $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::text[], \
                        $11::int8[]) {upsert}"
                );
                let mut tx = super::background_tx(pool).await?;
                sqlx::query(&sql)
                    .bind(text(|r| &r.seq))
                    .bind(text(|r| &r.instance_id))
                    .bind(col(|r| r.received_at))
                    .bind(col(|r| r.published_at))
                    .bind(col(|r| r.reached_at))
                    .bind(col(|r| r.last_at))
                    .bind(col(|r| Some(r.events)))
                    .bind(col(|r| Some(r.tablets)))
                    .bind(text(|r| &r.token_ids))
                    .bind(text(|r| &r.outcome))
                    .bind(col(|r| Some(r.updated_at)))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let sql = format!(
                    "INSERT INTO call_trail ({TRAIL_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) {upsert}"
                );
                let mut tx = pool.begin().await?;
                for r in rows {
                    sqlx::query(&sql)
                        .bind(&r.seq)
                        .bind(&r.instance_id)
                        .bind(r.received_at)
                        .bind(r.published_at)
                        .bind(r.reached_at)
                        .bind(r.last_at)
                        .bind(r.events)
                        .bind(r.tablets)
                        .bind(&r.token_ids)
                        .bind(&r.outcome)
                        .bind(r.updated_at)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// A call's trail rows, one per instance that saw it.
    pub async fn trail(&self, seq: &str) -> Result<Vec<TrailRow>> {
        let sql = format!(
            "SELECT {TRAIL_COLUMNS} FROM call_trail WHERE seq = $1 \
             ORDER BY COALESCE(received_at, reached_at, updated_at), instance_id"
        );
        Ok(on_pool!(self, pool => sqlx::query_as::<_, TrailRow>(&sql)
            .bind(seq)
            .fetch_all(pool)
            .await)?)
    }

    /// Deletes trail rows last written before `cutoff` (retention).
    pub async fn trail_prune(&self, cutoff: i64) -> Result<u64> {
        Ok(
            on_pool!(self, pool => sqlx::query("DELETE FROM call_trail WHERE updated_at < $1")
            .bind(cutoff)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?,
        )
    }
}
