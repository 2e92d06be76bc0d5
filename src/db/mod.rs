//! Storage: stores, tablet tokens, calls and reservations, on SQLite (the
//! embedded default) or PostgreSQL. Both run the same SQL; each has its own
//! migrations. Times are stored as milliseconds since the epoch (UTC).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::call::{CallEvent, CallStatus, EventKind};
use crate::cdr::Cdr;
use crate::token;

mod marks;
pub use console::{
    now_millis, CallFilter, InstanceRow, Online, StoreFootprint, TokenRow, TrailRow,
};
pub use marks::PublishMarks;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a request waits for a database connection before it is answered
/// `503` (the provider then retries).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// `url` with its password shown as `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A connection pool to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool this is.
/// Token ids asked about in one statement by the revocation check.
const TOKEN_CHECK_CHUNK: usize = 5_000;

macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

// After the macro, which it uses.
mod console;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A request the data does not allow; the caller can correct it.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The mark writer (see `marks`) failed or stopped.
    #[error("database: {0}")]
    Background(#[from] BackgroundError),
    /// The database could not be opened at all.
    #[error("database: {0}")]
    Open(#[from] OpenError),
}

impl DbError {
    /// Whether a pooled connection turned out to be dead: the database went
    /// away and came back since the connection was last used. Such a
    /// failure is immediate, and another connection may well work.
    pub fn is_dead_connection(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(self, DbError::Sql(sqlx::Error::Io(e))
            if matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted))
    }
}

/// What the stored data does not allow, said so the caller can correct it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("store {0} already exists")]
    StoreExists(String),
    #[error("number {number} is already registered to store {owner}")]
    NumberTaken { number: String, owner: String },
    /// Lost a race for the number: its owner was not read.
    #[error("number {0} is already registered to another store")]
    NumberTakenMeanwhile(String),
    #[error("no store {0}")]
    NoStore(String),
}

impl Refusal {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Refusal::StoreExists(_) => "slug",
            Refusal::NumberTaken { .. } | Refusal::NumberTakenMeanwhile(_) => "number",
            Refusal::NoStore(_) => "store",
        }
    }
}

/// Why the mark writer did not write a mark.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackgroundError {
    #[error("the mark writer has stopped")]
    Stopped,
    #[error("{0}")]
    Failed(std::sync::Arc<sqlx::Error>),
}

/// Why the database could not be opened, said the way a person checks it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connection refused at {0} (is PostgreSQL running?)")]
    Refused(String),
    #[error("no answer from {0} within {secs} s (is the host reachable?)", secs = ACQUIRE_TIMEOUT.as_secs())]
    NoAnswer(String),
    /// Anything else (authentication, unknown database, a bad SQLite path),
    /// with the URL, its password hidden.
    #[error("cannot open {url}: {source}")]
    Other { url: String, source: sqlx::Error },
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A registered store and its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub slug: String,
    pub name: String,
    pub numbers: Vec<String>,
}

/// A tablet token as listed (never the token itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: String,
    pub store: String,
    pub label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

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
    Changed(CallRow),
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

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reservation {
    pub id: i64,
    pub store: String,
    pub call_id: Option<String>,
    pub customer_number: String,
    pub car_number: Option<String>,
    pub car_model: Option<String>,
    pub service: Option<String>,
    pub reserved_at: i64,
    pub memo: Option<String>,
    pub created_at: i64,
}

/// What a store knows of one caller (docs/http-api.md, "Customers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// Calls from this number to the store, before the asked time.
    pub calls: i64,
    /// When the latest of them started.
    pub last_call_at: Option<i64>,
    /// Reservations made for this number.
    pub reservations: i64,
    /// The one with the latest reserved time.
    pub last_reservation: Option<Reservation>,
}

/// The fields of a new reservation.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub call_id: Option<String>,
    pub customer_number: String,
    pub car_number: Option<String>,
    pub car_model: Option<String>,
    pub service: Option<String>,
    pub reserved_at: DateTime<Utc>,
    pub memo: Option<String>,
}

/// Creates a missing SQLite file readable by its owner only: it holds
/// callers' numbers. SQLite gives the `-wal` and `-shm` files the mode of
/// the database file. An existing file is left as it is.
fn create_private(path: &std::path::Path) -> Result<()> {
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DbError::Sql(sqlx::Error::Io(e))),
        }
    }
    Ok(())
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    // Every stored time comes from the clock or a checked CDR date, both far
    // inside chrono's range (±262,000 years); only a hand-edited row can
    // miss it, and it then reads as the epoch rather than failing a list.
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

const CALL_COLUMNS: &str = "seq, store, status, started_at, answered_at, ended_at, caller, \
     virtual_number, updated_at, acknowledged_at, acknowledged_by";

