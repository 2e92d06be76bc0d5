//! What the operator console reads and writes: cluster-wide presence
//! (instances and their tablets), calls' delivery trails, and the store and
//! token edits of the admin API.

use std::collections::HashMap;

use chrono::Utc;

use super::{millis, CallRow, Db, Refusal, Result, Store, CALL_COLUMNS};
use crate::hub::PresenceKey;

/// A running (or recently running) instance, as the presence table has it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// How its bus delivers: `local`, `fanout` or `store` (`None` from a
    /// bizcall older than this column).
    pub bus: Option<String>,
}

/// Tablets online across the cluster for one store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Online {
    /// With a token.
    pub tablets: i64,
    /// Anonymous (`compat.anonymous`).
    pub anonymous: i64,
}

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

/// A token as the console lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub store: String,
    pub label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
}

/// What removing a store takes with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFootprint {
    pub numbers: i64,
    pub live_tokens: i64,
    pub calls: i64,
}

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

const TRAIL_COLUMNS: &str = "seq, instance_id, received_at, published_at, reached_at, last_at, \
     events, tablets, token_ids, outcome, updated_at";

impl Db {
    // ---- presence -----------------------------------------------------

    /// Writes this instance's heart-beat, and its presence changes: rows
    /// to set (`tablets > 0`) and rows gone. Tokens that came or went are
    /// stamped `last_seen_at`, with `seen` (tokens still connected, stamped
    /// now and then) — all in one transaction.
    pub async fn presence_beat(
        &self,
        instance: &InstanceRow,
        set: &[(PresenceKey, i64)],
        gone: &[PresenceKey],
        seen: &[std::sync::Arc<str>],
    ) -> Result<()> {
        let now = instance.heartbeat_at;
        let stamp_seen = match self {
            Db::Sqlite(_) => {
                "UPDATE tokens SET last_seen_at = $1 WHERE id IN (SELECT value FROM json_each($2))"
            }
            Db::Postgres(_) => {
                "UPDATE tokens SET last_seen_at = $1 \
                 WHERE id IN (SELECT jsonb_array_elements_text($2::jsonb))"
            }
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO instances (id, name, started_at, heartbeat_at, bus) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            )
            .bind(&instance.id)
            .bind(&instance.name)
            .bind(instance.started_at)
            .bind(now)
            .bind(&instance.bus)
            .execute(&mut *tx)
            .await?;
            for key in gone {
                sqlx::query(
                    "DELETE FROM presence WHERE instance_id = $1 AND store = $2 AND token_id = $3",
                )
                .bind(&instance.id)
                .bind(&*key.store)
                .bind(&*key.token_id)
                .execute(&mut *tx)
                .await?;
            }
            for (key, n) in set {
                sqlx::query(
                    "INSERT INTO presence (instance_id, store, token_id, tablets) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (instance_id, store, token_id) DO UPDATE SET tablets = excluded.tablets",
                )
                .bind(&instance.id)
                .bind(&*key.store)
                .bind(&*key.token_id)
                .bind(n)
                .execute(&mut *tx)
                .await?;
            }
            // One statement per 5,000 tokens, the ids as a JSON list.
            for chunk in seen.chunks(5_000) {
                let ids: Vec<&str> = chunk.iter().map(|id| &**id).collect();
                sqlx::query(stamp_seen)
                    .bind(now)
                    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Removes an instance and its presence (it stops, or it is long dead).
    pub async fn instance_leave(&self, id: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM presence WHERE instance_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM instances WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets instances silent since before `before` (killed ones).
    pub async fn instances_prune(&self, before: i64) -> Result<u64> {
        let dead: Vec<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT id FROM instances WHERE heartbeat_at < $1",
        )
        .bind(before)
        .fetch_all(pool)
        .await)?;
        for id in &dead {
            self.instance_leave(id).await?;
        }
        Ok(dead.len() as u64)
    }

    /// Instances heard from at or after `alive_since`, oldest first.
    pub async fn instances_alive(&self, alive_since: i64) -> Result<Vec<InstanceRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as::<_, InstanceRow>(
            "SELECT id, name, started_at, heartbeat_at, bus FROM instances \
             WHERE heartbeat_at >= $1 ORDER BY started_at, id",
        )
        .bind(alive_since)
        .fetch_all(pool)
        .await)?)
    }

    /// Instance id → name, for every instance still listed.
    pub async fn instance_names(&self) -> Result<HashMap<String, String>> {
        let rows: Vec<(String, String)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, name FROM instances",
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().collect())
    }

    /// Tablets online across the cluster per store, counting instances
    /// heard from at or after `alive_since` only.
    pub async fn online_by_store(&self, alive_since: i64) -> Result<HashMap<String, Online>> {
        let rows: Vec<(String, bool, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT p.store, p.token_id = '' AS anonymous, CAST(SUM(p.tablets) AS BIGINT) \
             FROM presence p JOIN instances i ON i.id = p.instance_id \
             WHERE i.heartbeat_at >= $1 GROUP BY p.store, p.token_id = ''",
        )
        .bind(alive_since)
        .fetch_all(pool)
        .await)?;
        let mut out: HashMap<String, Online> = HashMap::new();
        for (store, anonymous, n) in rows {
            let e = out.entry(store).or_default();
            if anonymous {
                e.anonymous += n;
            } else {
                e.tablets += n;
            }
        }
        Ok(out)
    }

    /// Tablets online across the cluster per token of `store`, and on
    /// which instances (id → tablets).
    pub async fn online_by_token(
        &self,
        store: &str,
        alive_since: i64,
    ) -> Result<HashMap<String, Vec<(String, i64)>>> {
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT p.token_id, p.instance_id, p.tablets \
             FROM presence p JOIN instances i ON i.id = p.instance_id \
             WHERE i.heartbeat_at >= $1 AND p.store = $2 AND p.token_id <> '' \
             ORDER BY p.instance_id",
        )
        .bind(alive_since)
        .bind(store)
        .fetch_all(pool)
        .await)?;
        let mut out: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for (token, instance, n) in rows {
            out.entry(token).or_default().push((instance, n));
        }
        Ok(out)
    }

    // ---- delivery trails ----------------------------------------------

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
                    .execute(pool)
                    .await?;
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

    // ---- stores and tokens, as the console edits them ------------------

    pub async fn store_get(&self, slug: &str) -> Result<Option<Store>> {
        let rows: Vec<(String, String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT s.slug, s.name, n.number FROM stores s \
             LEFT JOIN store_numbers n ON n.store_id = s.id WHERE s.slug = $1 ORDER BY n.number",
        )
        .bind(slug)
        .fetch_all(pool)
        .await)?;
        let mut store: Option<Store> = None;
        for (slug, name, number) in rows {
            let s = store.get_or_insert_with(|| Store {
                slug,
                name,
                numbers: Vec::new(),
            });
            if let Some(n) = number {
                s.numbers.push(n);
            }
        }
        Ok(store)
    }

    /// Whether token-less tablets may follow `slug`: `None` when there is
    /// no such store.
    pub async fn store_anonymous(&self, slug: &str) -> Result<Option<bool>> {
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, bool>(
            "SELECT anonymous_tablets FROM stores WHERE slug = $1",
        )
        .bind(slug)
        .fetch_optional(pool)
        .await)?)
    }

    /// Opts `slug` in or out for token-less tablets; false when there is no
    /// such store.
    pub async fn store_set_anonymous(&self, slug: &str, allowed: bool) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query("UPDATE stores SET anonymous_tablets = $1 WHERE slug = $2")
            .bind(allowed)
            .bind(slug)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// The stores opted in for token-less tablets.
    pub async fn stores_anonymous(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT slug FROM stores WHERE anonymous_tablets",
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().collect())
    }

    pub async fn store_rename(&self, slug: &str, name: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query("UPDATE stores SET name = $1 WHERE slug = $2")
            .bind(name)
            .bind(slug)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Registers `number` (digits) to `slug`; a number another store holds
    /// is refused, naming it; one the store already has is a no-op.
    pub async fn store_number_add(&self, slug: &str, number: &str) -> Result<()> {
        let owner: Option<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT s.slug FROM store_numbers n JOIN stores s ON s.id = n.store_id WHERE n.number = $1",
        )
        .bind(number)
        .fetch_optional(pool)
        .await)?;
        match owner {
            Some(o) if o == slug => return Ok(()),
            Some(owner) => {
                return Err(Refusal::NumberTaken {
                    number: number.to_string(),
                    owner,
                }
                .into())
            }
            None => {}
        }
        let res = on_pool!(self, pool => sqlx::query(
            "INSERT INTO store_numbers (number, store_id) SELECT $1, id FROM stores WHERE slug = $2",
        )
        .bind(number)
        .bind(slug)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
        match res {
            Ok(0) => Err(Refusal::NoStore(slug.to_string()).into()),
            Ok(_) => Ok(()),
            // Lost a race for the number: name its owner.
            Err(sqlx::Error::Database(_)) => {
                Err(Refusal::NumberTakenMeanwhile(number.to_string()).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Unregisters one of the store's numbers; false when it has none such.
    pub async fn store_number_remove(&self, slug: &str, number: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "DELETE FROM store_numbers WHERE number = $1 \
             AND store_id IN (SELECT id FROM stores WHERE slug = $2)",
        )
        .bind(number)
        .bind(slug)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// What removing the store takes with it (its calls stay).
    pub async fn store_footprint(&self, slug: &str) -> Result<StoreFootprint> {
        let (numbers, live_tokens, calls): (i64, i64, i64) = on_pool!(self, pool => sqlx::query_as(
            "SELECT \
               (SELECT COUNT(*) FROM store_numbers n JOIN stores s ON s.id = n.store_id WHERE s.slug = $1), \
               (SELECT COUNT(*) FROM tokens t JOIN stores s ON s.id = t.store_id \
                  WHERE s.slug = $1 AND t.revoked_at IS NULL), \
               (SELECT COUNT(*) FROM calls WHERE store = $1)",
        )
        .bind(slug)
        .fetch_one(pool)
        .await)?;
        Ok(StoreFootprint {
            numbers,
            live_tokens,
            calls,
        })
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

    /// Every token of `slug`, revoked ones too, with when each was last seen.
    pub async fn tokens_of(&self, slug: &str) -> Result<Vec<TokenRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as::<_, TokenRow>(
            "SELECT t.id, s.slug AS store, t.label, t.created_at, t.revoked_at, t.last_seen_at \
             FROM tokens t JOIN stores s ON s.id = t.store_id WHERE s.slug = $1 \
             ORDER BY t.created_at, t.id",
        )
        .bind(slug)
        .fetch_all(pool)
        .await)?)
    }

    /// Token id → (store, label), for naming the tablets of a trail.
    pub async fn token_labels(&self, ids: &[String]) -> Result<HashMap<String, (String, String)>> {
        let mut out = HashMap::new();
        for id in ids {
            let row: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT s.slug, t.label FROM tokens t JOIN stores s ON s.id = t.store_id WHERE t.id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await)?;
            if let Some(r) = row {
                out.insert(id.clone(), r);
            }
        }
        Ok(out)
    }

    /// The store of a token, if the token exists.
    pub async fn token_store(&self, id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => sqlx::query_scalar(
            "SELECT s.slug FROM tokens t JOIN stores s ON s.id = t.store_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await)?)
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

/// Now, in the stored form.
pub fn now_millis() -> i64 {
    millis(Utc::now())
}
