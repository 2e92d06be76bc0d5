//! Instances whose clocks disagree by 5 s (Debian's libfaketime around one
//! `bizcall` process), on the real PostgreSQL and RabbitMQ, with a short
//! TTL so that a 5 s error decides: event times follow the database's clock
//! (src/clock.rs), so no fresh popup is dropped as expired and none is shown
//! past its `expiresAt` by more than the stated bound (docs/reliability.md).
//! Each run's row goes to `artifacts/reliability.md`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::checker::{note_row, Popup, Posted, Record};
use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};

const VN: &str = "05011113333";
const STORE: &str = "skew";
/// Short enough that 5 s of skew would expire every popup at birth.
const TTL: &str = "4s";
/// docs/reliability.md: instances agree within the clock's sample bound
/// (0.1 s); the tablet here reads the same clock as the database.
const BOUND: Duration = Duration::from_millis(100);

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that moves a process's wall clock by `seconds`.
fn skewed(seconds: i64) -> Vec<(String, String)> {
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "libfaketime is missing: apt-get install faketime (scripts/test does)"
    );
    vec![
        ("LD_PRELOAD".into(), FAKETIME_LIB.into()),
        ("FAKETIME".into(), format!("{seconds:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// A takes the webhooks, B holds the tablet; either may be skewed.
struct Pair {
    db: TestDb,
    broker: Broker,
    a: Instance,
    b: Instance,
    token: String,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(a_skew: i64, b_skew: i64) -> Pair {
        let db = TestDb::new(Backend::Postgres).await;
        let broker = Broker::new();
        let dir = tempfile::tempdir().unwrap();
        let env_for = |skew: i64| {
            let mut env = broker.env();
            env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
            env.push(("BIZCALL_BUS__MESSAGE_TTL".into(), TTL.into()));
            if skew != 0 {
                env.extend(skewed(skew));
            }
            env
        };
        let (env_a, env_b) = (env_for(a_skew), env_for(b_skew));
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
        for (inst, skew) in [(&a, a_skew), (&b, b_skew)] {
            common::bus_up(&inst.base(), Duration::from_secs(20)).await;
            // The skew is real, and measured: the database's clock minus
            // the instance's is minus its skew.
            let offset = common::metric(&inst.base(), "bizcall_clock_offset_seconds").await;
            assert!(
                (offset + skew as f64).abs() < 0.5,
                "instance skewed {skew} s measured an offset of {offset} s\n{}",
                inst.log_text()
            );
        }
        Pair {
            db,
            broker,
            a,
            b,
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

/// A tablet on B recording every call popup with the test's (the
/// database host's) clock.
async fn tablet(pair: &Pair) -> (Arc<Mutex<Vec<Popup>>>, tokio::task::JoinHandle<()>) {
    let mut client = Client::open(&format!("ws://{}/ws", pair.b.addr), None, None).await;
    client.connect(&pair.token).await;
    client.subscribe(STORE, "s1", "auto").await;
    let popups: Arc<Mutex<Vec<Popup>>> = Arc::default();
    let record = popups.clone();
    let task = tokio::spawn(async move {
        while let Some(f) = client.next(Duration::from_secs(3600)).await {
            let body = f.json();
            if f.command != "MESSAGE" || body["type"] != "call" {
                continue;
            }
            let expires_at =
                chrono::DateTime::parse_from_rfc3339(body["expiresAt"].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&Utc);
            record.lock().unwrap().push(Popup {
                tablet_store: STORE.into(),
                call_id: body["callId"].as_str().unwrap().into(),
                store: body["store"].as_str().unwrap().into(),
                received_at: Utc::now(),
                expires_at,
            });
        }
    });
    (popups, task)
}

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

/// Twenty calls to A, one every 250 ms.
async fn calls(pair: &Pair, tag: &str) -> Vec<Posted> {
    let mut posted = Vec::new();
    for i in 0..20 {
        posted.push(post(&pair.a.base(), &format!("{tag}-{i}")).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    posted
}

/// Every call shown once, in time, with the instances' clocks `a_skew`
/// and `b_skew` seconds off.
async fn every_call_shown(a_skew: i64, b_skew: i64, name: &str) {
    let pair = Pair::start(a_skew, b_skew).await;
    let (popups, task) = tablet(&pair).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut record = Record {
        posted: calls(&pair, &tag).await,
        popups: Vec::new(),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    task.abort();
    record.popups = popups.lock().unwrap().clone();
    let verdict = record.check(BOUND);
    note_row(&verdict.row(name, "20 calls", None));
    let logs = format!("A:\n{}\nB:\n{}", pair.a.log_text(), pair.b.log_text());
    assert_eq!(verdict.expected, 20, "{name}: not every CDR answered OK");
    if !verdict.lost.is_empty() || verdict.late > 0 || verdict.duplicates > 0 {
        panic!("{name}: {verdict:?}\n{logs}");
    }
    pair.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_instance_5_s_behind_drops_no_fresh_popup() {
    every_call_shown(-5, 0, "clock skew: webhook instance 5 s behind").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_instance_5_s_ahead_drops_no_fresh_popup() {
    every_call_shown(0, 5, "clock skew: tablet instance 5 s ahead").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_10_s_apart_drop_no_fresh_popup() {
    every_call_shown(-5, 5, "clock skew: webhook -5 s, tablet +5 s").await;
}

/// B's clock lags by 5 s and B pauses past the TTL while calls arrive: when
/// it resumes, what it holds has expired by the database's clock, so none of
/// it reaches the tablet; later calls do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_instance_5_s_behind_shows_nothing_stale_after_a_pause() {
    let pair = Pair::start(0, -5).await;
    let (popups, task) = tablet(&pair).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let pid = pair.b.child.id().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let mut paused = Vec::new();
    for i in 0..4 {
        paused.push(post(&pair.a.base(), &format!("{tag}-p{i}")).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Past every paused call's TTL by the true clock, within it by B's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = calls(&pair, &format!("{tag}-a")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    task.abort();
    let shown = popups.lock().unwrap().clone();
    let logs = format!("B:\n{}", pair.b.log_text());
    let stale: Vec<&Popup> = shown
        .iter()
        .filter(|p| p.received_at > p.expires_at + chrono::Duration::from_std(BOUND).unwrap())
        .collect();
    assert!(
        stale.is_empty(),
        "popups after their expiresAt: {stale:?}\n{logs}"
    );
    let record = Record {
        posted: after,
        popups: shown
            .iter()
            .filter(|p| !p.call_id.contains("-p"))
            .cloned()
            .collect(),
    };
    let verdict = record.check(BOUND);
    note_row(&verdict.row(
        "clock skew: tablet instance 5 s behind, paused past the TTL",
        "8 s",
        None,
    ));
    assert!(
        verdict.lost.is_empty() && verdict.duplicates == 0,
        "{verdict:?}\n{logs}"
    );
    pair.finish().await;
}
