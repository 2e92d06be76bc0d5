//! Silent faults between real `bizcall` processes and the real RabbitMQ and
//! PostgreSQL, through a fault proxy (tests/common/fault.rs): a link that
//! stops carrying bytes without a RST, on the instance that holds the
//! tablet or the one that takes the webhook; a slow link; a broker that
//! refuses; a database that stops answering. One checker
//! (tests/common/checker.rs) judges each run; each run appends its row to
//! `artifacts/reliability.md` (docs/reliability.md's table).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::checker::{note_row, Popup, Posted, Record, Verdict};
use common::fault::FaultProxy;
use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};

const VN: &str = "05011112222";
const STORE: &str = "wash";

/// Two instances on one PostgreSQL, each reaching RabbitMQ (and, for the
/// database scenarios, A reaching PostgreSQL) through a proxy of its own:
/// A takes the webhooks, B holds the tablet.
struct Pair {
    db: TestDb,
    broker: Broker,
    a: Instance,
    b: Instance,
    a_bus: FaultProxy,
    b_bus: FaultProxy,
    a_db: FaultProxy,
    token: String,
    _dir: tempfile::TempDir,
}

fn host_port(url: &str, default: u16) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(default))
}

fn through(url: &str, proxy: &FaultProxy) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(proxy.port)).unwrap();
    u.to_string()
}

impl Pair {
    async fn start() -> Pair {
        let db = TestDb::new(Backend::Postgres).await;
        let broker = Broker::new();
        let upstream = host_port(&broker.url, 5672);
        let a_bus = FaultProxy::start(&upstream).await;
        let b_bus = FaultProxy::start(&upstream).await;
        let a_db = FaultProxy::start(&host_port(db.url(), 5432)).await;
        let dir = tempfile::tempdir().unwrap();
        let env_for = |bus: &FaultProxy, db_url: String| {
            let mut env = Broker::on(&through(&broker.url, bus)).env();
            // The names are the test's own (the proxy's URL made others).
            env.retain(|(k, _)| {
                k == "BIZCALL_BUS__KIND" || k == "BIZCALL_WEBHOOK__OPEN" || k == "BIZCALL_AMQP__URL"
            });
            env.extend(broker.env().into_iter().filter(|(k, _)| {
                k != "BIZCALL_BUS__KIND" && k != "BIZCALL_WEBHOOK__OPEN" && k != "BIZCALL_AMQP__URL"
            }));
            env.push(("BIZCALL_DATABASE__URL".into(), db_url));
            env.push(("BIZCALL_BUS__RELAY_INTERVAL".into(), "500ms".into()));
            env
        };
        let env_a = env_for(&a_bus, through(db.url(), &a_db));
        let env_b = env_for(&b_bus, db.url().to_string());
        let token = common::register_named(
            dir.path(),
            STORE,
            STORE,
            VN,
            "bay",
            &common::env_refs(&env_b),
        );
        let a = Instance::spawn(dir.path(), &common::env_refs(&env_a));
        let b = Instance::spawn(dir.path(), &common::env_refs(&env_b));
        for base in [a.base(), b.base()] {
            common::bus_up(&base, Duration::from_secs(20)).await;
        }
        Pair {
            db,
            broker,
            a,
            b,
            a_bus,
            b_bus,
            a_db,
            token,
            _dir: dir,
        }
    }

    async fn finish(self) {
        let Pair {
            db, broker, a, b, ..
        } = self;
        drop((a, b));
        broker.cleanup().await;
        db.cleanup().await;
    }
}

