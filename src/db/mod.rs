//! Storage on SQLite (the embedded default) or PostgreSQL: the pool, its
//! migrations and errors here, one file per table beside it (stores,
//! tokens, calls, reservations, presence, trails, marks). Both databases
//! run the same SQL; each has its own migrations. Times are stored as
//! milliseconds since the epoch (UTC).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use calls::{CallFilter, CallRow, Conflict, Upsert};
pub use marks::PublishMarks;
pub use presence::{now_millis, InstanceRow, Online};
pub use reservations::{Customer, NewReservation, Reservation};
pub use stores::{Store, StoreFootprint};
pub use tokens::{TokenInfo, TokenRow};
pub use trails::TrailRow;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// Without sqlx's own lock: see [`Db::migrate`].
static POSTGRES_MIGRATIONS: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.set_locking(false);
        m
    });
/// The transaction-level advisory lock migrations on PostgreSQL hold
/// ("bizcall" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_697a_6361_6c6c;

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
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

// After the macro, which they use.
mod calls;
mod jobs;
mod marks;
mod presence;
mod reservations;
mod stores;
mod tokens;
mod trails;

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
    /// No answer within `database.timeout`: stalled, or unreachable
    /// without a reset.
    #[error("database: no answer within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
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

    /// Whether the database's disk is full: SQLite's `SQLITE_FULL` (13),
    /// PostgreSQL's `disk_full` (53100).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, DbError::Sql(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("13" | "53100")))
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
    #[error("the database {name} does not exist on {at}: create it with `createdb -h {host} -p {port} -U {user} {name}` (or CREATE DATABASE {name}), or point database.url at another")]
    MissingDatabase {
        name: String,
        at: String,
        host: String,
        port: u16,
        user: String,
    },
    /// Anything else (authentication, a bad SQLite path),
    /// with the URL, its password hidden.
    #[error("cannot open {url}: {source}")]
    Other { url: String, source: sqlx::Error },
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

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
                Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
                    return Err(OpenError::MissingDatabase {
                        name: opts.get_database().unwrap_or("postgres").to_string(),
                        at,
                        host: opts.get_host().to_string(),
                        port: opts.get_port(),
                        user: opts.get_username().to_string(),
                    }
                    .into())
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
    /// beside the pool, so it never holds one a CDR waits for. Its
    /// statements run in [`background_tx`] (commits that do not wait for
    /// the disk, plans made for each batch). On SQLite the same pool (one
    /// file, one writer).
    pub fn background_writer(&self) -> Db {
        match self {
            Db::Postgres(pool) => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .test_before_acquire(false)
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
            Db::Sqlite(_) => self.clone(),
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Db::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Db::Postgres(pool) => {
                // One transaction holding a transaction-level lock, not
                // sqlx's session lock: through a pooler in transaction mode
                // (PgBouncer) a session lock is taken on one server
                // connection and released on another, and the next
                // instance to start waits for it forever. Each migration
                // runs in a savepoint of this transaction.
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
                POSTGRES_MIGRATIONS.run_direct(&mut *tx).await?;
                tx.commit().await?;
            }
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
}

impl Db {
    /// The database server's clock in ms since the epoch, for the fleet's
    /// clock (`crate::clock`); `None` for SQLite, which shares this host's
    /// clock with every instance that can open it.
    pub async fn clock_ms(&self) -> std::result::Result<Option<i64>, DbError> {
        match self {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(pool) => {
                let sql = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";
                Ok(Some(
                    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?,
                ))
            }
        }
    }
}

impl crate::clock::ServerClock for Db {
    async fn read(&self) -> Option<i64> {
        self.clock_ms().await.ok().flatten()
    }
}

/// A transaction for a background writer's batch on PostgreSQL, with the
/// writer's settings for that transaction alone (`SET LOCAL`), so they
/// hold through a pooler in transaction mode (PgBouncer), where session
/// settings and startup options reach whichever server connection the
/// pooler picks, or none:
///
/// - `synchronous_commit = off`: the batch's commit does not wait for the
///   disk (a crash may lose a mark or a trail row, never a call);
/// - `plan_cache_mode = force_custom_plan`: a plan cached while `calls`
///   was small (a hash join over a sequential scan) stayed in use as the
///   table grew: at 200,000 rows each batch of marks took ~50 ms and
///   intake fell to 300 CDRs/s. Each batch is planned for its size.
pub(crate) async fn background_tx(
    pool: &sqlx::PgPool,
) -> std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // set_config(…, true) is SET LOCAL, both in one round trip.
    sqlx::query(
        "SELECT set_config('synchronous_commit', 'off', true), \
                set_config('plan_cache_mode', 'force_custom_plan', true)",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}
