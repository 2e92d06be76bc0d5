//! The `instances` and `presence` tables: each instance's heart-beat and
//! how many tablets it holds per store and token.

use std::collections::HashMap;

use super::*;
use crate::presence_book::PresenceKey;

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

/// Now, in the stored form.
pub fn now_millis() -> i64 {
    millis(crate::clock::now())
}

impl Db {
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
}
