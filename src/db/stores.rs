//! The `stores` and `store_numbers` tables: registering stores and their
//! numbers, renaming, removing, and the anonymous-tablet opt-in.

use chrono::Utc;

use super::*;

/// A registered store and its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub slug: String,
    pub name: String,
    pub numbers: Vec<String>,
}

/// What removing a store takes with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFootprint {
    pub numbers: i64,
    pub live_tokens: i64,
    pub calls: i64,
}

impl Db {
    pub async fn store_add(&self, slug: &str, name: &str, numbers: &[String]) -> Result<()> {
        self.check_store_free(slug, numbers).await?;
        let now = millis(Utc::now());
        let res: Result<(), sqlx::Error> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO stores (slug, name, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(slug)
            .bind(name)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for number in numbers {
                sqlx::query("INSERT INTO store_numbers (number, store_id) VALUES ($1, $2)")
                    .bind(number)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        });
        match res {
            // Lost a race with another `store add`: say which part clashed.
            Err(sqlx::Error::Database(_)) => {
                self.check_store_free(slug, numbers).await?;
                Ok(res?)
            }
            other => Ok(other?),
        }
    }

    /// Adds several stores in one transaction: all or none.
    pub async fn stores_add_all(&self, stores: &[Store]) -> Result<()> {
        let now = millis(Utc::now());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for store in stores {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO stores (slug, name, created_at) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(&store.slug)
                .bind(&store.name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                for number in &store.numbers {
                    sqlx::query("INSERT INTO store_numbers (number, store_id) VALUES ($1, $2)")
                        .bind(number)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn check_store_free(&self, slug: &str, numbers: &[String]) -> Result<()> {
        if self.store_exists(slug).await? {
            return Err(Refusal::StoreExists(slug.to_string()).into());
        }
        if let Some((number, owner)) = self.number_owners(numbers).await?.into_iter().next() {
            return Err(Refusal::NumberTaken { number, owner }.into());
        }
        Ok(())
    }

    async fn number_owners(&self, numbers: &[String]) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        for number in numbers {
            let owner: Option<String> = on_pool!(self, pool => sqlx::query_scalar(
                "SELECT s.slug FROM store_numbers n JOIN stores s ON s.id = n.store_id WHERE n.number = $1",
            )
            .bind(number)
            .fetch_optional(pool)
            .await)?;
            if let Some(owner) = owner {
                found.push((number.clone(), owner));
            }
        }
        Ok(found)
    }

    pub async fn store_list(&self) -> Result<Vec<Store>> {
        let rows: Vec<(String, String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT s.slug, s.name, n.number FROM stores s \
             LEFT JOIN store_numbers n ON n.store_id = s.id ORDER BY s.slug, n.number",
        )
        .fetch_all(pool)
        .await)?;
        let mut stores: Vec<Store> = Vec::new();
        for (slug, name, number) in rows {
            if stores.last().map(|s| s.slug != slug).unwrap_or(true) {
                stores.push(Store {
                    slug,
                    name,
                    numbers: Vec::new(),
                });
            }
            if let (Some(number), Some(store)) = (number, stores.last_mut()) {
                store.numbers.push(number);
            }
        }
        Ok(stores)
    }

    /// A store's display name, if the store exists.
    pub async fn store_name(&self, slug: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, String>(
            "SELECT name FROM stores WHERE slug = $1",
        )
        .bind(slug)
        .fetch_optional(pool)
        .await)?)
    }

    pub async fn store_exists(&self, slug: &str) -> Result<bool> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM stores WHERE slug = $1",
        )
        .bind(slug)
        .fetch_one(pool)
        .await)?;
        Ok(n > 0)
    }

    /// Removes a store, its numbers and its tokens. Its calls stay.
    pub async fn store_remove(&self, slug: &str) -> Result<bool> {
        let res: Result<u64, sqlx::Error> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM tokens WHERE store_id IN (SELECT id FROM stores WHERE slug = $1)")
                .bind(slug).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM store_numbers WHERE store_id IN (SELECT id FROM stores WHERE slug = $1)")
                .bind(slug).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM stores WHERE slug = $1")
                .bind(slug).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n)
        });
        Ok(res? > 0)
    }

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
}
