//! Store routing through the loss of a broker node, at growing numbers of
//! stores (`scripts/node-loss`; not in `scripts/test`: minutes per size).
//!
//! A RabbitMQ cluster of three nodes of the test's own; three instances
//! with `amqp.routing = "store"`, each listing the nodes in another order
//! (so each one's queue lives on another node), each holding one tablet of
//! S stores of its own. CDRs go at a steady rate to all of those stores;
//! the node that hosts instance 1's queue is killed (SIGKILL: its queue
//! and its S bindings are gone), and comes back before the next size.
//!
//! Per size it records how long instance 1 took to bind its S stores
//! again, and for the calls posted after the loss, to the stores whose
//! queue was lost and to the others, how long each waited for its popup;
//! it writes `artifacts/node-loss/node-loss.md` and `node-loss.svg` and
//! fails on any call lost, duplicated, sent to another store or shown
//! after it expired.
//!
//! `BIZCALL_NODE_LOSS_STORES` (default `250,1000,2000`) lists the sizes:
//! stores per instance.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::{add_stores, provider_post, start_tablets, vn, SentAt, Tablet, Tally};
use common::rabbit::Nodes;
use common::{Backend, Broker, Instance, TestDb};
use tokio_util::sync::CancellationToken;

const INSTANCES: usize = 3;
const RATE_PER_SEC: u64 = 100;
/// Traffic before the kill, and after it.
const BEFORE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(20);
const SERIES: &str = "0507300";

