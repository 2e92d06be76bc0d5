//! Store-routed delivery under subscribe churn, on two real `bizcall`
//! processes, PostgreSQL and RabbitMQ: tablets of a few stores connect and
//! disconnect in a tight loop on both instances while calls of those stores
//! flow into one of them. With a short `amqp.unbind_grace`, bindings come
//! and go all the time; a call made while a tablet is subscribed must reach
//! it (also when its store's binding was not yet in place: the replay after
//! binding covers that window), and no tablet gets one call twice.
//!
//! B reaches the broker through a relay that holds every packet 40 ms each
//! way, so that each of its bindings takes a round trip of 80 ms or more:
//! longer than a tablet takes from CONNECT to its SUBSCRIBE receipt, so calls
//! fall into that window, and only the replay brings them.
//!
//! The second test measures the bindings under store churn (50 tablet
//! visits a second on one instance) with stores that come back within
//! `amqp.unbind_grace` and stores that come back after it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fleet::{add_stores, vn};
use common::relay::Relay;
use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};
use rand::Rng;
use tokio::time::Instant;

const STORES: usize = 4;
const RATE_PER_SEC: u64 = 40;
const SEND_FOR: Duration = Duration::from_secs(15);
/// A call is owed to a session only if it was answered this long before
/// the session ended: time for it to travel, not a speed requirement.
const MARGIN: Duration = Duration::from_millis(1500);

/// The stores' numbers: 0507100 and the store's index.
const SERIES: &str = "0507100";

/// One tablet connection: when it was subscribed, when it ended, and the
/// call events it received (with repeats).
struct Session {
    store: usize,
    subscribed: Instant,
    ended: Instant,
    calls: Vec<String>,
}

/// A sent call: its store, seq, when the request was sent and when the
/// webhook answered.
struct Sent {
    store: usize,
    seq: String,
    sent: Instant,
    answered: Instant,
}

