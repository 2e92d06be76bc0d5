//! The soak: `scripts/soak` runs it (an hour; not part of `scripts/test`).
//! Three instances behind nginx on PostgreSQL and a RabbitMQ node of the
//! test's own; 2,000 tablets (1,000 stores × 2) of which about 10 a second
//! leave and reconnect; 200 CDRs a second; every 10 minutes one instance is
//! stopped with SIGTERM and started again, and five minutes later the
//! broker restarts. Every 10 s it samples each instance's resident memory,
//! open descriptors, threads and runtime tasks, the database's connections,
//! and the webhook→popup p99 of those 10 s; it writes them to
//! `artifacts/soak/soak.csv` and `soak.svg`, prints each series' slope,
//! and fails on any call lost, duplicated, sent to another store or shown
//! after it expired.
//!
//! `BIZCALL_SOAK_SECS` (3600) and `BIZCALL_SOAK_EVERY` (600) shorten it.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{
    add_stores, print_cdr_rows, provider_post, start_churning_tablets, vn, SentAt, Tally,
};
use common::nginx::Nginx;
use common::rabbit::Nodes;
use common::{Backend, Broker, Instance, TestDb};
use tokio_util::sync::CancellationToken;

const STORES: usize = 1000;
const TABLETS_PER_STORE: usize = 2;
const RATE_PER_SEC: u64 = 200;
/// Each tablet leaves after about this long: 2,000 / 200 s = 10 a second.
const CHURN: Duration = Duration::from_secs(200);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Slopes are taken after this warm-up.
const WARM_UP: Duration = Duration::from_secs(300);
/// An instance's memory is judged once it is this old: the delivery trail
/// keeps each call it showed for ten minutes, so memory rises for that
/// long after every start, by design.
const SETTLE: Duration = Duration::from_secs(11 * 60);
const SERIES: &str = "0508000";

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// One sample of the whole fleet.
#[derive(Clone, Debug, Default)]
struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
    tasks: f64,
    db_connections: f64,
    p99_ms: f64,
    /// Per running instance: (instance, its life, age in s, RSS in MiB).
    each: Vec<(usize, usize, f64, f64)>,
}

const SERIES_NAMES: [&str; 6] = [
    "RSS (MiB, 3 instances)",
    "descriptors (3 instances)",
    "threads (3 instances)",
    "runtime tasks (3 instances)",
    "PostgreSQL connections",
    "webhook→popup p99 (ms)",
];

impl Sample {
    fn values(&self) -> [f64; 6] {
        [
            self.rss_mib,
            self.fds,
            self.threads,
            self.tasks,
            self.db_connections,
            self.p99_ms,
        ]
    }
}