fn sizes() -> Vec<usize> {
    std::env::var("BIZCALL_NODE_LOSS_STORES")
        .unwrap_or_else(|_| "250,1000,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Runs blocking node work (boots, kills) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The index of the node the instance at `base` is connected to.
async fn node_of(base: &str, ports: &[u16]) -> Option<usize> {
    let ready: serde_json::Value = common::http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let node = ready["bus_node"].as_str()?;
    ports.iter().position(|p| node.ends_with(&format!(":{p}")))
}

/// Fails, with the end of its log, when an instance has exited.
fn check_alive(instances: &mut [Instance]) {
    for (i, inst) in instances.iter_mut().enumerate() {
        if let Ok(Some(status)) = inst.child.try_wait() {
            let log = inst.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("instance {} exited ({status}): {tail:#?}", i + 1);
        }
    }
}

/// A gauge of the instance at `base`; -1 while it does not answer (busy
/// with thousands of tablets connecting on two cores).
async fn gauge(base: &str, name: &str) -> f64 {
    common::metric_if_up(base, name).await.unwrap_or(-1.0)
}

/// One call of the traffic: its id, its store's index, when it was posted,
/// whether an instance answered `OK`.
struct Posted {
    seq: String,
    store: usize,
    at: Instant,
    ok: bool,
}

/// What one size showed.
struct Round {
    stores: usize,
    /// From the kill until instance 1 had bound all its stores again.
    rebound_s: Option<f64>,
    /// Calls posted after the kill to the stores whose queue was lost:
    /// (count, p50, p99, max wait for the popup in s, not shown as popups).
    lost_side: (usize, f64, f64, f64, usize),
    /// The same for the other instances' stores.
    other_side: (usize, f64, f64, f64, usize),
}

/// Count, p50, p99 and max of `waits`, and how many calls had none.
fn summary(waits: &[Option<f64>]) -> (usize, f64, f64, f64, usize) {
    let mut w: Vec<f64> = waits.iter().flatten().copied().collect();
    w.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        if w.is_empty() {
            0.0
        } else {
            w[((w.len() - 1) as f64 * p) as usize]
        }
    };
    let none = waits.iter().filter(|x| x.is_none()).count();
    (
        waits.len(),
        q(0.5),
        q(0.99),
        w.last().copied().unwrap_or(0.0),
        none,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes per size: scripts/node-loss runs it"]
async fn store_routing_through_a_node_loss_at_growing_sizes() {
    let sizes = sizes();
    let most = sizes
        .iter()
        .copied()
        .max()
        .expect("BIZCALL_NODE_LOSS_STORES lists sizes");
    let started = Instant::now();
    let nodes = Arc::new(Mutex::new(blocking(|| Nodes::clustered(3)).await));
    println!(
        "[{:>5.0}s] three nodes up and clustered",
        started.elapsed().as_secs_f64()
    );
    let (urls, ports): (Vec<String>, Vec<u16>) = {
        let n = nodes.lock().unwrap();
        (
            n.nodes.iter().map(|n| n.url()).collect(),
            n.nodes.iter().map(|n| n.port).collect(),
        )
    };

    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let pool = db.connect().await;
    println!("registering {} stores", INSTANCES * most);
    // Stores `i * most .. i * most + S` are instance i's.
    let tokens = add_stores(&pool, INSTANCES * most, SERIES, 1, "node-loss").await;

    let dir = tempfile::tempdir().unwrap();
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        let mut env = broker.env();
        env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
        env.push(("BIZCALL_AMQP__ROUTING".into(), "store".into()));
        // Every tablet comes from 127.0.0.1: no cap per address.
        env.push((
            "BIZCALL_STOMP__MAX_CONNECTIONS_PER_ADDRESS".into(),
            "0".into(),
        ));
        let order: Vec<String> = (0..3).map(|k| urls[(i + k) % 3].clone()).collect();
        env.push(("BIZCALL_AMQP__URL".into(), order.join(",")));
        env.push((
            "RUST_LOG".into(),
            "warn,bizcall::bus=info,bizcall::server=info".into(),
        ));
        instances.push(Instance::spawn(dir.path(), &common::env_refs(&env)));
    }
    let bases: Vec<String> = instances.iter().map(|i| i.base()).collect();
    for b in &bases {
        common::bus_up(b, Duration::from_secs(120)).await;
    }

    let sent: SentAt = Arc::default();
    let stop = CancellationToken::new();
    let mut tablets: Vec<Tablet> = Vec::new();
    let mut tasks = Vec::new();
    let mut held = 0;
    let mut posted: Vec<Posted> = Vec::new();
    let mut rounds = Vec::new();
    let mut n = 0usize;
    for &s in &sizes {
        // More tablets, up to S stores per instance, each on its instance.
        if s > held {
            for (i, base) in bases.iter().enumerate() {
                let (t, h) = start_tablets(
                    &tokens[i * most + held..i * most + s],
                    std::slice::from_ref(base),
                    &sent,
                    &stop,
                );
                tablets.extend(t);
                tasks.extend(h);
            }
            held = s;
        }
        check_alive(&mut instances);
        for b in &bases {
            common::eventually(Duration::from_secs(600), "every store bound", || async {
                gauge(b, "bizcall_bus_bound_stores").await >= s as f64
                    && gauge(b, "bizcall_tablets_connected").await >= s as f64
            })
            .await;
        }
        let victim = node_of(&bases[0], &ports).await.expect("instance 1's node");
        let mut lost_instances = Vec::new();
        for (i, b) in bases.iter().enumerate() {
            if node_of(b, &ports).await == Some(victim) {
                lost_instances.push(i);
            }
        }
        println!(
            "[{:>5.0}s] {s} stores per instance bound; instances {:?} on node {}",
            started.elapsed().as_secs_f64(),
            lost_instances.iter().map(|i| i + 1).collect::<Vec<_>>(),
            victim + 1
        );

        // The provider: CDRs at a steady rate to every store held, round
        // robin over the instances' stores.
        let traffic = {
            let (bases, sent) = (bases.clone(), sent.clone());
            let first = n;
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
                let until = Instant::now() + BEFORE + AFTER;
                let mut posts = Vec::new();
                let mut n = first;
                while Instant::now() < until {
                    ticker.tick().await;
                    n += 1;
                    let k = n / INSTANCES % s;
                    let store = (n % INSTANCES) * most + k;
                    let seq = format!("nl{n:07}");
                    let at = Instant::now();
                    sent.lock().unwrap().insert(seq.clone(), at);
                    let bases = bases.clone();
                    posts.push(tokio::spawn(async move {
                        let ok = provider_post(&bases, n, &seq, &vn(SERIES, store)).await;
                        Posted { seq, store, at, ok }
                    }));
                }
                let mut out = Vec::new();
                for p in posts {
                    out.push(p.await.unwrap());
                }
                (n, out)
            })
        };
        tokio::time::sleep(BEFORE).await;
        let killed = Instant::now();
        blocking({
            let nodes = nodes.clone();
            move || nodes.lock().unwrap().nodes[victim].kill()
        })
        .await;
        println!(
            "[{:>5.0}s] node {} killed",
            started.elapsed().as_secs_f64(),
            victim + 1
        );
        // How long the instances that lost their queue take to bind again.
        let mut rebound_s = None;
        while killed.elapsed() < Duration::from_secs(120) {
            let mut all = true;
            for i in &lost_instances {
                let bound = gauge(&bases[*i], "bizcall_bus_bound_stores").await;
                let up = gauge(&bases[*i], "bizcall_bus_connected").await;
                all &= up == 1.0 && bound >= s as f64;
            }
            if all && killed.elapsed() > Duration::from_millis(200) {
                rebound_s = Some(killed.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (last, round_posts) = traffic.await.unwrap();
        n = last;
        // Every popup of this round in (or out of its TTL).
        tokio::time::sleep(Duration::from_secs(5)).await;

        let lost_stores: HashSet<usize> = lost_instances
            .iter()
            .flat_map(|i| i * most..i * most + s)
            .collect();
        let by_slug: HashMap<&str, &Tablet> =
            tablets.iter().map(|t| (t.slug.as_str(), t)).collect();
        let (mut lost_side, mut other_side) = (Vec::new(), Vec::new());
        for p in round_posts.iter().filter(|p| p.ok && p.at >= killed) {
            let slug = format!("store{:02}", p.store);
            let wait = by_slug.get(slug.as_str()).and_then(|t| {
                let l = t.log.lock().unwrap();
                l.first_at.get(&p.seq).map(|at| (*at - p.at).as_secs_f64())
            });
            if lost_stores.contains(&p.store) {
                lost_side.push(wait);
            } else {
                other_side.push(wait);
            }
        }
        let round = Round {
            stores: s,
            rebound_s,
            lost_side: summary(&lost_side),
            other_side: summary(&other_side),
        };
        println!(
            "[{:>5.0}s] {s} stores: bound again after {:?} s; after the loss, lost side max wait {:.2} s, other side {:.2} s",
            started.elapsed().as_secs_f64(),
            round.rebound_s,
            round.lost_side.3,
            round.other_side.3
        );
        rounds.push(round);
        posted.extend(round_posts);

        // The node comes back for the next size.
        blocking({
            let nodes = nodes.clone();
            move || {
                let mut n = nodes.lock().unwrap();
                n.nodes[victim].spawn();
                n.nodes[victim].wait_up();
            }
        })
        .await;
        for b in &bases {
            common::eventually(Duration::from_secs(120), "bus up", || async {
                gauge(b, "bizcall_bus_connected").await == 1.0
            })
            .await;
        }
        check_alive(&mut instances);
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let ok: Vec<(String, usize)> = posted
        .iter()
        .filter(|p| p.ok)
        .map(|p| (p.seq.clone(), p.store))
        .collect();
    let never_ok: Vec<&String> = posted.iter().filter(|p| !p.ok).map(|p| &p.seq).collect();
    let mut missing_rows = Vec::new();
    for (seq, _) in &ok {
        if pool.call(seq).await.unwrap().is_none() {
            missing_rows.push(seq.clone());
        }
    }
    let tally = Tally::of(&tablets, &ok, &HashSet::new());

    let report = report(&rounds);
    println!("\n{report}");
    common::fleet::print_cdr_rows(posted.len(), ok.len(), never_ok.len(), missing_rows.len());
    tally.print_rows(tablets.len());
    let out = common::artifacts().join("node-loss");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("node-loss.md"), &report).unwrap();
    std::fs::write(out.join("node-loss.svg"), plot(&rounds)).unwrap();
    println!("\nwritten: {}", out.display());

    assert!(never_ok.is_empty(), "CDRs never answered OK: {never_ok:?}");
    assert!(
        missing_rows.is_empty(),
        "answered OK but not stored: {missing_rows:?}"
    );
    tally.assert_clean();
    assert!(
        rounds.iter().all(|r| r.rebound_s.is_some()),
        "every instance bound its stores again"
    );

    drop(instances);
    pool.close().await;
    db.cleanup().await;
}

/// The results table (markdown).
fn report(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| stores per instance (bindings lost) | bound again after (s) | calls after the loss, lost side: n / p50 / p99 / max wait (s) / not shown | other instances: n / p50 / p99 / max wait (s) / not shown |\n|---|---|---|---|\n",
    );
    for r in rounds {
        let side = |(n, p50, p99, max, none): (usize, f64, f64, f64, usize)| {
            format!("{n} / {p50:.3} / {p99:.3} / {max:.3} / {none}")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.stores,
            r.rebound_s.map_or("never".into(), |s| format!("{s:.2}")),
            side(r.lost_side),
            side(r.other_side)
        );
    }
    out
}

/// A line of the plot: its name, its colour, its value per size.
type Series = (&'static str, &'static str, fn(&Round) -> f64);

/// Two lines against the bindings lost: the time to bind again, and the
/// longest a call posted after the loss waited for its popup.
fn plot(rounds: &[Round]) -> String {
    let (w, h, pad) = (520.0, 300.0, 50.0);
    let x_max = rounds.iter().map(|r| r.stores).max().unwrap_or(1) as f64;
    let y_max = rounds
        .iter()
        .flat_map(|r| [r.rebound_s.unwrap_or(0.0), r.lost_side.3, r.other_side.3])
        .fold(5.5_f64, f64::max)
        * 1.1;
    let x = |v: f64| pad + (w - 1.5 * pad) * v / x_max;
    let y = |v: f64| h - pad - (h - 1.8 * pad) * v / y_max;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        out,
        r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/><line x1="{0}" y1="{1}" x2="{0}" y2="{3}" stroke="#888"/>"##,
        x(0.0),
        y(0.0),
        x(x_max),
        y(y_max)
    );
    let _ = write!(
        out,
        r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#c00" stroke-dasharray="4,3"/><text x="{2}" y="{3}" text-anchor="end" fill="#c00">5 s target</text>"##,
        x(0.0),
        y(5.0),
        x(x_max),
        y(5.0) - 4.0
    );
    let series: [Series; 3] = [
        ("bound again (s)", "#06c", |r| r.rebound_s.unwrap_or(0.0)),
        ("longest wait, lost side (s)", "#222", |r| r.lost_side.3),
        ("longest wait, other instances (s)", "#999", |r| {
            r.other_side.3
        }),
    ];
    for (k, (name, colour, value)) in series.iter().enumerate() {
        let points: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.stores as f64), y(value(r))))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            points.join(" "),
            pad + 10.0,
            pad / 2.0 + 14.0 * k as f64
        );
    }
    for r in rounds {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(r.stores as f64),
            y(0.0) + 14.0,
            r.stores
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">bindings lost (stores on the instance)</text><text x="8" y="{:.1}">{:.1} s</text></svg>"#,
        (w) / 2.0,
        h - 12.0,
        y(y_max) + 4.0,
        y_max
    );
    out.push('\n');
    out
}
