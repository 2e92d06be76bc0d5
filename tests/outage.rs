//! The database goes away: CDRs are answered 503 (nothing stored, so the
//! provider retries) and succeed once it is back.

mod common;

use common::relay::Relay;
use sqlx::Connection;

fn cdr(seq: &str) -> Vec<(&'static str, String)> {
    vec![
        ("seq", seq.to_string()),
        ("sdt", "20261122101500".into()),
        ("fromn", "01012345678".into()),
        ("ton", "0212345678".into()),
    ]
}

async fn post(url: &str, seq: &str) -> (u16, String) {
    let r = common::http()
        .post(url)
        .form(&cdr(seq))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn ready(base: &str) -> (u16, serde_json::Value) {
    let r = common::http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
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
    let (code, status) = ready(&base).await;
    assert_eq!(code, 503);
    assert_eq!(status["database"], "down");
    relay.restore();
    assert_eq!(post(&url, "during").await, (200, "OK".to_string()));
    assert_eq!(ready(&base).await.0, 200);

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
