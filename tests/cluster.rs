//! The situation bizcall exists for: three real instances behind nginx on
//! PostgreSQL and RabbitMQ, 20 stores with 2 tablets each connected through
//! nginx, and 1000 CDRs posted through nginx at a steady rate while an
//! instance is killed, the broker restarts, and every instance is restarted
//! in turn. Prints a summary table and fails on any loss, duplicate or leak.
//!
//! The broker is a RabbitMQ node of the test's own (tests/common/rabbit.rs),
//! never the shared one: stopping it disturbs no other client, and the
//! node goes, pass or fail, when `nodes` is dropped.
//!
//! The second test runs the same with the instances' database connections
//! through a PgBouncer in transaction mode (tests/common/pgbouncer.rs).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{add_stores, print_cdr_rows, provider_post, start_tablets, vn, SentAt, Tally};
use common::nginx::Nginx;
use common::pgbouncer::{self, PgBouncer};
use common::rabbit::Nodes;
use common::{Backend, Broker, Instance, TestDb};
use tokio_util::sync::CancellationToken;

const STORES: usize = 20;
const TABLETS_PER_STORE: usize = 2;
const PER_PHASE: usize = 250;
const RATE_PER_SEC: u64 = 50;
/// The stores' numbers: 0507000 and the store's index.
const SERIES: &str = "0507000";

struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    ports: Vec<u16>,
    instances: Vec<Option<Instance>>,
}

impl Cluster {
    fn start_instance(&mut self, i: usize) {
        let mut env = self.env.clone();
        env.push((
            "BIZCALL_SERVER__LISTEN".into(),
            format!("127.0.0.1:{}", self.ports[i]),
        ));
        self.instances[i] = Some(Instance::spawn(self.dir.path(), &common::env_refs(&env)));
    }

