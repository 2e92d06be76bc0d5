//! The `tokens` table: tablet tokens, stored hashed; issuing, listing,
//! revoking and checking them.

use std::collections::HashMap;

use chrono::Utc;

use super::*;
use crate::token;

/// Token ids asked about in one statement by the revocation check.
const TOKEN_CHECK_CHUNK: usize = 5_000;

/// A tablet token as listed (never the token itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: String,
    pub store: String,
    pub label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
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

impl Db {
    /// Issues a new tablet token; returns its id and the token, which is
    /// stored only as a hash.
    pub async fn token_issue(&self, slug: &str, label: &str) -> Result<(String, String)> {
        let store_id: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT id FROM stores WHERE slug = $1",
        )
        .bind(slug)
        .fetch_optional(pool)
        .await)?;
        let store_id = store_id.ok_or_else(|| Refusal::NoStore(slug.to_string()))?;
        let issued = token::Issued::generate();
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO tokens (id, store_id, label, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&issued.id)
        .bind(store_id)
        .bind(label)
        .bind(token::hash(&issued.token))
        .bind(millis(Utc::now()))
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok((issued.id, issued.token))
    }

    pub async fn token_list(&self, slug: &str) -> Result<Vec<TokenInfo>> {
        if !self.store_exists(slug).await? {
            return Err(Refusal::NoStore(slug.to_string()).into());
        }
        Ok(on_pool!(self, pool => sqlx::query_as::<_, TokenInfo>(
            "SELECT t.id, s.slug AS store, t.label, t.created_at, t.revoked_at \
             FROM tokens t JOIN stores s ON s.id = t.store_id WHERE s.slug = $1 ORDER BY t.created_at, t.id",
        )
        .bind(slug)
        .fetch_all(pool)
        .await)?)
    }

    pub async fn token_revoke(&self, id: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(millis(Utc::now()))
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// The live (unrevoked) token matching `presented`, if any. The lookup is
    /// by hash, and the hashes are compared again in constant time.
    pub async fn token_verify(&self, presented: &str) -> Result<Option<TokenInfo>> {
        if !token::looks_valid(presented) {
            return Ok(None);
        }
        let hash = token::hash(presented);
        let row: Option<(TokenInfo, String)> = on_pool!(self, pool => sqlx::query_as::<_, (String, String, String, i64, Option<i64>, String)>(
            "SELECT t.id, s.slug, t.label, t.created_at, t.revoked_at, t.hash \
             FROM tokens t JOIN stores s ON s.id = t.store_id WHERE t.hash = $1",
        )
        .bind(&hash)
        .fetch_optional(pool)
        .await)?
        .map(|(id, store, label, created_at, revoked_at, stored)| {
            (TokenInfo { id, store, label, created_at, revoked_at }, stored)
        });
        Ok(row.and_then(|(info, stored)| {
            (token::hashes_equal(&stored, &hash) && info.revoked_at.is_none()).then_some(info)
        }))
    }

    /// Ids of tokens that are revoked (or whose store is gone) among `ids`.
    /// Reads only the rows of `ids` (the tokens connected to this
    /// instance), never the fleet's whole token table.
    pub async fn tokens_not_live(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut live = std::collections::HashSet::new();
        for chunk in ids.chunks(TOKEN_CHECK_CHUNK) {
            let rows: Vec<String> =
                match self {
                    Db::Sqlite(pool) => {
                        let list = serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into());
                        sqlx::query_scalar(
                            "SELECT id FROM tokens WHERE revoked_at IS NULL \
                         AND id IN (SELECT value FROM json_each($1))",
                        )
                        .bind(list)
                        .fetch_all(pool)
                        .await?
                    }
                    Db::Postgres(pool) => sqlx::query_scalar(
                        "SELECT id FROM tokens WHERE revoked_at IS NULL AND id = ANY($1::text[])",
                    )
                    .bind(chunk)
                    .fetch_all(pool)
                    .await?,
                };
            live.extend(rows);
        }
        Ok(ids
            .iter()
            .filter(|id| !live.contains(*id))
            .cloned()
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
}