/// Connects, subscribes, holds 1.5–3 s reading, disconnects, waits 0–400 ms
/// (often past the grace, so the store is unbound), until `until`.
async fn churn(ws: String, store: usize, token: String, until: Instant) -> Vec<Session> {
    let mut sessions = Vec::new();
    let slug = format!("c{store}");
    while Instant::now() < until {
        let mut c = Client::open(&ws, None, None).await;
        c.connect(&token).await;
        c.subscribe(&slug, "0", "auto").await;
        let subscribed = Instant::now();
        let hold = Duration::from_millis(rand::rng().random_range(1500..3000));
        let mut calls = Vec::new();
        let end = subscribed + hold;
        while let Some(f) = c.next(end.saturating_duration_since(Instant::now())).await {
            if f.command == "MESSAGE" {
                let body = f.json();
                if body["type"] == "call" {
                    assert_eq!(body["store"], slug.as_str(), "another store's call");
                    calls.push(body["callId"].as_str().unwrap_or("").to_string());
                }
            }
            if Instant::now() >= end {
                break;
            }
        }
        drop(c);
        sessions.push(Session {
            store,
            subscribed,
            ended: Instant::now(),
            calls,
        });
        // Every other gap is shorter than the grace (the binding stays
        // through the reconnect) or well past it (the store is unbound
        // and bound again, with its replay), so the bindings churn on
        // every run, however slow the machine.
        let gap = if sessions.len() % 2 == 1 {
            rand::rng().random_range(0..150)
        } else {
            rand::rng().random_range(450..600)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablets_churning_miss_nothing_and_get_nothing_twice() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let pool = db.connect().await;
    let mut tokens = Vec::new();
    for s in 0..STORES {
        let slug = format!("c{s}");
        pool.store_add(&slug, &slug, &[vn(SERIES, s)])
            .await
            .unwrap();
        tokens.push(pool.token_issue(&slug, "t").await.unwrap().1);
    }
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push(("BIZCALL_AMQP__ROUTING".into(), "store".into()));
    env.push(("BIZCALL_AMQP__UNBIND_GRACE".into(), "200ms".into()));
    let a = Instance::spawn(dir.path(), &common::env_refs(&env));
    let relay = Relay::start_delayed("127.0.0.1:5672".into(), Duration::from_millis(40)).await;
    env.retain(|(k, _)| k != "BIZCALL_AMQP__URL");
    env.push((
        "BIZCALL_AMQP__URL".into(),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port),
    ));
    let b = Instance::spawn(dir.path(), &common::env_refs(&env));
    for base in [a.base(), b.base()] {
        common::bus_up(&base, Duration::from_secs(60)).await;
    }

    // Tablets churn on both instances: one loop per store on A, and on B
    // one per store plus a second for store 0 (two tablets overlapping).
    let until = Instant::now() + SEND_FOR;
    let mut loops = Vec::new();
    for (instance, stores) in [
        (&a, (0..STORES).collect::<Vec<_>>()),
        (&b, {
            let mut v: Vec<usize> = (0..STORES).collect();
            v.push(0);
            v
        }),
    ] {
        for store in stores {
            let ws = format!("ws://{}/ws", instance.addr);
            loops.push(tokio::spawn(churn(ws, store, tokens[store].clone(), until)));
        }
    }

    // Calls of every store into A at a steady rate.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
    let mut posts = Vec::new();
    let mut i = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        let (base, sent) = (a.base(), sent.clone());
        posts.push(tokio::spawn(async move {
            let store = i % STORES;
            let seq = format!("churn{i}");
            let at = Instant::now();
            let code = common::post_cdr(
                &base,
                &[
                    ("seq", &seq),
                    ("sdt", "20261203101500"),
                    ("fromn", "010-5555-0000"),
                    ("ton", "02"),
                    ("vn", &vn(SERIES, store)),
                ],
            )
            .await;
            assert_eq!(code, 200, "{seq}");
            sent.lock().unwrap().push(Sent {
                store,
                seq,
                sent: at,
                answered: Instant::now(),
            });
        }));
        i += 1;
    }
    for p in posts {
        p.await.unwrap();
    }
    let mut sessions = Vec::new();
    for l in loops {
        sessions.extend(l.await.unwrap());
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());

    // Each session: every call sent after it subscribed and answered well
    // before it ended reached it, and none twice.
    let mut owed = 0;
    let mut missed = Vec::new();
    let mut repeated = Vec::new();
    for s in &sessions {
        let mut got: HashMap<&str, usize> = HashMap::new();
        for c in &s.calls {
            *got.entry(c.as_str()).or_default() += 1;
        }
        repeated.extend(
            got.iter()
                .filter(|(_, n)| **n > 1)
                .map(|(c, _)| c.to_string()),
        );
        for call in sent.iter().filter(|c| {
            c.store == s.store && c.sent > s.subscribed && c.answered + MARGIN < s.ended
        }) {
            owed += 1;
            if !got.contains_key(call.seq.as_str()) {
                missed.push(call.seq.clone());
            }
        }
    }
    let binds_a =
        common::metric_labelled(&a.base(), "bizcall_bus_bindings_total", "op=\"bind\"").await;
    let binds_b =
        common::metric_labelled(&b.base(), "bizcall_bus_bindings_total", "op=\"bind\"").await;
    let unbinds_b =
        common::metric_labelled(&b.base(), "bizcall_bus_bindings_total", "op=\"unbind\"").await;
    println!(
        "{} sessions, {} calls sent, {owed} owed to a session, {} missed, {} repeated; \
         binds A {binds_a} B {binds_b}, unbinds B {unbinds_b}",
        sessions.len(),
        sent.len(),
        missed.len(),
        repeated.len()
    );
    // The bus leg is measured from the publish header's microseconds:
    // every popup B wrote after a live delivery has a sample, under a second.
    let legs = common::metric(&b.base(), "bizcall_bus_leg_seconds_count").await;
    let leg_sum = common::metric(&b.base(), "bizcall_bus_leg_seconds_sum").await;
    assert!(legs > 0.0, "no bus leg recorded");
    assert!(leg_sum / legs < 1.0, "mean bus leg {} s", leg_sum / legs);
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(repeated.is_empty(), "repeated: {repeated:?}");
    // The test means something: the bindings churned, and many calls were
    // owed to sessions.
    assert!(sessions.len() >= 20, "{} sessions", sessions.len());
    assert!(owed >= 100, "{owed} owed");
    assert!(binds_b > 2.0 * STORES as f64, "B bound {binds_b} times");
    assert!(unbinds_b > STORES as f64, "B unbound {unbinds_b} times");

    drop(a);
    drop(b);
    broker.cleanup().await;
    db.cleanup().await;
}

/// One churn phase: every 20 ms (50 a second) a tablet of the next store
/// of `stores` (in turn) connects, subscribes, stays `HOLD` and leaves,
/// for `CHURN_FOR`. Returns how many tablets came.
async fn store_churn(
    ws: &str,
    range: std::ops::Range<usize>,
    stores: &[(String, Vec<String>)],
) -> usize {
    let until = Instant::now() + CHURN_FOR;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut visits = Vec::new();
    let mut store = range.start;
    while Instant::now() < until {
        tick.tick().await;
        let (slug, tokens) = stores[store].clone();
        let (ws, token) = (ws.to_string(), tokens[0].clone());
        visits.push(tokio::spawn(async move {
            let mut c = Client::open(&ws, None, None).await;
            c.connect(&token).await;
            c.subscribe(&slug, "0", "auto").await;
            tokio::time::sleep(HOLD).await;
        }));
        store = if store + 1 == range.end {
            range.start
        } else {
            store + 1
        };
    }
    let n = visits.len();
    for v in visits {
        v.await.unwrap();
    }
    n
}