impl Db {
    /// Opens a pool for `url` (`sqlite:` creates the file when missing).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_sized(url, crate::config::PG_POOL_SIZE).await
    }

    /// Opens a pool for `url` holding at most `pool_size` connections on
    /// PostgreSQL (SQLite's pool stays at 8: one file, one writer).
    pub async fn connect_sized(url: &str, pool_size: u32) -> Result<Self> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?;
            create_private(opts.get_filename())?;
            let opts = opts
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an `OK` to the provider survives a power cut.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(ACQUIRE_TIMEOUT)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|source| OpenError::Other {
                    url: url.to_string(),
                    source,
                })?;
            Ok(Db::Sqlite(pool))
        } else {
            // One plain connection first: a pool would retry a refused
            // connection until its timeout and report only "timed out".
            let opts = PgConnectOptions::from_str(url)?;
            let at = format!("{}:{}", opts.get_host(), opts.get_port());
            let other = |source| OpenError::Other {
                url: redact_url(url),
                source,
            };
            match tokio::time::timeout(
                ACQUIRE_TIMEOUT,
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
            )
            .await
            {
                Err(_) => return Err(OpenError::NoAnswer(at).into()),
                Ok(Err(sqlx::Error::Io(e)))
                    if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    return Err(OpenError::Refused(at).into())
                }
                Ok(Err(e)) => return Err(other(e).into()),
                Ok(Ok(conn)) => {
                    let _ = sqlx::Connection::close(conn).await;
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(pool_size.max(1))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // No ping before each query: it doubled the round trips of
                // every CDR. A connection that died is found by the query
                // itself and dropped; intake then tries another
                // (`intake::store`), so a CDR is not refused for it.
                .test_before_acquire(false)
                .connect_with(opts)
                .await
                .map_err(other)?;
            Ok(Db::Postgres(pool))
        }
    }

    /// For a background writer whose rows may be lost in a crash (publish
    /// marks, delivery trails): on PostgreSQL one connection of its own
    /// beside the pool, so it never holds one a CDR waits for, whose
    /// commits do not wait for the disk and whose statements are planned
    /// for each batch's size. On SQLite the same pool (one file, one writer).
    pub fn background_writer(&self) -> Db {
        match self {
            Db::Postgres(pool) => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .test_before_acquire(false)
                    .connect_lazy_with((*pool.connect_options()).clone().options([
                        ("synchronous_commit", "off"),
                        // A plan cached while `calls` was small (a hash
                        // join over a sequential scan) stayed in use as the
                        // table grew: at 200,000 rows each batch of marks
                        // took ~50 ms and intake fell to 300 CDRs/s. Plan
                        // each batch for its size.
                        ("plan_cache_mode", "force_custom_plan"),
                    ])),
            ),
            Db::Sqlite(_) => self.clone(),
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Db::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Db::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// The most connections the pool opens.
    pub fn pool_size(&self) -> u32 {
        on_pool!(self, pool => pool.options().get_max_connections())
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        let run = async {
            on_pool!(self, pool => sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await)
        };
        matches!(tokio::time::timeout(ACQUIRE_TIMEOUT, run).await, Ok(Ok(1)))
    }

    // ---- stores -------------------------------------------------------

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

    // ---- tokens -------------------------------------------------------

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

    // ---- calls --------------------------------------------------------

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
        let now = millis(Utc::now());
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
            .fetch_optional(pool)
            .await)?;
        if let Some(row) = changed {
            return Ok(Upsert::Changed(row));
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
                sqlx::query(
                    "UPDATE calls SET event_pending = 0 \
                     FROM UNNEST($1::text[], $2::int8[]) AS p(seq, updated_at) \
                     WHERE calls.seq = p.seq AND calls.updated_at = p.updated_at",
                )
                .bind(seqs)
                .bind(times)
                .execute(pool)
                .await?;
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
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let (before_at, before_seq) = before.unwrap_or((i64::MAX, ""));
        let page = "AND (updated_at < $2 OR (updated_at = $2 AND seq < $3)) \
             ORDER BY updated_at DESC, seq DESC LIMIT $4";
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

    // ---- reservations -------------------------------------------------

    pub async fn reservation_add(&self, store: &str, r: &NewReservation) -> Result<Reservation> {
        Ok(on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "INSERT INTO reservations (store, call_id, customer_number, car_number, car_model, \
                service, reserved_at, memo, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at",
        )
        .bind(store)
        .bind(r.call_id.as_deref())
        .bind(&r.customer_number)
        .bind(r.car_number.as_deref())
        .bind(r.car_model.as_deref())
        .bind(r.service.as_deref())
        .bind(millis(r.reserved_at))
        .bind(r.memo.as_deref())
        .bind(millis(Utc::now()))
        .fetch_one(pool)
        .await)?)
    }

    /// What a store knows of one caller: their calls started before
    /// `before` (how many, and when the latest started) and their latest
    /// reservation.
    pub async fn customer(
        &self,
        store: &str,
        number: &str,
        before: DateTime<Utc>,
    ) -> Result<Customer> {
        let (calls, last_call_at): (i64, Option<i64>) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*), MAX(started_at) FROM calls \
             WHERE store = $1 AND caller = $2 AND started_at < $3",
        )
        .bind(store)
        .bind(number)
        .bind(millis(before))
        .fetch_one(pool)
        .await)?;
        let reservations: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM reservations WHERE store = $1 AND customer_number = $2",
        )
        .bind(store)
        .bind(number)
        .fetch_one(pool)
        .await)?;
        let last_reservation = on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "SELECT id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at FROM reservations \
             WHERE store = $1 AND customer_number = $2 \
             ORDER BY reserved_at DESC, id DESC LIMIT 1",
        )
        .bind(store)
        .bind(number)
        .fetch_optional(pool)
        .await)?;
        Ok(Customer {
            calls,
            last_call_at,
            reservations,
            last_reservation,
        })
    }

    /// A store's reservations whose time falls in `[from, to)`.
    pub async fn reservations_between(
        &self,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Reservation>> {
        Ok(on_pool!(self, pool => sqlx::query_as::<_, Reservation>(
            "SELECT id, store, call_id, customer_number, car_number, car_model, service, \
                reserved_at, memo, created_at FROM reservations \
             WHERE store = $1 AND reserved_at >= $2 AND reserved_at < $3 ORDER BY reserved_at, id",
        )
        .bind(store)
        .bind(millis(from))
        .bind(millis(to))
        .fetch_all(pool)
        .await)?)
    }
}