/// A tablet on B, recording every popup it receives.
struct Tablet {
    popups: Arc<Mutex<Vec<Popup>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tablet {
    async fn open(pair: &Pair) -> Tablet {
        let mut client = Client::open(&format!("ws://{}/ws", pair.b.addr), None, None).await;
        client.connect(&pair.token).await;
        client.subscribe(STORE, "s1", "auto").await;
        let popups: Arc<Mutex<Vec<Popup>>> = Arc::default();
        let record = popups.clone();
        let task = tokio::spawn(async move {
            while let Some(f) = client.next(Duration::from_secs(3600)).await {
                if f.command != "MESSAGE" {
                    continue;
                }
                let body = f.json();
                if body["type"] != "call" {
                    continue;
                }
                let time = |k: &str| {
                    chrono::DateTime::parse_from_rfc3339(body[k].as_str().unwrap())
                        .unwrap()
                        .with_timezone(&Utc)
                };
                record.lock().unwrap().push(Popup {
                    tablet_store: STORE.into(),
                    call_id: body["callId"].as_str().unwrap().into(),
                    store: body["store"].as_str().unwrap().into(),
                    received_at: Utc::now(),
                    expires_at: time("expiresAt"),
                });
            }
        });
        Tablet { popups, task }
    }

    fn stop(self) -> Vec<Popup> {
        self.task.abort();
        let popups = self.popups.lock().unwrap().clone();
        popups
    }
}

/// Posts one ringing CDR for the store to `base`.
async fn post(base: &str, seq: &str) -> Posted {
    let started = Instant::now();
    let sent_at = Utc::now();
    let status = common::post_call(base, seq, VN).await;
    Posted {
        seq: seq.into(),
        store: STORE.into(),
        sent_at,
        status,
        took: started.elapsed(),
    }
}

/// When `name` on `base` first satisfies `seen`, polled every 100 ms for
/// at most `limit` after `since`.
async fn first_time(
    base: &str,
    name: &str,
    seen: impl Fn(f64) -> bool,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if seen(common::metric(base, name).await) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Calls posted to A every 500 ms, numbered on.
struct Calls {
    base: String,
    tag: String,
    next: usize,
}

impl Calls {
    async fn until(&mut self, until: Instant) -> Vec<Posted> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut posted = Vec::new();
        while Instant::now() + Duration::from_millis(500) <= until {
            tick.tick().await;
            posted.push(post(&self.base, &format!("{}-{}", self.tag, self.next)).await);
            self.next += 1;
        }
        posted
    }
}

/// Which proxy a scenario breaks, and how.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// B's broker link stops carrying bytes; new connections pass.
    BlackholeB,
    /// A's broker link likewise.
    BlackholeA,
    /// Both links, new connections included: the broker is unreachable
    /// without a RST for the whole fault.
    BlackholeAllBoth,
    /// A's link is reset and new connections refused (a broker down).
    RefusedA,
    /// 200 ms each way on B's link: slow, not dead.
    SlowB,
}