const CHURN_FOR: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_millis(200);
/// `amqp.unbind_grace` in the churn test.
const GRACE: Duration = Duration::from_secs(2);
/// Stores that come back within the grace (each every 0.2 s)…
const NEAR: usize = 10;
/// …and stores that come back after it (each every 5 s).
const FAR: usize = 250;

/// Tablet churn on one store-routed instance, stores coming and going at
/// 50 a second, measured in bindings (issue: "must not turn into more than
/// a bounded binding rate"). Two phases of 10 s, 500 tablet visits each:
/// 10 stores whose tablets come back within `amqp.unbind_grace` are each
/// bound once, however often their tablets reconnect; 250 stores whose
/// tablets come back after it bind at most once per visit and unbind at
/// most once per binding; after the grace nothing stays bound. Prints the
/// rates (BENCHMARKS.md, "Tablet churn and bindings").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_churn_binds_at_most_once_per_store_visit() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let pool = db.connect().await;
    let stores = add_stores(&pool, NEAR + FAR, "0507200", 1, "t").await;
    pool.close().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push(("BIZCALL_AMQP__ROUTING".into(), "store".into()));
    env.push((
        "BIZCALL_AMQP__UNBIND_GRACE".into(),
        format!("{}s", GRACE.as_secs()),
    ));
    env.push((
        "BIZCALL_STOMP__MAX_CONNECTIONS_PER_ADDRESS".into(),
        "0".into(),
    ));
    let a = Instance::spawn(dir.path(), &common::env_refs(&env));
    common::bus_up(&a.base(), Duration::from_secs(60)).await;
    let ws = format!("ws://{}/ws", a.addr);
    let base = a.base();
    let count = |op: &'static str| {
        let base = base.clone();
        async move {
            common::metric_labelled(&base, "bizcall_bus_bindings_total", &format!("op=\"{op}\""))
                .await as usize
        }
    };

    // Near: each store's tablets come back 0.2 s after they left.
    let started = Instant::now();
    let near_visits = store_churn(&ws, 0..NEAR, &stores).await;
    let near_secs = started.elapsed().as_secs_f64();
    let (near_binds, near_unbinds) = (count("bind").await, count("unbind").await);
    println!(
        "near: {near_visits} visits of {NEAR} stores in {near_secs:.1} s: \
         {near_binds} binds, {near_unbinds} unbinds"
    );
    assert!(near_binds <= NEAR, "{near_binds} binds for {NEAR} stores");
    assert!(near_binds > 0, "no binding at all");
    assert_eq!(
        near_unbinds, 0,
        "a store unbound while its tablets came back"
    );

    // Far: each store's tablets come back 4.8 s after they left.
    let started = Instant::now();
    let far_visits = store_churn(&ws, NEAR..NEAR + FAR, &stores).await;
    let far_secs = started.elapsed().as_secs_f64();
    let (binds, unbinds) = (count("bind").await, count("unbind").await);
    let (far_binds, far_unbinds) = (binds - near_binds, unbinds - near_unbinds);
    println!(
        "far: {far_visits} visits of {FAR} stores in {far_secs:.1} s: {far_binds} binds \
         ({:.1}/s), {far_unbinds} unbinds ({:.1}/s)",
        far_binds as f64 / far_secs,
        far_unbinds as f64 / far_secs,
    );
    assert!(
        far_binds <= far_visits,
        "{far_binds} binds for {far_visits} visits"
    );
    assert!(
        far_binds >= FAR.min(far_visits),
        "{far_binds} binds for {FAR} stores"
    );
    assert!(unbinds <= binds, "{unbinds} unbinds, {binds} binds");

    // After the grace, nothing stays bound.
    common::eventually(GRACE * 5, "every store unbound", || async {
        common::metric(&base, "bizcall_bus_bound_stores").await == 0.0
    })
    .await;
    let (binds, unbinds) = (count("bind").await, count("unbind").await);
    println!("after the grace: {binds} binds, {unbinds} unbinds in all");
    assert_eq!(binds, unbinds, "every binding removed once");

    drop(a);
    broker.cleanup().await;
    db.cleanup().await;
}
