//! The database goes away: CDRs are answered 503 (nothing stored, so the
//! provider retries) and succeed once it is back. And how many connections
//! an instance holds to PostgreSQL (`database.pool_size`).

mod common;

use common::relay::Relay;
use sqlx::Connection;

async fn post(url: &str, seq: &str) -> (u16, String) {
    let r = common::http()
        .post(url)
        .form(&common::cdr_fields(seq))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_then_back() {
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let mut upstream = url::Url::parse(db.url()).unwrap();
    let relay = Relay::start(format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap_or(5432)
    ))
    .await;
    upstream.set_port(Some(relay.port)).unwrap();
    let server = common::start(common::config_for(upstream.as_str())).await;
    let base = common::base(server.addr);
    let url = format!("{base}/bizcall/cdr");

    assert_eq!(post(&url, "before").await.0, 200);
    // Several CDRs at once leave several connections idle in the pool: all
    // of them die with the cut, and the first CDR after it must not fail on
    // them (each is found dead by its query; another connection is tried).
    let posts: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &format!("busy{i}")).await.0 })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.unwrap(), 200);
    }
    relay.cut();
    let (code, body) = post(&url, "during").await;
    assert_eq!((code, body.as_str()), (503, "unavailable: database"));
    let (code, status) = common::ready(&base).await;
    assert_eq!(code, 503);
    assert_eq!(status["database"], "down");
    relay.restore();
    assert_eq!(post(&url, "during").await, (200, "OK".to_string()));
    assert_eq!(common::ready(&base).await.0, 200);

    let check = db.connect().await;
    assert!(check.call("before").await.unwrap().is_some());
    assert!(check.call("during").await.unwrap().is_some());
    check.close().await;
    server.stop().await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_then_free() {
    let db = common::TestDb::new(common::Backend::Sqlite).await;
    let server = common::start(common::config_for(db.url())).await;
    let url = format!("{}/bizcall/cdr", common::base(server.addr));
    assert_eq!(post(&url, "before").await.0, 200);

    // Another process-like connection holds the write lock.
    let mut locker = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let (code, body) = post(&url, "during").await;
    assert_eq!((code, body.as_str()), (503, "unavailable: database"));
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();

    assert!(server.app.db.call("during").await.unwrap().is_none());
    assert_eq!(post(&url, "during").await, (200, "OK".to_string()));
    assert!(server.app.db.call("during").await.unwrap().is_some());
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// Connections to database `name` now, read from `pg_stat_activity` over a
/// connection to another database (so the reading one is not counted).
async fn connections_to(name: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(&common::pg_admin_url())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    n
}

/// A burst of 64 CDRs at once on an instance whose pool holds at most
/// `pool_size` connections: how many of them were stored, and how many
/// connections the instance had open afterwards (idle pooled connections
/// stay open, so this is the most the burst opened).
async fn burst(pool_size: u32) -> (usize, i64, i64) {
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let common::TestDb::Postgres { name, .. } = &db else {
        unreachable!("a PostgreSQL test database")
    };
    let name = name.clone();
    let mut config = common::config_for(db.url());
    config.database.pool_size = pool_size;
    let server = common::start(config).await;
    server
        .app
        .db
        .store_add("pool", "pool", &["0212345678".to_string()])
        .await
        .unwrap();
    let url = format!("{}/bizcall/cdr", common::base(server.addr));
    let posts: Vec<_> = (0..64)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &format!("pool{i}")).await.0 })
        })
        .collect();
    let mut ok = 0;
    for p in posts {
        if p.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let open = connections_to(&name).await;
    let stored = server.app.db.count_calls().await.unwrap();
    server.stop().await.unwrap();
    db.cleanup().await;
    (ok, stored, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_caps_the_connections_to_postgresql() {
    // Two pooled connections, and the two background writers' own.
    let (ok, stored, open) = burst(2).await;
    assert_eq!((ok, stored), (64, 64), "every CDR answered OK and stored");
    assert!(open <= 4, "{open} connections with database.pool_size = 2");
    // The same burst with the default pool opens more than that: the cap
    // above is the setting's doing, not the burst's size.
    let (ok, stored, open_default) = burst(16).await;
    assert_eq!((ok, stored), (64, 64));
    assert!(
        open_default > 4,
        "{open_default} connections with the default pool of 16"
    );
    println!("connections after 64 CDRs at once: pool_size 2 → {open}, 16 → {open_default}");
}