/// Posts a call every 500 ms for the whole run: 3 s of calm, `fault` for
/// `length`, 6 s after healing; returns the record and when B noticed.
async fn run(fault: Fault, length: Duration) -> (Verdict, Option<Duration>, Pair) {
    let pair = Pair::start().await;
    let tablet = Tablet::open(&pair).await;
    let mut record = Record::default();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut calls = Calls {
        base: pair.a.base(),
        tag,
        next: 0,
    };
    record
        .posted
        .extend(calls.until(Instant::now() + Duration::from_secs(3)).await);
    let broke = Instant::now();
    match fault {
        Fault::BlackholeB => pair.b_bus.blackhole(),
        Fault::BlackholeA => pair.a_bus.blackhole(),
        Fault::BlackholeAllBoth => {
            pair.a_bus.blackhole_all();
            pair.b_bus.blackhole_all();
        }
        Fault::RefusedA => {
            pair.a_bus.refuse();
            pair.a_bus.reset();
        }
        Fault::SlowB => pair
            .b_bus
            .latency(Duration::from_millis(200), Duration::ZERO),
    }
    let watched = match fault {
        Fault::BlackholeA | Fault::RefusedA => pair.a.base(),
        _ => pair.b.base(),
    };
    let detect = {
        // A reset is loud: the link drops at once. The others are silent.
        let (metric, seen): (_, fn(f64) -> bool) = match fault {
            Fault::RefusedA => ("bizcall_bus_connected", |v| v == 0.0),
            _ => ("bizcall_bus_link_silent_total", |v| v > 0.0),
        };
        let detecting = first_time(
            &watched,
            metric,
            seen,
            broke,
            Duration::from_secs(8).min(length),
        );
        let posting = calls.until(broke + length);
        let (d, posted) = tokio::join!(detecting, posting);
        record.posted.extend(posted);
        d
    };
    pair.a_bus.heal();
    pair.b_bus.heal();
    let healed = Instant::now();
    for base in [pair.a.base(), pair.b.base()] {
        common::bus_up(&base, Duration::from_secs(20)).await;
    }
    let back = healed.elapsed();
    // Calls posted just before the healing may still be relayed in the
    // next relay reads (two, 0.5 s apart), when they come before the
    // publisher's republish: that is the relay's job. Calls posted from
    // here on must all go by the bus.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let relayed_back = common::metric(&pair.b.base(), "bizcall_relayed_total").await;
    record
        .posted
        .extend(calls.until(Instant::now() + Duration::from_secs(6)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    record.popups = tablet.stop();
    let verdict = record.check(Duration::ZERO);
    let relayed_after = common::metric(&pair.b.base(), "bizcall_relayed_total").await;
    println!(
        "{fault:?} {length:?}: detected {detect:?}, bus back {back:?} after healing, relayed {relayed_back} (then {relayed_after})"
    );
    assert!(
        back <= Duration::from_secs(5),
        "{fault:?}: the bus came back {back:?} after healing"
    );
    assert_eq!(
        relayed_back, relayed_after,
        "{fault:?}: the relay still carried calls once the bus was back"
    );
    (verdict, detect, pair)
}

async fn scenario(fault: Fault, length: Duration, name: &str) {
    let (verdict, detect, pair) = run(fault, length).await;
    note_row(&verdict.row(name, &format!("{} s", length.as_secs()), detect));
    let logs = format!("A:\n{}\nB:\n{}", pair.a.log_text(), pair.b.log_text());
    match fault {
        Fault::SlowB => assert!(detect.is_none(), "a slow link was declared dead\n{logs}"),
        _ => {
            let d = detect.unwrap_or_else(|| panic!("{fault:?} not detected\n{logs}"));
            assert!(
                d <= Duration::from_secs(5),
                "{fault:?} detected after {d:?}"
            );
            if !matches!(fault, Fault::RefusedA) {
                assert!(logs.contains("the link is silent"), "{logs}");
            }
        }
    }
    verdict.assert_clean(name);
    pair.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_on_the_tablets_instance_is_replaced_and_loses_nothing() {
    scenario(
        Fault::BlackholeB,
        Duration::from_secs(10),
        "broker link blackholed on the tablet's instance",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_on_the_webhooks_instance_keeps_the_webhook_fast_and_loses_nothing() {
    scenario(
        Fault::BlackholeA,
        Duration::from_secs(10),
        "broker link blackholed on the webhook's instance",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_is_not_declared_dead() {
    scenario(
        Fault::SlowB,
        Duration::from_secs(10),
        "200 ms each way on the tablet's instance",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_unreachable_from_both_instances_for_10_s_loses_nothing() {
    scenario(
        Fault::BlackholeAllBoth,
        Duration::from_secs(10),
        "broker unreachable (blackholed, new connections too) from both instances",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_unreachable_from_both_instances_for_60_s_loses_nothing() {
    scenario(
        Fault::BlackholeAllBoth,
        Duration::from_secs(60),
        "broker unreachable (blackholed, new connections too) from both instances",
    )
    .await;
}

/// Five minutes; the other scenarios run beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_unreachable_from_both_instances_for_300_s_loses_nothing() {
    scenario(
        Fault::BlackholeAllBoth,
        Duration::from_secs(300),
        "broker unreachable (blackholed, new connections too) from both instances",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_resets_and_refuses_the_webhooks_instance_loses_nothing() {
    scenario(
        Fault::RefusedA,
        Duration::from_secs(10),
        "broker link reset and refused on the webhook's instance",
    )
    .await;
}

/// Posts a call to `base` and returns the status, its `Retry-After` and
/// how long the answer took.
async fn post_timed(base: &str, seq: &str) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let (status, retry) = common::post_call_answer(base, seq, VN).await;
    (status, retry, started.elapsed())
}

/// A's PostgreSQL stops answering (blackholed), then answers 2 s late per
/// round trip, then heals: A answers 503 with `Retry-After` within
/// `database.timeout` (3 s) and never `OK` without a commit, says so on
/// `/readyz`, and takes CDRs again within seconds of healing; B's tablet
/// stays connected and keeps getting the calls B stores; A's presence
/// heart-beat, mark and trail writers and `/readyz` recover within 5 s of
/// healing; every CDR answered 503 is stored by the provider's retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_is_503_within_the_timeout_and_recovers() {
    let pair = Pair::start().await;
    let tablet = Tablet::open(&pair).await;
    let (a, b) = (pair.a.base(), pair.b.base());
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let seq = |s: &str| format!("{tag}-{s}");
    assert_eq!(post_timed(&a, &seq("before")).await.0, 200);

    let mut refused = Vec::new();
    for (how, fault) in [("blackholed", 0), ("2 s per round trip", 1)] {
        if fault == 0 {
            pair.a_db.blackhole_all();
        } else {
            pair.a_db.heal();
            pair.a_db.reset();
            pair.a_db.latency(Duration::from_secs(2), Duration::ZERO);
        }
        for i in 0..3 {
            let s = seq(&format!("{fault}-{i}"));
            let (status, retry, took) = post_timed(&a, &s).await;
            assert_eq!(status, 503, "{how}: {s}");
            assert_eq!(retry.as_deref(), Some("5"), "{how}: Retry-After");
            assert!(
                took <= Duration::from_millis(3500),
                "{how}: answered after {took:?}"
            );
            refused.push(s);
        }
        let started = Instant::now();
        let (status, body) = common::ready(&a).await;
        assert_eq!(
            (status, body["database"].as_str()),
            (503, Some("down")),
            "{how}: {body}"
        );
        assert!(started.elapsed() <= Duration::from_millis(3500));
        // B's tablet stays and gets what B stores meanwhile.
        assert_eq!(post_timed(&b, &seq(&format!("on-b-{fault}"))).await.0, 200);
    }
    pair.a_db.heal();
    let healed = Instant::now();
    common::eventually(Duration::from_secs(5), "A takes CDRs again", || {
        let (a, s) = (a.clone(), seq("after"));
        async move { post_timed(&a, &s).await.0 == 200 }
    })
    .await;
    let recovered = healed.elapsed();
    // A's background writers are back too, within 5 s of healing and with
    // no restart: its presence heart-beat, the mark that says the call
    // went to the bus, its part of the call's delivery trail; and /readyz.
    let a_id = pair
        .a
        .log_text()
        .split("instance=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("A's instance id in its log")
        .to_string();
    let healed_ms =
        (Utc::now() - chrono::Duration::from_std(healed.elapsed()).unwrap()).timestamp_millis();
    let raw = sqlx::PgPool::connect(pair.db.url()).await.unwrap();
    let after = seq("after");
    common::eventually(
        Duration::from_secs(5).saturating_sub(healed.elapsed()),
        "A's heart-beat, mark and trail written, /readyz up",
        || {
            let (raw, a_id, after, a) = (raw.clone(), a_id.clone(), after.clone(), a.clone());
            async move {
                let beat: Option<i64> =
                    sqlx::query_scalar("SELECT heartbeat_at FROM instances WHERE id = $1")
                        .bind(&a_id)
                        .fetch_optional(&raw)
                        .await
                        .unwrap();
                let pending: Option<i32> =
                    sqlx::query_scalar("SELECT event_pending::int FROM calls WHERE seq = $1")
                        .bind(&after)
                        .fetch_optional(&raw)
                        .await
                        .unwrap();
                let trail: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM call_trail WHERE seq = $1 AND instance_id = $2 \
                     AND published_at IS NOT NULL",
                )
                .bind(&after)
                .bind(&a_id)
                .fetch_one(&raw)
                .await
                .unwrap();
                beat.is_some_and(|b| b >= healed_ms)
                    && pending == Some(0)
                    && trail == 1
                    && common::ready(&a).await.0 == 200
            }
        },
    )
    .await;
    raw.close().await;
    // The provider retries every 503: each is stored now.
    for s in &refused {
        assert_eq!(post_timed(&a, s).await.0, 200, "retry of {s}");
    }
    let check = pair.db.connect().await;
    for s in refused.iter().chain([&seq("before"), &seq("after")]) {
        assert!(check.call(s).await.unwrap().is_some(), "{s} stored");
    }
    check.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let popups = tablet.stop();
    let shown: std::collections::HashSet<&str> =
        popups.iter().map(|p| p.call_id.as_str()).collect();
    for s in [seq("before"), seq("on-b-0"), seq("on-b-1"), seq("after")] {
        assert!(shown.contains(s.as_str()), "{s} not shown: {shown:?}");
    }
    assert_eq!(shown.len(), popups.len(), "a popup shown twice");
    note_row(&format!(
        "| PostgreSQL blackholed, then 2 s per round trip (instance A) | 2 × ~10 s | — | 503 within 3.5 s | — | recovered {:.1} s after healing; {} refused CDRs stored on retry | 0 |",
        recovered.as_secs_f64(),
        refused.len()
    ));
    pair.finish().await;
}
