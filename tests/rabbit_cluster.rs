//! A RabbitMQ cluster of three nodes of the test's own (never the shared
//! broker), three bizcall instances each listing all three nodes in a
//! different order, 20 stores × 2 tablets spread over the instances, and
//! CDRs at a steady rate while one node is stopped (`stop_app`), another is
//! killed with SIGKILL, both come back, and all three restart in turn.
//! Prints the summary table of tests/cluster.rs, plus reconnects per
//! instance and the longest gap between popups per store; fails on any
//! popup missed, duplicated, sent to another store or shown stale, and on
//! any CDR answered `OK` but not stored.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::{add_stores, print_cdr_rows, provider_post, start_tablets, vn, SentAt, Tally};
use common::rabbit::Nodes;
use common::{Backend, Broker, Instance, TestDb};
use tokio_util::sync::CancellationToken;

const STORES: usize = 20;
const TABLETS_PER_STORE: usize = 2;
const RATE_PER_SEC: u64 = 20;
/// The stores' numbers: 0507100 and the store's index.
const SERIES: &str = "0507100";

/// Runs blocking node work (rabbitmqctl, boot waits) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn say(started: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rabbitmq_nodes_lose_one_then_another() {
    let started = Instant::now();
    let nodes = Arc::new(Mutex::new(blocking(|| Nodes::clustered(3)).await));
    say(started, "three nodes up and clustered").await;
    let urls: Vec<String> = nodes
        .lock()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.url())
        .collect();
    let addresses: Vec<String> = nodes
        .lock()
        .unwrap()
        .nodes
        .iter()
        .map(|n| format!("amqp://localhost:{}", n.port))
        .collect();

    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let pool = db.connect().await;
    let tokens = add_stores(&pool, STORES, SERIES, TABLETS_PER_STORE, "rabbit").await;

    // Each instance lists the three nodes in another order.
    let orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1]];
    let dir = tempfile::tempdir().unwrap();
    let mut instances = Vec::new();
    for order in orders {
        let mut env = broker.env();
        env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
        env.push(("BIZCALL_BUS__MESSAGE_TTL".into(), "5s".into()));
        env.push(("BIZCALL_AMQP__DEAD_LETTER".into(), "true".into()));
        let list: Vec<String> = order.iter().map(|i| urls[*i].clone()).collect();
        env.push(("BIZCALL_AMQP__URL".into(), list.join(",")));
        instances.push(Instance::spawn(dir.path(), &common::env_refs(&env)));
    }
    let bases: Vec<String> = instances.iter().map(|i| i.base()).collect();
    let wait_all_up = |why: &'static str| {
        let bases = bases.clone();
        async move {
            println!("waiting: {why}");
            for base in &bases {
                common::bus_up(base, Duration::from_secs(120)).await;
            }
        }
    };
    wait_all_up("every instance on a node").await;
    for base in &bases {
        let ready: serde_json::Value = common::http()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let node = ready["bus_node"].as_str().unwrap_or("").to_string();
        assert!(addresses.contains(&node), "{ready}");
    }

    // The fanout and dead-letter exchanges and the quorum dead-letter
    // queue are durable and seen from every node; the instances' queues
    // are exclusive and auto-delete.
    for node in nodes.lock().unwrap().nodes.iter() {
        let exchanges = node.ctl_ok(&[
            "list_exchanges",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "durable",
        ]);
        for x in [&broker.exchange, &broker.dlx] {
            assert!(
                exchanges.contains(&format!("{x}\tfanout\ttrue")),
                "{x} on {}: {exchanges}",
                node.name
            );
        }
        let queues = node.ctl_ok(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "durable",
            "exclusive",
            "auto_delete",
        ]);
        assert!(
            queues
                .lines()
                .any(|l| l.starts_with(&format!("{}\tquorum\ttrue\t", broker.dlq))),
            "{queues}"
        );
        let ours: Vec<&str> = queues
            .lines()
            .filter(|l| l.starts_with(&broker.prefix))
            .collect();
        assert_eq!(ours.len(), 3, "{queues}");
        assert!(
            ours.iter()
                .all(|l| l.ends_with("classic\tfalse\ttrue\ttrue")),
            "{ours:?}"
        );
    }
    let members = nodes.lock().unwrap().nodes[0].ctl_ok(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "members",
    ]);
    let members = members
        .lines()
        .find(|l| l.starts_with(&broker.dlq))
        .unwrap_or("")
        .to_string();
    for node in nodes.lock().unwrap().nodes.iter() {
        assert!(
            members.contains(&node.name),
            "the dead-letter queue has a member on {}: {members}",
            node.name
        );
    }
    println!("dead-letter queue members: {}", members.trim());

    // Tablets: spread over the instances.
    let sent: SentAt = Arc::default();
    let stop = CancellationToken::new();
    let (tablets, tasks) = start_tablets(&tokens, &bases, &sent, &stop);
    common::eventually(Duration::from_secs(60), "all tablets connected", || async {
        let mut n = 0.0;
        for b in &bases {
            n += common::metric(b, "bizcall_tablets_connected").await;
        }
        n == (STORES * TABLETS_PER_STORE) as f64
    })
    .await;

    // The provider: a steady stream of CDRs until told to stop.
    let stop_posting = CancellationToken::new();
    let provider = {
        let bases = bases.clone();
        let sent = sent.clone();
        let stop_posting = stop_posting.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
            let mut posts = Vec::new();
            let mut n = 0usize;
            while !stop_posting.is_cancelled() {
                ticker.tick().await;
                n += 1;
                let seq = format!("rc{n:05}");
                let store = (n * 13) % STORES;
                sent.lock().unwrap().insert(seq.clone(), Instant::now());
                let bases = bases.clone();
                posts.push(tokio::spawn(async move {
                    let done = provider_post(&bases, n, &seq, &vn(SERIES, store)).await;
                    (seq, store, done)
                }));
            }
            let mut ok = Vec::new();
            let mut lost = Vec::new();
            for p in posts {
                let (seq, store, done) = p.await.unwrap();
                if done {
                    ok.push((seq, store));
                } else {
                    lost.push(seq);
                }
            }
            (n, ok, lost)
        })
    };
    let settle = || tokio::time::sleep(Duration::from_secs(8));
    settle().await;

    // 1. Node 1 stops its application: its clients are disconnected.
    say(started, "stop_app on node 1").await;
    blocking({
        let nodes = nodes.clone();
        move || {
            nodes.lock().unwrap().nodes[0].ctl_ok(&["stop_app"]);
        }
    })
    .await;
    wait_all_up("instances moved off node 1").await;
    settle().await;

    // 2. Node 2's Erlang VM is killed outright: two of three nodes down.
    say(started, "SIGKILL to node 2").await;
    blocking({
        let nodes = nodes.clone();
        move || nodes.lock().unwrap().nodes[1].kill()
    })
    .await;
    wait_all_up("instances moved off node 2").await;
    settle().await;

    // 3. Both come back.
    say(started, "start_app on node 1, node 2 started again").await;
    blocking({
        let nodes = nodes.clone();
        move || {
            let mut n = nodes.lock().unwrap();
            n.nodes[0].ctl_ok(&["start_app"]);
            n.nodes[1].spawn();
            n.nodes[1].wait_up();
            n.nodes[0].wait_up();
        }
    })
    .await;
    say(started, "nodes 1 and 2 back").await;
    settle().await;

    // 4. A rolling restart: each node stopped and started again in turn.
    for i in 0..3 {
        say(started, &format!("rolling restart: node {}", i + 1)).await;
        blocking({
            let nodes = nodes.clone();
            move || {
                let mut n = nodes.lock().unwrap();
                n.nodes[i].stop();
                n.nodes[i].spawn();
                n.nodes[i].wait_up();
            }
        })
        .await;
        wait_all_up("instances up after a restart").await;
        settle().await;
    }
    say(started, "rolling restart done").await;

    stop_posting.cancel();
    let (n, ok, lost) = provider.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let mut missing_rows = Vec::new();
    for (seq, _) in &ok {
        if pool.call(seq).await.unwrap().is_none() {
            missing_rows.push(seq.clone());
        }
    }
    let tally = Tally::of(&tablets, &ok, &HashSet::new());
    let mut arrivals: HashMap<String, Vec<Instant>> = HashMap::new();
    for t in &tablets {
        arrivals
            .entry(t.slug.clone())
            .or_default()
            .extend(&t.log.lock().unwrap().arrivals);
    }
    let mut reconnects = Vec::new();
    for b in &bases {
        reconnects.push(common::metric(b, "bizcall_bus_reconnects_total").await as u64);
    }
    let mut gaps: Vec<(String, f64)> = arrivals
        .into_iter()
        .map(|(slug, mut at)| {
            at.sort();
            let gap = at
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64())
                .fold(0.0, f64::max);
            (slug, gap)
        })
        .collect();
    gaps.sort_by(|a, b| a.0.cmp(&b.0));

    println!();
    print_cdr_rows(n, ok.len(), lost.len(), missing_rows.len());
    tally.print_rows(tablets.len());
    for (i, r) in reconnects.iter().enumerate() {
        println!("| RabbitMQ reconnects, instance {} | {r} |", i + 1);
    }
    println!(
        "| longest popup gap per store (s) | {} |",
        gaps.iter()
            .map(|(s, g)| format!("{s} {g:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| test time (s) | {:.0} |", started.elapsed().as_secs_f64());
    println!();

    assert!(lost.is_empty(), "CDRs never answered OK: {lost:?}");
    assert!(
        missing_rows.is_empty(),
        "answered OK but not stored: {missing_rows:?}"
    );
    tally.assert_clean();
    assert!(
        reconnects.iter().all(|r| *r >= 1),
        "every instance lost its node at least once: {reconnects:?}"
    );

    drop(instances);
    pool.close().await;
    db.cleanup().await;
    // The nodes, their processes and their directory go with `nodes`.
}
