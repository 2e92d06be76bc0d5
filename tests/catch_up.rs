//! Catch-up after a bus gap, on real processes, PostgreSQL and RabbitMQ.
//!
//! Instance A holds the tablets and reaches the broker through a relay the
//! test cuts for a few seconds; instance B takes the CDRs of many stores at
//! a high rate and publishes them straight to the broker. What B published
//! while A's link was down never reaches A's (deleted, auto-delete) queue:
//! A must replay it from the database when the bus returns. The database
//! also holds more than 10,000 recent changes of a store with no tablet on
//! A, which a catch-up that read the oldest changes of every store and
//! filtered afterwards used to spend its whole budget on.
//!
//! The same runs with store-routed delivery: there A's new queue must be
//! bound again to every store with a tablet on A before the replay, and B,
//! which holds no tablet, receives no call event at all.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::fleet::vn;
use common::relay::Relay;
use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};

const STORES: usize = 30;
const RATE_PER_SEC: u64 = 100;
const SEND_FOR: Duration = Duration::from_secs(9);
const OUTAGE: Duration = Duration::from_secs(4);

/// The stores' numbers: 0508000 and the store's index.
const SERIES: &str = "0508000";

/// What one store's tablet received: call id → (arrived, expiresAt).
type Seen = Arc<Mutex<HashMap<String, (DateTime<Utc>, DateTime<Utc>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_inside_its_ttl_reaches_its_tablet_after_a_bus_gap() {
    after_a_bus_gap("fanout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routing_binds_again_and_replays_after_a_bus_gap() {
    after_a_bus_gap("store").await;
}

async fn after_a_bus_gap(routing: &str) {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let pool = db.connect().await;
    let mut tokens = Vec::new();
    for s in 0..STORES {
        let slug = format!("s{s:02}");
        pool.store_add(&slug, &slug, &[vn(SERIES, s)])
            .await
            .unwrap();
        tokens.push((slug.clone(), pool.token_issue(&slug, "t").await.unwrap().1));
    }
    pool.store_add("elsewhere", "Elsewhere", &["0509999".into()])
        .await
        .unwrap();
    // 12,000 changes of a store with no tablet on A, made just now.
    if let bizcall::db::Db::Postgres(p) = &pool {
        let now = bizcall::db::millis(Utc::now());
        sqlx::query(
            "INSERT INTO calls (seq, store, status, status_rank, started_at, caller, destination, \
                 extras, fingerprint, received_at, updated_at) \
             SELECT 'bulk' || g, 'elsewhere', 'ringing', 0, $1, '0101', '0509999', '{}', 'f', $1, $1 \
             FROM generate_series(1, 12000) AS g",
        )
        .bind(now)
        .execute(p)
        .await
        .unwrap();
    }
    pool.close().await;

    let relay = Relay::start("127.0.0.1:5672".into()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push(("BIZCALL_BUS__MESSAGE_TTL".into(), "20s".into()));
    env.push(("BIZCALL_AMQP__ROUTING".into(), routing.into()));
    let mut env_a = env.clone();
    env_a.retain(|(k, _)| k != "BIZCALL_AMQP__URL");
    env_a.push((
        "BIZCALL_AMQP__URL".into(),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port),
    ));
    let a = Instance::spawn(dir.path(), &common::env_refs(&env_a));
    let b = Instance::spawn(dir.path(), &common::env_refs(&env));
    for base in [a.base(), b.base()] {
        common::bus_up(&base, Duration::from_secs(60)).await;
    }

    // One tablet per store on A.
    let ws = format!("ws://{}/ws", a.addr);
    let mut seen: Vec<Seen> = Vec::new();
    let foreign = Arc::new(Mutex::new(Vec::<String>::new()));
    for (slug, token) in &tokens {
        let mut c = Client::open(&ws, None, None).await;
        c.connect(token).await;
        c.subscribe(slug, "0", "auto").await;
        let log: Seen = Arc::default();
        seen.push(log.clone());
        let (slug, foreign) = (slug.clone(), foreign.clone());
        tokio::spawn(async move {
            while let Some(f) = c.next(Duration::from_secs(120)).await {
                if f.command != "MESSAGE" {
                    continue;
                }
                let now = Utc::now();
                let body = f.json();
                let id = body["callId"].as_str().unwrap_or("").to_string();
                if body["store"] != slug.as_str() {
                    foreign.lock().unwrap().push(id.clone());
                }
                let expires: DateTime<Utc> = body["expiresAt"].as_str().unwrap().parse().unwrap();
                log.lock().unwrap().entry(id).or_insert((now, expires));
            }
        });
    }

    // CDRs of every store to B, at a steady rate, while A's link is cut.
    let sent: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let sender = {
        let (base, sent) = (b.base(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
            let total = SEND_FOR.as_millis() as u64 * RATE_PER_SEC / 1000;
            for i in 0..total as usize {
                tick.tick().await;
                let (base, sent) = (base.clone(), sent.clone());
                tokio::spawn(async move {
                    let store = i % STORES;
                    let seq = format!("gap{i}");
                    let code = common::post_call(&base, &seq, &vn(SERIES, store)).await;
                    assert_eq!(code, 200, "{seq}");
                    sent.lock().unwrap().push((store, seq));
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.cut();
    common::eventually(Duration::from_secs(10), "A notices the gap", || {
        let base = a.base();
        async move { common::metric(&base, "bizcall_bus_connected").await == 0.0 }
    })
    .await;
    tokio::time::sleep(OUTAGE).await;
    relay.restore();
    sender.await.unwrap();
    common::bus_up(&a.base(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = sent.lock().unwrap().clone();
    assert!(sent.len() as u64 >= SEND_FOR.as_secs() * RATE_PER_SEC * 9 / 10);

    // Every CDR (each well inside its 20 s TTL when the bus returned)
    // reaches its store's tablet, and none after its expiresAt.
    let missing = || {
        sent.iter()
            .filter(|(store, seq)| !seen[*store].lock().unwrap().contains_key(seq))
            .count()
    };
    common::eventually(Duration::from_secs(15), "every popup delivered", || {
        let n = missing();
        async move { n == 0 }
    })
    .await;
    for log in &seen {
        for (id, (at, expires)) in log.lock().unwrap().iter() {
            assert!(
                at <= expires,
                "{id} arrived at {at}, after its expiresAt {expires}"
            );
        }
    }
    let delivered: HashSet<String> = seen
        .iter()
        .flat_map(|l| l.lock().unwrap().keys().cloned().collect::<Vec<_>>())
        .collect();
    assert!(!delivered.iter().any(|id| id.starts_with("bulk")));
    assert!(foreign.lock().unwrap().is_empty());

    let replayed = common::metric(&a.base(), "bizcall_catch_up_changes_total").await;
    assert!(replayed > 0.0, "the gap was filled from the database");
    assert_eq!(
        common::metric(&a.base(), "bizcall_catch_up_cut_total").await,
        0.0
    );
    assert!(a.log_text().contains("caught up after a bus gap"));
    if routing == "store" {
        // Bound again to every store with a tablet on A, and to no other.
        assert_eq!(
            common::metric(&a.base(), "bizcall_bus_bound_stores").await,
            STORES as f64
        );
        let binds =
            common::metric_labelled(&a.base(), "bizcall_bus_bindings_total", "op=\"bind\"").await;
        assert_eq!(
            binds,
            2.0 * STORES as f64,
            "bound at start and after the gap"
        );
        // B holds no tablet: no call event reaches its queue.
        assert_eq!(
            common::metric(&b.base(), "bizcall_events_consumed_total").await,
            0.0
        );
    } else {
        assert!(common::metric(&b.base(), "bizcall_events_consumed_total").await > 0.0);
    }

    drop(a);
    drop(b);
    broker.cleanup().await;
    db.cleanup().await;
}

/// The catch-up query: only the stores asked for, only changes at or after
/// `since`, newest first, in pages that neither repeat nor skip a row (also
/// when several changes share a millisecond).
async fn catch_up_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    let insert = "INSERT INTO calls (seq, store, status, status_rank, started_at, caller, \
         destination, extras, fingerprint, received_at, updated_at) \
         VALUES ($1, $2, 'ringing', 0, $3, '0101', '02', '{}', 'f', $3, $3)";
    let base = 1_000_000i64;
    let mut want = Vec::new();
    for i in 0..40i64 {
        let store = ["a", "b", "c"][(i % 3) as usize];
        // Pairs of changes share a millisecond.
        let at = base + i / 2;
        let seq = format!("p{i:02}");
        match &pool {
            bizcall::db::Db::Sqlite(p) => sqlx::query(insert)
                .bind(&seq)
                .bind(store)
                .bind(at)
                .execute(p)
                .await
                .map(|_| ()),
            bizcall::db::Db::Postgres(p) => sqlx::query(insert)
                .bind(&seq)
                .bind(store)
                .bind(at)
                .execute(p)
                .await
                .map(|_| ()),
        }
        .unwrap();
        if store != "b" && at >= base + 5 {
            want.push((at, seq));
        }
    }
    want.sort_by(|x, y| y.cmp(x));
    let stores = vec!["a".to_string(), "c".to_string()];
    let since = bizcall::db::from_millis(base + 5);
    let mut got = Vec::new();
    let mut cursor: Option<(i64, String)> = None;
    loop {
        let before = cursor.as_ref().map(|(at, s)| (*at, s.as_str()));
        let page = pool
            .calls_changed_since(&stores, since, before, 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        got.extend(page.iter().map(|r| (r.updated_at, r.seq.clone())));
        match page.last() {
            Some(last) if page.len() == 3 => cursor = Some((last.updated_at, last.seq.clone())),
            _ => break,
        }
    }
    assert_eq!(got, want);
    assert!(pool
        .calls_changed_since(&[], since, None, 3)
        .await
        .unwrap()
        .is_empty());
    pool.close().await;
    db.cleanup().await;
}
on_both_databases!(pages, catch_up_pages);