/// Descriptors, threads or resident KiB of `pid` from /proc; zero when
/// the process is gone.
fn proc_count(pid: u32, what: &str) -> f64 {
    let field = match what {
        "fds" => {
            return std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as f64
        }
        "rss" => "VmRSS:",
        _ => "Threads:",
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The slope per hour of each instance's resident memory once it is
/// `settle` old, fitted across all its lives at once (least squares with
/// an intercept per life: restarts do not count as growth); with the
/// number of samples it used.
fn settled_rss_slope(samples: &[Sample], settle: f64) -> (f64, usize) {
    let mut lives: std::collections::HashMap<(usize, usize), Vec<(f64, f64)>> =
        std::collections::HashMap::new();
    for s in samples {
        for &(i, life, age, rss) in &s.each {
            if age >= settle && rss > 0.0 {
                lives.entry((i, life)).or_default().push((s.at_s, rss));
            }
        }
    }
    let (mut num, mut den, mut n) = (0.0, 0.0, 0);
    for points in lives.values() {
        let k = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / k;
        let my = points.iter().map(|p| p.1).sum::<f64>() / k;
        num += points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>();
        den += points.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
        n += points.len();
    }
    (if den == 0.0 { 0.0 } else { num / den * 3600.0 }, n)
}

/// Least-squares slope of `ys` against `xs`, per hour.
fn slope_per_hour(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den * 3600.0
    }
}

/// Six small line charts, one per series, in one SVG.
fn svg(samples: &[Sample], events: &[(f64, &str)]) -> String {
    let (w, h, pad) = (460.0, 180.0, 40.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * w,
        3.0 * h
    );
    let t_max = samples.last().map_or(1.0, |s| s.at_s.max(1.0));
    for (k, name) in SERIES_NAMES.iter().enumerate() {
        let (ox, oy) = ((k % 2) as f64 * w, (k / 2) as f64 * h);
        let ys: Vec<f64> = samples.iter().map(|s| s.values()[k]).collect();
        let y_max = ys.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
        let x = |t: f64| ox + pad + (w - 1.5 * pad) * t / t_max;
        let y = |v: f64| oy + h - pad + (h - 1.6 * pad) * -(v / y_max);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{name} (max {:.0})</text>"#,
            ox + pad,
            oy + 16.0,
            y_max / 1.1
        );
        let _ = write!(
            out,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/><line x1="{0}" y1="{1}" x2="{0}" y2="{3}" stroke="#888"/>"##,
            x(0.0),
            y(0.0),
            x(t_max),
            y(y_max)
        );
        for (t, what) in events {
            let colour = if what.starts_with("broker") {
                "#c60"
            } else {
                "#06c"
            };
            let _ = write!(
                out,
                r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{colour}" stroke-dasharray="2,2"/>"#,
                x(*t),
                y(0.0),
                y(y_max)
            );
        }
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at_s), y(s.values()[k])))
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="#222" points="{}"/>"##,
            points.join(" ")
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{:.0} min</text>"#,
            x(t_max) - 30.0,
            y(0.0) + 14.0,
            t_max / 60.0
        );
    }
    out.push_str("</svg>\n");
    out
}

struct Fleet {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    ports: Vec<u16>,
    instances: Vec<Option<Instance>>,
    /// Per instance: when its current life began, and which life it is.
    lives: Vec<(Instant, usize)>,
}

impl Fleet {
    fn start_instance(&mut self, i: usize) {
        let mut env = self.env.clone();
        env.push((
            "BIZCALL_SERVER__LISTEN".into(),
            format!("127.0.0.1:{}", self.ports[i]),
        ));
        env.push(("RUST_LOG".into(), "warn,bizcall::server=info".into()));
        self.instances[i] = Some(Instance::spawn(self.dir.path(), &common::env_refs(&env)));
        self.lives[i] = (Instant::now(), self.lives[i].1 + 1);
    }