    async fn wait_bus_up(&self, i: usize) {
        let base = format!("http://127.0.0.1:{}", self.ports[i]);
        common::bus_up(&base, Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_nginx_survive_failures() {
    survive_failures(false).await;
}

/// The same with the instances' database connections through a PgBouncer
/// in transaction mode that keeps fewer server connections than one
/// instance's pool: named prepared statements, the background writers'
/// settings (per transaction) and every other query must hold up when
/// each transaction may land on another server connection. The test's
/// own checks read the database directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_through_pgbouncer_survive_failures() {
    survive_failures(true).await;
}

async fn survive_failures(through_pgbouncer: bool) {
    let nodes = tokio::task::block_in_place(Nodes::single);
    let node = &nodes.nodes[0];
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::on(&node.url());
    let pool = db.connect().await;
    let tokens = add_stores(&pool, STORES, SERIES, TABLETS_PER_STORE, "cluster").await;
    let bouncer = match through_pgbouncer {
        true => Some(PgBouncer::start(db.url()).await),
        false => None,
    };
    let instances_db = match &bouncer {
        Some(b) => b.url_for(db.url()),
        None => db.url().to_string(),
    };

    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), instances_db));
    env.push((
        "BIZCALL_SERVER__TRUSTED_PROXIES".into(),
        "[\"127.0.0.1/32\"]".into(),
    ));
    env.push(("BIZCALL_BUS__MESSAGE_TTL".into(), "5s".into()));
    let mut cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        env,
        ports: (0..3).map(|_| common::free_port()).collect(),
        instances: vec![None, None, None],
    };
    for i in 0..3 {
        cluster.start_instance(i);
    }
    for i in 0..3 {
        cluster.wait_bus_up(i).await;
    }

    // nginx in front, from the same template scripts/cluster uses.
    let nginx = Nginx::start(&cluster.ports).await;
    let base = nginx.base();

    // Tablets, through nginx.
    let sent: SentAt = Arc::default();
    let stop = CancellationToken::new();
    let (tablets, tasks) = start_tablets(&tokens, std::slice::from_ref(&base), &sent, &stop);
    common::eventually(Duration::from_secs(30), "all tablets connected", || async {
        let mut n = 0.0;
        for p in &cluster.ports {
            n += common::metric(
                &format!("http://127.0.0.1:{p}"),
                "bizcall_tablets_connected",
            )
            .await;
        }
        n == (STORES * TABLETS_PER_STORE) as f64
    })
    .await;
    let mut spread = Vec::new();
    for p in &cluster.ports {
        spread.push(
            common::metric(
                &format!("http://127.0.0.1:{p}"),
                "bizcall_tablets_connected",
            )
            .await,
        );
    }
    println!("tablets per instance: {spread:?}");
    assert!(
        spread.iter().all(|n| *n > 0.0),
        "nginx spreads tablets over every instance: {spread:?}"
    );

    // The provider: 4 phases × 250 CDRs at a steady rate.
    let mut ok: Vec<(String, usize)> = Vec::new();
    let mut lost: Vec<String> = Vec::new();
    let mut outage_calls: Vec<String> = Vec::new();
    let mut n = 0;
    for phase in 0..4 {
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
        let mut posts = Vec::new();
        for k in 0..PER_PHASE {
            ticker.tick().await;
            match (phase, k) {
                (1, 80) => {
                    // kill -9 one instance in the middle of the stream.
                    if let Some(mut inst) = cluster.instances[1].take() {
                        let _ = inst.child.kill();
                        let _ = inst.child.wait();
                    }
                }
                (1, 200) => cluster.start_instance(1),
                // The broker node stops its application, then starts it.
                (2, 60) => {
                    tokio::task::block_in_place(|| node.ctl_ok(&["stop_app"]));
                }
                (2, 160) => {
                    tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
                }
                (3, 20) | (3, 100) | (3, 180) => {
                    // Rolling restart: SIGTERM, then start again.
                    let i = [20, 100, 180].iter().position(|x| *x == k).unwrap();
                    if let Some(mut inst) = cluster.instances[i].take() {
                        inst.terminate();
                    }
                    cluster.start_instance(i);
                }
                _ => {}
            }
            n += 1;
            let seq = format!("cl{n:05}");
            let store = (n * 13) % STORES;
            sent.lock().unwrap().insert(seq.clone(), Instant::now());
            if phase == 2 && (60..170).contains(&k) {
                outage_calls.push(seq.clone());
            }
            let base = base.clone();
            posts.push(tokio::spawn(async move {
                let done = provider_post(&[base], 0, &seq, &vn(SERIES, store)).await;
                (seq, store, done)
            }));
        }
        for p in posts {
            let (seq, store, done) = p.await.unwrap();
            if done {
                ok.push((seq, store));
            } else {
                lost.push(seq);
            }
        }
        if phase == 1 {
            cluster.wait_bus_up(1).await;
        }
        if phase == 2 {
            for i in 0..3 {
                cluster.wait_bus_up(i).await;
            }
        }
    }
    // Let the last popups land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }

    // Every CDR answered OK is stored.
    let mut missing_rows = Vec::new();
    for (seq, _) in &ok {
        if pool.call(seq).await.unwrap().is_none() {
            missing_rows.push(seq.clone());
        }
    }
    // Calls from the broker outage are in the call list.
    for seq in &outage_calls {
        let row = pool.call(seq).await.unwrap();
        assert!(row.is_some(), "{seq} from the outage is not stored");
    }

    let outage: HashSet<&String> = outage_calls.iter().collect();
    let tally = Tally::of(&tablets, &ok, &outage);
    println!();
    print_cdr_rows(n, ok.len(), lost.len(), missing_rows.len());
    tally.print_rows(tablets.len());
    println!();

    assert!(lost.is_empty(), "CDRs never answered OK: {lost:?}");
    assert!(
        missing_rows.is_empty(),
        "answered OK but not stored: {missing_rows:?}"
    );
    tally.assert_clean();

    if let Some(bouncer) = &bouncer {
        // The background writers (published marks, delivery trails) work
        // through it too: a CDR posted to each instance now is marked
        // published and in that instance's trail.
        let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
        let mut last = Vec::new();
        for (i, port) in cluster.ports.iter().enumerate() {
            let seq = format!("pgb-last-{i}");
            let base = format!("http://127.0.0.1:{port}");
            assert!(
                provider_post(&[base], 0, &seq, &vn(SERIES, i)).await,
                "{seq}"
            );
            last.push(seq);
        }
        common::eventually(Duration::from_secs(20), "marked and trailed", || {
            let (raw, last) = (raw.clone(), last.clone());
            async move {
                let marked: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM calls WHERE seq = ANY($1) AND event_pending = 0",
                )
                .bind(&last)
                .fetch_one(&raw)
                .await
                .unwrap();
                let trailed: i64 = sqlx::query_scalar(
                    "SELECT count(DISTINCT seq) FROM call_trail \
                     WHERE seq = ANY($1) AND published_at IS NOT NULL",
                )
                .bind(&last)
                .fetch_one(&raw)
                .await
                .unwrap();
                marked == 3 && trailed == 3
            }
        })
        .await;
        raw.close().await;
        let stats = bouncer.stats(db.url());
        println!("PgBouncer: {stats:?}");
        // Every CDR is at least one transaction through it, and the
        // instances' named statements went through its tracking.
        assert!(stats.transactions >= ok.len() as u64, "{stats:?}");
        assert!(stats.client_parses > 0, "{stats:?}");
        assert!(
            stats.server_connections <= u64::from(pgbouncer::SERVER_CONNECTIONS),
            "{stats:?}"
        );
    }

    drop(cluster);
    pool.close().await;
    db.cleanup().await;
    // The broker's names go with the node, and the node with `nodes`.
}