    /// (instance, life, age in s, pid) of each running instance.
    fn members(&self) -> Vec<(usize, usize, f64, u32)> {
        self.instances
            .iter()
            .enumerate()
            .filter_map(|(i, inst)| {
                let (born, life) = self.lives[i];
                inst.as_ref()
                    .map(|inst| (i, life, born.elapsed().as_secs_f64(), inst.child.id()))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour: scripts/soak runs it"]
async fn soak() {
    let length = env_secs("BIZCALL_SOAK_SECS", 3600);
    let every = env_secs("BIZCALL_SOAK_EVERY", 600);
    let nodes = tokio::task::block_in_place(Nodes::single);
    let node = &nodes.nodes[0];
    let db = TestDb::new(Backend::Postgres).await;
    let db_name = url::Url::parse(db.url()).unwrap().path()[1..].to_string();
    let broker = Broker::on(&node.url());
    let pool = db.connect().await;
    println!("registering {STORES} stores and their tablets");
    let tokens = add_stores(&pool, STORES, SERIES, TABLETS_PER_STORE, "soak").await;
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();

    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push((
        "BIZCALL_SERVER__TRUSTED_PROXIES".into(),
        "[\"127.0.0.1/32\"]".into(),
    ));
    let mut fleet = Fleet {
        dir: tempfile::tempdir().unwrap(),
        env,
        ports: (0..3).map(|_| common::free_port()).collect(),
        instances: vec![None, None, None],
        lives: vec![(Instant::now(), 0); 3],
    };
    for i in 0..3 {
        fleet.start_instance(i);
    }
    for p in &fleet.ports {
        common::bus_up(&format!("http://127.0.0.1:{p}"), Duration::from_secs(60)).await;
    }
    let nginx = Nginx::start(&fleet.ports).await;
    let base = nginx.base();

    let sent: SentAt = Arc::default();
    let stop = CancellationToken::new();
    let (tablets, tasks) = start_churning_tablets(
        &tokens,
        std::slice::from_ref(&base),
        &sent,
        &stop,
        Some(CHURN),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    println!(
        "soak: {} s, {RATE_PER_SEC} CDRs/s, {} tablets, an instance restart every {} s and a broker restart between",
        length.as_secs(),
        tablets.len(),
        every.as_secs()
    );

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
    let mut posts = Vec::new();
    let mut ok: Vec<(String, usize)> = Vec::new();
    let mut lost: Vec<String> = Vec::new();
    let mut samplers = Vec::new();
    let mut events: Vec<(f64, &str)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut next_event = every / 2;
    let mut event_no = 0usize;
    let mut broker_back: Option<Duration> = None;
    let mut n = 0usize;
    while started.elapsed() < length {
        ticker.tick().await;
        let now = started.elapsed();
        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let (members, ports, raw, db_name) = (
                fleet.members(),
                fleet.ports.clone(),
                raw.clone(),
                db_name.clone(),
            );
            samplers.push(tokio::spawn(async move {
                let mut s = Sample {
                    at_s: now.as_secs_f64(),
                    ..Sample::default()
                };
                // A process gone between listing and reading (a restart)
                // counts zero, never stops the soak.
                for (i, life, age, pid) in members {
                    let rss = proc_count(pid, "rss") / 1024.0;
                    s.rss_mib += rss;
                    s.each.push((i, life, age, rss));
                    s.fds += proc_count(pid, "fds");
                    s.threads += proc_count(pid, "threads");
                }
                for p in ports {
                    let base = format!("http://127.0.0.1:{p}");
                    s.tasks += common::metric_if_up(&base, "bizcall_runtime_tasks")
                        .await
                        .unwrap_or(0.0);
                }
                s.db_connections = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(&db_name)
                .fetch_one(&raw)
                .await
                .unwrap_or(0) as f64;
                s
            }));
            // Settled posts are tallied as they go.
            let (done, pending): (Vec<_>, Vec<_>) = posts
                .into_iter()
                .partition(|p: &tokio::task::JoinHandle<(String, usize, bool)>| p.is_finished());
            posts = pending;
            for p in done {
                let (seq, store, answered) = p.await.unwrap();
                if answered {
                    ok.push((seq, store));
                } else {
                    lost.push(seq);
                }
            }
        }
        if let Some(at) = broker_back {
            if now >= at {
                broker_back = None;
                tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
            }
        }
        if now >= next_event {
            next_event += every / 2;
            event_no += 1;
            if event_no % 2 == 1 {
                // The broker stops for 10 s, then starts again.
                events.push((now.as_secs_f64(), "broker restart"));
                println!("{:>5.0} s: broker restart", now.as_secs_f64());
                tokio::task::block_in_place(|| node.ctl_ok(&["stop_app"]));
                broker_back = Some(now + Duration::from_secs(10));
            } else {
                let i = (event_no / 2) % 3;
                events.push((now.as_secs_f64(), "instance restart"));
                println!(
                    "{:>5.0} s: instance {i} SIGTERM and start",
                    now.as_secs_f64()
                );
                if let Some(mut inst) = fleet.instances[i].take() {
                    inst.terminate();
                }
                fleet.start_instance(i);
            }
        }
        n += 1;
        let seq = format!("sk{n:07}");
        let store = (n * 13) % STORES;
        sent.lock().unwrap().insert(seq.clone(), Instant::now());
        let base = base.clone();
        posts.push(tokio::spawn(async move {
            let done = provider_post(&[base], 0, &seq, &vn(SERIES, store)).await;
            (seq, store, done)
        }));
    }
    if broker_back.is_some() {
        tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
    }
    for p in posts {
        let (seq, store, done) = p.await.unwrap();
        if done {
            ok.push((seq, store));
        } else {
            lost.push(seq);
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut samples = Vec::new();
    for s in samplers {
        if let Ok(s) = s.await {
            samples.push(s);
        }
    }
    // Each window's p99 from the tablets' popups.
    let mut timed: Vec<(f64, f64)> = Vec::new();
    for t in &tablets {
        let l = t.log.lock().unwrap();
        timed.extend(
            l.timed
                .iter()
                .map(|(at, ms)| (at.saturating_duration_since(started).as_secs_f64(), *ms)),
        );
    }
    for s in &mut samples {
        let mut window: Vec<f64> = timed
            .iter()
            .filter(|(at, _)| *at >= s.at_s && *at < s.at_s + SAMPLE_EVERY.as_secs_f64())
            .map(|(_, ms)| *ms)
            .collect();
        window.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if !window.is_empty() {
            s.p99_ms = window[((window.len() - 1) as f64 * 0.99) as usize];
        }
    }

    let mut missing_rows = Vec::new();
    for (seq, _) in &ok {
        if pool.call(seq).await.unwrap().is_none() {
            missing_rows.push(seq.clone());
        }
    }
    let tally = Tally::of(&tablets, &ok, &HashSet::new());

    let dir = common::artifacts().join("soak");
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from(
        "seconds,rss_mib,fds,threads,tasks,db_connections,p99_ms,rss_mib_0,rss_mib_1,rss_mib_2\n",
    );
    for s in &samples {
        let _ = write!(
            csv,
            "{:.0},{:.1},{},{},{},{},{:.1}",
            s.at_s, s.rss_mib, s.fds, s.threads, s.tasks, s.db_connections, s.p99_ms
        );
        for i in 0..3 {
            let rss = s.each.iter().find(|e| e.0 == i).map_or(0.0, |e| e.3);
            let _ = write!(csv, ",{rss:.1}");
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("soak.csv"), csv).unwrap();
    std::fs::write(dir.join("soak.svg"), svg(&samples, &events)).unwrap();

    println!();
    print_cdr_rows(n, ok.len(), lost.len(), missing_rows.len());
    tally.print_rows(tablets.len());
    println!();
    println!("| series | first sample after warm-up | last | slope per hour (least squares, after warm-up) |");
    println!("|---|---|---|---|");
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= WARM_UP.as_secs_f64().min(length.as_secs_f64() / 4.0))
        .collect();
    let xs: Vec<f64> = warm.iter().map(|s| s.at_s).collect();
    for (k, name) in SERIES_NAMES.iter().enumerate() {
        let ys: Vec<f64> = warm.iter().map(|s| s.values()[k]).collect();
        println!(
            "| {name} | {:.1} | {:.1} | {:+.2} |",
            ys.first().copied().unwrap_or(0.0),
            ys.last().copied().unwrap_or(0.0),
            slope_per_hour(&xs, &ys)
        );
    }
    let settle = SETTLE.as_secs_f64().min(length.as_secs_f64() / 3.0);
    let (slope, used) = settled_rss_slope(&samples, settle);
    println!(
        "\nresident memory of each instance at least {settle:.0} s old ({used} samples): {slope:+.2} MiB per hour"
    );
    println!("\nsamples: {}", dir.display());

    assert!(
        lost.is_empty(),
        "CDRs never answered OK: {:?}",
        &lost[..lost.len().min(5)]
    );
    assert!(
        missing_rows.is_empty(),
        "answered OK but not stored: {:?}",
        &missing_rows[..missing_rows.len().min(5)]
    );
    tally.assert_clean();

    drop(nginx);
    drop(fleet);
    raw.close().await;
    pool.close().await;
    db.cleanup().await;
}
