//! `bizcall-load`: the load generator and the baselines it is compared with.
//!
//! - `run`: registers stores and tablet tokens, opens N tablets (STOMP over
//!   WebSocket) on one set of instances, posts CDRs at a set rate to another,
//!   and records webhook-to-popup latency per delivery; it also reads the
//!   tablet instance's resident memory and CPU time from `/proc`.
//! - `amqp`: the floor, a bare publish-confirm → consume round trip on the
//!   same broker with the same message size.
//! - `webstomp`: RabbitMQ's Web-STOMP plugin with tablets subscribed straight
//!   to the broker.
//! - `intake`: CDR intake over HTTP against the same `INSERT … ON CONFLICT`
//!   driven directly, at the same concurrency.
//!
//! Every command prints a table, and with `--out DIR` writes `<name>.json`.

mod report;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizcall::call::{CallEvent, CallStatus, EventKind};
use bizcall::db::Db;
use bizcall::stomp::frame::{Command, Decoder, Frame, Item, Version};
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use report::Series;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "bizcall-load",
    about = "Load generator and baselines for bizcall"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tablets on some instances, CDRs to others: webhook→popup latency.
    Run(RunArgs),
    /// The floor: publish-confirm → consume on the same broker.
    Amqp(AmqpArgs),
    /// RabbitMQ Web-STOMP with tablets subscribed straight to the broker.
    Webstomp(WebstompArgs),
    /// CDR intake over HTTP against the same upsert driven directly.
    Intake(IntakeArgs),
    /// Draws every series in DIR into latency.svg and writes results.md.
    Plot { dir: PathBuf },
    /// (Internal) holds tablets for `run --workers`: logins on stdin,
    /// deliveries on stdout.
    #[command(hide = true)]
    Worker,
    /// Deletes exchanges a run declared (the service's are durable).
    DropExchanges {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Calls per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Directory for `<name>.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Base URL(s) CDRs are posted to (instance A…).
    #[arg(long = "post-to", required = true)]
    post_to: Vec<String>,
    /// WebSocket URL(s) tablets connect to (instance B…).
    #[arg(long = "tablets-at", required = true)]
    tablets_at: Vec<String>,
    /// The instances' database, to register stores and tokens.
    #[arg(long)]
    db: String,
    #[arg(long, default_value_t = 1000)]
    tablets: usize,
    #[arg(long, default_value_t = 100)]
    stores: usize,
    /// Pid of the tablet instance, for memory and CPU from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Source addresses for tablet sockets (127.0.0.x), used in turn.
    #[arg(long = "source", value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Tablets connecting at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Processes holding the tablets (this one and N−1 children), each with
    /// its own descriptor limit: for more tablets than one process can open.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Name of the results (`<name>.json`).
    #[arg(long, default_value = "bizcall")]
    name: String,
    /// Processes whose CPU use is reported over the sending phase
    /// (`name=PID` or `name=comm:COMMAND`, repeatable).
    #[arg(long = "cpu-of")]
    cpu_of: Vec<Watched>,
}

#[derive(Args)]
struct AmqpArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
}

#[derive(Args)]
struct WebstompArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    tablets: usize,
    /// Exchanges (one per "store"); each call goes to one.
    #[arg(long, default_value_t = 100)]
    stores: usize,
    /// Pid of the broker (beam.smp), for memory from /proc.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long = "source", value_delimiter = ',')]
    sources: Vec<IpAddr>,
}

#[derive(Args)]
struct IntakeArgs {
    #[arg(long = "post-to")]
    post_to: String,
    #[arg(long)]
    db: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(cap) = bizcall::server::raise_file_limit() {
        eprintln!("open-file limit: {cap}");
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        match cli.command {
            Cmd::Run(a) => run(a).await,
            Cmd::Amqp(a) => amqp(a).await,
            Cmd::Webstomp(a) => webstomp(a).await,
            Cmd::Intake(a) => intake(a).await,
            Cmd::Plot { dir } => plot(&dir),
            Cmd::Worker => worker().await,
            Cmd::DropExchanges { amqp, names } => drop_exchanges(&amqp, &names).await,
        }
    })
}

async fn drop_exchanges(amqp: &str, names: &[String]) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default())
        .await
        .context("broker")?;
    let channel = conn.create_channel().await?;
    for name in names {
        channel
            .exchange_delete(name.as_str().into(), Default::default())
            .await
            .with_context(|| format!("deleting exchange {name}"))?;
        eprintln!("deleted exchange {name}");
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

// ---- /proc ---------------------------------------------------------------

/// A process (or every process with one command name) whose CPU time is
/// read over the sending phase: `name=PID` or `name=comm:COMMAND`.
#[derive(Clone, Debug)]
struct Watched {
    name: String,
    target: WatchTarget,
}

#[derive(Clone, Debug)]
enum WatchTarget {
    Pid(u32),
    Comm(String),
}

impl std::str::FromStr for Watched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| format!("expected name=PID or name=comm:COMMAND, got \"{s}\""))?;
        let target = match target.strip_prefix("comm:") {
            Some(comm) => WatchTarget::Comm(comm.to_string()),
            None => WatchTarget::Pid(
                target
                    .parse()
                    .map_err(|_| format!("expected a pid after '=', got \"{target}\""))?,
            ),
        };
        Ok(Watched {
            name: name.to_string(),
            target,
        })
    }
}

impl Watched {
    fn pids(&self) -> Vec<u32> {
        match &self.target {
            WatchTarget::Pid(p) => vec![*p],
            WatchTarget::Comm(comm) => std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect(),
        }
    }

    /// CPU seconds per process, so processes that come or go between two
    /// readings are counted only while present in both.
    fn read(&self) -> HashMap<u32, f64> {
        self.pids()
            .into_iter()
            .filter_map(|p| Some((p, cpu_seconds(p)?)))
            .collect()
    }
}

/// Reads every watched process (and this one) at the start of a phase.
struct CpuWatch {
    /// CPU seconds per pid of each watched entry, at the start.
    start: Vec<HashMap<u32, f64>>,
    watched: Vec<Watched>,
    at: Instant,
}

impl CpuWatch {
    fn start(watched: &[Watched]) -> Self {
        let mut watched = watched.to_vec();
        watched.push(Watched {
            name: "bizcall-load (this)".into(),
            target: WatchTarget::Pid(std::process::id()),
        });
        CpuWatch {
            start: watched.iter().map(Watched::read).collect(),
            watched,
            at: Instant::now(),
        }
    }

    /// Cores used by each process over the phase (1.0 = one core busy).
    fn finish(&self) -> Vec<(String, f64)> {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        self.watched
            .iter()
            .zip(&self.start)
            .map(|(w, before)| {
                let after = w.read();
                let used: f64 = after
                    .iter()
                    .filter_map(|(pid, a)| Some(a - before.get(pid)?))
                    .sum();
                (w.name.clone(), used / secs)
            })
            .collect()
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(100.0)
    });
    Some(ticks / hz)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn write_json(out: &Option<PathBuf>, name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

// ---- a tablet ------------------------------------------------------------

/// One popup as a tablet received it.
struct Delivery {
    tablet: usize,
    call_id: String,
    at: Instant,
    /// Microseconds from the event's `publishedAt` to its receipt (wall
    /// clocks of the same machine): the bus → hub → socket part alone.
    since_published_us: Option<i64>,
}

/// What a tablet logs in with and subscribes to.
#[derive(serde::Serialize, serde::Deserialize)]
struct Login {
    url: String,
    source: Option<IpAddr>,
    headers: Vec<(String, String)>,
    destination: String,
}

/// Opens one tablet: WebSocket, CONNECT, SUBSCRIBE (with a receipt); then
/// a task forwards every MESSAGE's call id to `tx`.
async fn open_tablet(
    index: usize,
    login: Login,
    tx: mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<()> {
    let url = url::Url::parse(&login.url)?;
    let host = url.host_str().context("host")?;
    let port = url.port_or_known_default().context("port")?;
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("address")?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = login.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        login.url.as_str(),
    )?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v12.stomp".parse()?);
    // tungstenite's default 128 KiB read buffer is zero-filled before
    // every read: at 10,000 MESSAGEs a second that memset alone took a
    // twentieth of the machine. Popups are well under 4 KiB.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    let mut connect = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("heart-beat", "0,0");
    for (k, v) in &login.headers {
        connect = connect.header(k, v.clone());
    }
    let subscribe = Frame::new(Command::Subscribe)
        .header("id", "0")
        .header("destination", login.destination.clone())
        .header("ack", "auto")
        .header("receipt", "subscribed");
    for f in [connect, subscribe] {
        ws.send(Message::Text(
            String::from_utf8_lossy(&f.encode(Version::V1_2))
                .into_owned()
                .into(),
        ))
        .await?;
    }
    let mut decoder = Decoder::new(1 << 20);
    let mut ready = false;
    while !ready {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no answer to CONNECT/SUBSCRIBE")?
            .context("closed")??;
        decoder.push(&msg.into_data());
        while let Some(item) = decoder.next_item()? {
            if let Item::Frame(f) = item {
                match f.command {
                    Command::Receipt => ready = true,
                    Command::Error => bail!("ERROR {}", f.get("message").unwrap_or("")),
                    _ => {}
                }
            }
        }
    }
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let at = Instant::now();
            decoder.push(&msg.into_data());
            while let Ok(Some(item)) = decoder.next_item() {
                let Item::Frame(f) = item else { continue };
                if f.command != Command::Message {
                    continue;
                }
                let wall = Utc::now();
                let body = serde_json::from_slice::<serde_json::Value>(&f.body).ok();
                let field = |k: &str| {
                    body.as_ref()
                        .and_then(|v| v[k].as_str().map(str::to_string))
                };
                let since_published_us = field("publishedAt")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| {
                        (wall - t.with_timezone(&Utc))
                            .num_microseconds()
                            .unwrap_or(0)
                    });
                let _ = tx.send(Delivery {
                    tablet: index,
                    call_id: field("callId").unwrap_or_default(),
                    at,
                    since_published_us,
                });
            }
        }
    });
    Ok(())
}

/// Opens every tablet with bounded concurrency; returns (opened, failures, seconds).
async fn open_all(
    logins: Vec<Login>,
    first_index: usize,
    concurrency: usize,
    tx: mpsc::UnboundedSender<Delivery>,
) -> (usize, usize, f64) {
    let bar = progress(logins.len() as u64, "connecting");
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(logins.into_iter().enumerate())
        .map(|(i, login)| {
            let tx = tx.clone();
            let bar = bar.clone();
            async move {
                let r = open_tablet(first_index + i, login, tx).await;
                bar.inc(1);
                r
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish();
    let failures: Vec<&anyhow::Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = failures.first() {
        eprintln!("{} tablets failed to connect; first: {e:#}", failures.len());
    }
    (
        results.len() - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64(),
    )
}

/// Wall-clock microseconds: the one clock the load generator's processes
/// share.
fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What a worker process is given on stdin.
#[derive(serde::Serialize, serde::Deserialize)]
struct WorkerJob {
    first_index: usize,
    concurrency: usize,
    logins: Vec<Login>,
}

/// Opens the tablets in this process and, with `workers` > 1, in child
/// processes (`bizcall-load worker`), each with its own descriptors. Their
/// deliveries arrive on `tx` like this process's own. Returns (opened,
/// failed, seconds, the children: they stop when dropped).
async fn open_with_workers(
    mut logins: Vec<Login>,
    workers: usize,
    concurrency: usize,
    tx: mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<(usize, usize, f64, Vec<tokio::process::Child>)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let workers = workers.clamp(1, logins.len().max(1));
    let share = logins.len().div_ceil(workers);
    let mut children = Vec::new();
    let mut readies = Vec::new();
    // Children take the tail shares; this process keeps the first.
    for w in (1..workers).rev() {
        let first_index = w * share;
        if first_index >= logins.len() {
            continue;
        }
        let part = logins.split_off(first_index);
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let job = serde_json::to_vec(&WorkerJob {
            first_index,
            concurrency: concurrency.div_ceil(workers),
            logins: part,
        })?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin.write_all(&job).await?;
        stdin.write_all(b"\n").await?;
        // stdin stays open: the worker stops when it closes.
        let stdout = child.stdout.take().context("worker stdout")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(usize, usize, f64)>();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _stdin = stdin;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let mut f = line.split(' ');
                match f.next() {
                    Some("ready") => {
                        let mut n = || f.next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
                        let (o, x, t) = (n(), n(), n());
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send((o as usize, x as usize, t));
                        }
                    }
                    Some("d") => {
                        let (Some(tablet), Some(call_id), Some(at_us), Some(pub_us)) =
                            (f.next(), f.next(), f.next(), f.next())
                        else {
                            continue;
                        };
                        let (Ok(tablet), Ok(at_us)) = (tablet.parse(), at_us.parse::<i64>()) else {
                            continue;
                        };
                        // The child's receipt, on this process's clock.
                        let ago = Duration::from_micros((wall_us() - at_us).max(0) as u64);
                        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
                        let _ = tx.send(Delivery {
                            tablet,
                            call_id: call_id.to_string(),
                            at,
                            since_published_us: pub_us.parse().ok(),
                        });
                    }
                    _ => {}
                }
            }
        });
        readies.push(ready_rx);
        children.push(child);
    }
    let (mut opened, mut failed, mut secs) = open_all(logins, 0, concurrency, tx).await;
    for r in readies {
        let (o, x, t) = r
            .await
            .context("a worker process ended before its tablets were open")?;
        opened += o;
        failed += x;
        secs = secs.max(t);
    }
    Ok((opened, failed, secs, children))
}

/// `bizcall-load worker`: opens the tablets given on stdin, says `ready`,
/// then writes one line per delivery until stdin closes.
async fn worker() -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let job: WorkerJob =
        serde_json::from_str(&lines.next_line().await?.context("no job on stdin")?)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (opened, failed, secs) = open_all(job.logins, job.first_index, job.concurrency, tx).await;
    println!("ready {opened} {failed} {secs}");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.flush()?;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                if !matches!(line, Ok(Some(_))) {
                    return Ok(());
                }
            }
            d = rx.recv() => {
                let Some(d) = d else { return Ok(()) };
                let mut write = |d: Delivery| {
                    // The receipt on the wall clock, which the parent shares.
                    let at_us = wall_us() - d.at.elapsed().as_micros() as i64;
                    let pub_us = d.since_published_us.map_or("-".to_string(), |u| u.to_string());
                    writeln!(out, "d {} {} {at_us} {pub_us}", d.tablet, d.call_id)
                };
                write(d)?;
                while let Ok(d) = rx.try_recv() {
                    write(d)?;
                }
                out.flush()?;
            }
        }
    }
}

/// Tallies deliveries against what was sent.
struct Tally {
    hist: hdrhistogram::Histogram<u64>,
    /// `publishedAt` → receipt, where the event carries it.
    after_publish: hdrhistogram::Histogram<u64>,
    seen: HashSet<(usize, String)>,
    duplicates: u64,
    unknown: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: report::histogram(),
            after_publish: report::histogram(),
            seen: HashSet::new(),
            duplicates: 0,
            unknown: 0,
        }
    }

    fn add(&mut self, d: Delivery, sent: &Mutex<HashMap<String, Instant>>) {
        let Some(at) = sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d.call_id)
            .copied()
        else {
            self.unknown += 1;
            return;
        };
        if !self.seen.insert((d.tablet, d.call_id)) {
            self.duplicates += 1;
            return;
        }
        report::record(
            &mut self.hist,
            d.at.saturating_duration_since(at).as_micros() as u64,
        );
        if let Some(us) = d.since_published_us {
            report::record(&mut self.after_publish, us.max(0) as u64);
        }
    }
}

fn event(call_id: &str, store: &str) -> CallEvent {
    let now = Utc::now();
    CallEvent {
        kind: EventKind::Call,
        call_id: call_id.into(),
        store: store.into(),
        status: CallStatus::Ringing,
        caller_number: "01012345678".into(),
        virtual_number: Some("05012345678".into()),
        started_at: now,
        answered_at: None,
        ended_at: None,
        published_at: now,
        expires_at: now + chrono::Duration::seconds(30),
    }
}

// ---- run: bizcall end to end ------------------------------------------------

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let run_id = format!("{:04x}", rand::random::<u16>());
    let db = Db::connect(&a.db).await.context("database")?;
    db.migrate().await?;
    let per_store = a.tablets.div_ceil(a.stores);
    let bar = progress(a.tablets as u64, "registering");
    let mut stores = Vec::new();
    let mut logins = Vec::new();
    let mut tablets_per_store = Vec::with_capacity(a.stores);
    for s in 0..a.stores {
        let mut here = 0usize;
        let slug = format!("load-{run_id}-{s}");
        let number = format!(
            "059{}{s:05}",
            u16::from_str_radix(&run_id, 16).unwrap_or(0) % 1000
        );
        db.store_add(&slug, &slug, std::slice::from_ref(&number))
            .await?;
        for _ in 0..per_store {
            if logins.len() == a.tablets {
                break;
            }
            let (_, token) = db.token_issue(&slug, "load").await?;
            let i = logins.len();
            logins.push(Login {
                url: a.tablets_at[i % a.tablets_at.len()].clone(),
                source: (!a.sources.is_empty()).then(|| a.sources[i % a.sources.len()]),
                headers: vec![
                    ("host".into(), "bizcall".into()),
                    ("passcode".into(), token),
                ],
                destination: format!("/topic/call-store/{slug}"),
            });
            here += 1;
            bar.inc(1);
        }
        tablets_per_store.push(here);
        stores.push(number);
    }
    bar.finish();

    let rss_before = a.pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (opened, failed, connect_secs, workers) =
        open_with_workers(logins, a.workers, a.connect_concurrency, tx).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let per_tablet_kib = match (rss_before, rss_after) {
        (Some(b), Some(f)) if opened > 0 => Some((f.saturating_sub(b)) as f64 / opened as f64),
        _ => None,
    };

    // Post CDRs at the rate, to the instances in turn.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()?;
    let errors = Arc::new(AtomicU64::new(0));
    // POST → `OK`: the intake part alone.
    let answered = Arc::new(Mutex::new(report::histogram()));
    let total = a.common.rate * a.common.duration;
    let mut expected: u64 = 0;
    let cpu_before = a.pid.and_then(cpu_seconds);
    let mut watched = a.cpu_of.clone();
    watched.extend(workers.iter().enumerate().filter_map(|(i, c)| {
        Some(Watched {
            name: format!("bizcall-load worker {}", i + 1),
            target: WatchTarget::Pid(c.id()?),
        })
    }));
    let watch = CpuWatch::start(&watched);
    let bar = progress(total, "calls");
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / a.common.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tally = Tally::new();
    let stamp = (Utc::now() + chrono::Duration::hours(9))
        .format("%Y%m%d%H%M%S")
        .to_string();
    for n in 0..total {
        ticker.tick().await;
        let store = (n as usize) % a.stores;
        expected += tablets_per_store[store] as u64;
        let seq = format!("ld{run_id}{n}");
        sent.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq.clone(), Instant::now());
        let url = format!(
            "{}/bizcall/cdr",
            a.post_to[n as usize % a.post_to.len()].trim_end_matches('/')
        );
        let (client, errors, answered, vn, stamp) = (
            client.clone(),
            errors.clone(),
            answered.clone(),
            stores[store].clone(),
            stamp.clone(),
        );
        tokio::spawn(async move {
            let form = [
                ("seq", seq.as_str()),
                ("sdt", stamp.as_str()),
                ("fromn", "01012345678"),
                ("ton", "0200000000"),
                ("vn", vn.as_str()),
            ];
            let posted = Instant::now();
            match client.post(url).form(&form).send().await {
                Ok(r) if r.status().is_success() => {
                    let us = posted.elapsed().as_micros() as u64;
                    report::record(&mut answered.lock().unwrap_or_else(|p| p.into_inner()), us);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        bar.inc(1);
        while let Ok(d) = rx.try_recv() {
            tally.add(d, &sent);
        }
    }
    bar.finish();
    let sending = started.elapsed().as_secs_f64();
    // Drain what is still on its way.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain_until {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(d)) => tally.add(d, &sent),
            Ok(None) => break,
            Err(_) if tally.seen.len() as u64 >= expected => break,
            Err(_) => {}
        }
    }
    let cpu_after = a.pid.and_then(cpu_seconds);
    let cores = watch.finish();
    let delivered = tally.seen.len() as u64;
    let cpu_per_1000 = match (cpu_before, cpu_after) {
        (Some(b), Some(f)) if delivered > 0 => Some((f - b) / delivered as f64 * 1000.0),
        _ => None,
    };
    let answered = answered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
    };
    let series = Series {
        name: "bizcall webhook→popup".into(),
        hist: tally.hist,
        seconds: sending,
        extra: json!({
            "tablets": opened,
            "tablet_connect_failures": failed,
            "stores": a.stores,
            "calls": total,
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "expected_deliveries": expected,
            "lost": expected.saturating_sub(delivered),
            "duplicates": tally.duplicates,
            "connect_per_s": opened as f64 / connect_secs.max(1e-9),
            "rss_before_kib": rss_before,
            "rss_after_connect_kib": rss_after,
            "rss_per_idle_tablet_kib": per_tablet_kib,
            "cpu_s_per_1000_deliveries": cpu_per_1000,
            "webhook_ok_p50_ms": q(&answered, 0.5),
            "webhook_ok_p99_ms": q(&answered, 0.99),
            "published_to_popup_p50_ms": q(&tally.after_publish, 0.5),
            "published_to_popup_p99_ms": q(&tally.after_publish, 0.99),
            "cores_used": cores.iter().map(|(n, c)| json!({"process": n, "cores": c})).collect::<Vec<_>>(),
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    println!(
        "tablets {opened} (failed {failed}), connect {:.0}/s, memory per idle tablet {}, CPU per 1000 deliveries {}",
        opened as f64 / connect_secs.max(1e-9),
        per_tablet_kib.map(|k| format!("{k:.1} KiB")).unwrap_or_else(|| "n/a (no --pid)".into()),
        cpu_per_1000.map(|c| format!("{:.1} ms", c * 1000.0)).unwrap_or_else(|| "n/a".into()),
    );
    let p = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "split: POST→OK p50 {} / p99 {} ms; publishedAt→popup p50 {} / p99 {} ms",
        p(q(&answered, 0.5)),
        p(q(&answered, 0.99)),
        p(q(&tally.after_publish, 0.5)),
        p(q(&tally.after_publish, 0.99)),
    );
    if cores.len() > 1 {
        let list: Vec<String> = cores.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        println!(
            "cores used while sending (of {}): {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            list.join(", ")
        );
    }
    write_json(&a.common.out, &a.name, &series.summary())?;
    drop(workers);
    if let Some(dir) = &a.common.out {
        report::svg(
            std::slice::from_ref(&series),
            &dir.join(format!("{}.svg", a.name)),
        )?;
        std::fs::write(
            dir.join(format!("{}.hist", a.name)),
            histogram_text(&series.hist),
        )?;
    }
    Ok(())
}

/// Quantile samples, so `plot` can draw several runs together later.
fn histogram_text(h: &hdrhistogram::Histogram<u64>) -> String {
    (0..=400)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) / 100.0);
            format!(
                "{q} {}\n",
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                }
            )
        })
        .collect()
}

/// Publishes one message with a confirm in the background, counting a
/// failure or a nack in `errors`.
fn spawn_publish(
    publisher: Arc<lapin::Channel>,
    exchange: String,
    payload: String,
    props: lapin::BasicProperties,
    errors: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        let confirmed = async {
            publisher
                .basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    lapin::options::BasicPublishOptions::default(),
                    payload.as_bytes(),
                    props,
                )
                .await?
                .await
        };
        if !matches!(confirmed.await, Ok(c) if c.is_ack()) {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// ---- amqp: the floor ------------------------------------------------------------

async fn amqp(a: AmqpArgs) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&a.amqp, lapin::ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    let consumer = conn.create_channel().await?;
    let exchange = format!("bizcall-bench-floor-{:04x}", rand::random::<u16>());
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = consumer
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    consumer
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consumer.basic_qos(250, BasicQosOptions::default()).await?;
    let mut stream = consumer
        .basic_consume(
            queue.name().clone(),
            "floor".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    tokio::spawn(async move {
        while let Some(Ok(d)) = stream.next().await {
            let at = Instant::now();
            let id = serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()
                .and_then(|v| v["callId"].as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = tx.send(Delivery {
                tablet: 0,
                call_id: id,
                at,
                since_published_us: None,
            });
        }
    });
    let publisher = Arc::new(publisher);
    let total = a.common.rate * a.common.duration;
    let bar = progress(total, "floor");
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / a.common.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tally = Tally::new();
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let id = format!("floor{n}");
        let payload = event(&id, "load-store-0").to_json();
        sent.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        let props = lapin::BasicProperties::default().with_expiration("30000".into());
        spawn_publish(
            publisher.clone(),
            exchange.clone(),
            payload,
            props,
            errors.clone(),
        );
        bar.inc(1);
        while let Ok(d) = rx.try_recv() {
            tally.add(d, &sent);
        }
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && (tally.seen.len() as u64) < total {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            tally.add(d, &sent);
        }
    }
    let series = Series {
        name: "floor: AMQP publish-confirm→consume".into(),
        hist: tally.hist,
        seconds,
        extra: json!({
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "lost": total.saturating_sub(tally.seen.len() as u64),
            "duplicates": tally.duplicates,
            "message_bytes": event("floor0", "load-store-0").to_json().len(),
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    write_json(&a.common.out, "floor", &series.summary())?;
    if let Some(dir) = &a.common.out {
        std::fs::write(dir.join("floor.hist"), histogram_text(&series.hist))?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

// ---- webstomp: tablets straight on the broker ----------------------------------

async fn webstomp(a: WebstompArgs) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&a.amqp, lapin::ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let prefix = format!("bizcall-bench-ws-{:04x}", rand::random::<u16>());
    for s in 0..a.stores {
        publisher
            .exchange_declare(
                format!("{prefix}-{s}").as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let logins: Vec<Login> = (0..a.tablets)
        .map(|i| Login {
            url: a.url.clone(),
            source: (!a.sources.is_empty()).then(|| a.sources[i % a.sources.len()]),
            // RabbitMQ reads `host` as the virtual host.
            headers: vec![
                ("host".into(), "/".into()),
                ("login".into(), "guest".into()),
                ("passcode".into(), "guest".into()),
            ],
            destination: format!("/exchange/{prefix}-{}", i % a.stores),
        })
        .collect();
    let per_store: Vec<u64> = (0..a.stores)
        .map(|s| (0..a.tablets).filter(|i| i % a.stores == s).count() as u64)
        .collect();
    let rss_before = a.pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (opened, failed, connect_secs) = open_all(logins, 0, 100, tx).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let per_tablet_kib = match (rss_before, rss_after) {
        (Some(b), Some(f)) if opened > 0 => Some((f.saturating_sub(b)) as f64 / opened as f64),
        _ => None,
    };
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let publisher = Arc::new(publisher);
    let total = a.common.rate * a.common.duration;
    let bar = progress(total, "web-stomp");
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / a.common.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tally = Tally::new();
    let mut expected = 0;
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let store = n as usize % a.stores;
        expected += per_store[store];
        let id = format!("ws{n}");
        let payload = event(&id, "load-store").to_json();
        sent.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        let props = lapin::BasicProperties::default()
            .with_expiration("30000".into())
            .with_content_type("application/json".into());
        spawn_publish(
            publisher.clone(),
            format!("{prefix}-{store}"),
            payload,
            props,
            errors.clone(),
        );
        bar.inc(1);
        while let Ok(d) = rx.try_recv() {
            tally.add(d, &sent);
        }
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && (tally.seen.len() as u64) < expected {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            tally.add(d, &sent);
        }
    }
    let delivered = tally.seen.len() as u64;
    let series = Series {
        name: "RabbitMQ Web-STOMP".into(),
        hist: tally.hist,
        seconds,
        extra: json!({
            "tablets": opened,
            "tablet_connect_failures": failed,
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "expected_deliveries": expected,
            "lost": expected.saturating_sub(delivered),
            "duplicates": tally.duplicates,
            "connect_per_s": opened as f64 / connect_secs.max(1e-9),
            "rss_per_idle_tablet_kib": per_tablet_kib,
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    println!(
        "Web-STOMP memory per idle subscribed connection: {}",
        per_tablet_kib
            .map(|k| format!("{k:.1} KiB"))
            .unwrap_or_else(|| "n/a (no --pid)".into())
    );
    write_json(&a.common.out, "webstomp", &series.summary())?;
    if let Some(dir) = &a.common.out {
        std::fs::write(dir.join("webstomp.hist"), histogram_text(&series.hist))?;
    }
    for s in 0..a.stores {
        let _ = publisher
            .exchange_delete(
                format!("{prefix}-{s}").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

// ---- intake: HTTP vs the same upsert directly ----------------------------------

async fn intake(a: IntakeArgs) -> anyhow::Result<()> {
    let db = Db::connect(&a.db).await?;
    db.migrate().await?;
    let run_id = format!("{:04x}", rand::random::<u16>());
    let stamp = (Utc::now() + chrono::Duration::hours(9))
        .format("%Y%m%d%H%M%S")
        .to_string();
    let deadline = Duration::from_secs(a.duration);
    // A registered store, so each CDR over HTTP takes the whole path: the
    // upsert, the publish with its confirm, and the published mark.
    let slug = format!("intake-{run_id}");
    let vn = format!("0580{:05}1", u16::from_str_radix(&run_id, 16).unwrap_or(0));
    db.store_add(&slug, &slug, std::slice::from_ref(&vn))
        .await
        .context("registering the intake store")?;

    // Direct: the same INSERT … ON CONFLICT the webhook runs, same concurrency.
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (db, counter, stamp, run_id, vn) = (
            db.clone(),
            counter.clone(),
            stamp.clone(),
            run_id.clone(),
            vn.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < deadline {
                n += 1;
                let q = format!(
                    "seq=in{run_id}d{w}x{n}&sdt={stamp}&fromn=01012345678&ton=0200000000&vn={vn}"
                );
                let Ok(params) = bizcall::cdr::Params::from_urlencoded(q.as_bytes()) else {
                    continue;
                };
                let Ok(cdr) = bizcall::cdr::Cdr::from_params(&params) else {
                    continue;
                };
                if db.upsert_call(&cdr).await.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let direct = counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Over HTTP, with a durable OK: first CDRs whose number matches no
    // store (validated, stored, answered; nothing to publish), then CDRs of
    // the registered store (also published, confirmed and marked first).
    let stored_only = post_cdrs(&a, &run_id, &stamp, "0599999999", "u").await?;
    let published = post_cdrs(&a, &run_id, &stamp, &vn, "h").await?;
    let result = json!({
        "concurrency": a.concurrency,
        "direct_upserts_per_s": direct,
        "http_cdrs_per_s": stored_only.0,
        "http_errors": stored_only.1,
        "ratio": stored_only.0 / direct.max(1e-9),
        "http_published_cdrs_per_s": published.0,
        "http_published_errors": published.1,
        "published_ratio": published.0 / direct.max(1e-9),
    });
    println!(
        "| intake at concurrency {} | per s | ÷ direct |",
        a.concurrency
    );
    println!("|---|---|---|");
    println!("| INSERT … ON CONFLICT directly | {direct:.0} | 1.00 |");
    println!(
        "| POST /bizcall/cdr, durable OK (no store matched: nothing published) | {:.0} | {:.2} |",
        stored_only.0,
        stored_only.0 / direct.max(1e-9)
    );
    println!(
        "| POST /bizcall/cdr, durable OK after the publish confirm | {:.0} | {:.2} |",
        published.0,
        published.0 / direct.max(1e-9)
    );
    write_json(&a.out, "intake", &result)?;
    Ok(())
}

/// Posts CDRs for `vn` at the set concurrency for the set time; returns
/// (answered `OK` per second, errors).
async fn post_cdrs(
    a: &IntakeArgs,
    run_id: &str,
    stamp: &str,
    vn: &str,
    tag: &str,
) -> anyhow::Result<(f64, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(a.duration);
    let started = Instant::now();
    let url = format!("{}/bizcall/cdr", a.post_to.trim_end_matches('/'));
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (client, counter, errors, url) =
            (client.clone(), counter.clone(), errors.clone(), url.clone());
        let (prefix, stamp, vn) = (
            format!("in{run_id}{tag}{w}x"),
            stamp.to_string(),
            vn.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < deadline {
                n += 1;
                let seq = format!("{prefix}{n}");
                let form = [
                    ("seq", seq.as_str()),
                    ("sdt", stamp.as_str()),
                    ("fromn", "01012345678"),
                    ("ton", "0200000000"),
                    ("vn", vn.as_str()),
                ];
                match client.post(&url).form(&form).send().await {
                    Ok(r) if r.status().is_success() => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    ))
}

// ---- plot: all series together --------------------------------------------------

/// Rebuilds a histogram-like series from the quantile samples of a `.hist`.
fn load_series(dir: &std::path::Path, name: &str) -> Option<(Series, serde_json::Value)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?)
            .ok()?;
    let text = std::fs::read_to_string(dir.join(format!("{name}.hist"))).ok()?;
    let mut hist = report::histogram();
    // Re-sample: 10,000 points following the recorded quantiles.
    let samples: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (q, v) = l.split_once(' ')?;
            Some((q.parse().ok()?, v.parse().ok()?))
        })
        .collect();
    for i in 0..10_000 {
        let q = i as f64 / 10_000.0;
        let v = samples
            .iter()
            .find(|(sq, _)| *sq >= q)
            .map(|(_, v)| *v)
            .unwrap_or(0);
        report::record(&mut hist, v);
    }
    let label = json["name"].as_str().unwrap_or(name).to_string();
    Some((
        Series {
            name: label,
            hist,
            seconds: 0.0,
            extra: json!({}),
        },
        json,
    ))
}

fn plot(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    let mut md = String::new();
    md.push_str("| series | deliveries | per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | lost | duplicates |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for name in ["floor", "bizcall", "webstomp", "socketio"] {
        let Some((s, json)) = load_series(dir, name) else {
            continue;
        };
        let f = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        let c = |k: &str| {
            json.get(k)
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into())
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
            s.name,
            c("count"),
            f("throughput_per_s"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            c("errors"),
            c("lost"),
            c("duplicates")
        ));
        series.push((s, json));
    }
    let get = |name: &str, key: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()?
            .get(key)?
            .as_f64()
    };
    md.push_str("\n| measure | value |\n|---|---|\n");
    let rows: Vec<(&str, Option<f64>, &str)> = vec![
        ("bizcall tablets connected", get("bizcall", "tablets"), ""),
        (
            "bizcall connect rate",
            get("bizcall", "connect_per_s"),
            "/s",
        ),
        (
            "bizcall resident memory per idle subscribed tablet",
            get("bizcall", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "capacity run: tablets on one fresh instance",
            get("capacity", "tablets"),
            "",
        ),
        (
            "capacity run: resident memory per idle subscribed tablet",
            get("capacity", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "capacity run: lost + duplicate popups",
            get("capacity", "lost")
                .zip(get("capacity", "duplicates"))
                .map(|(l, d)| l + d),
            "",
        ),
        (
            "bizcall CPU per 1000 deliveries",
            get("bizcall", "cpu_s_per_1000_deliveries").map(|s| s * 1000.0),
            "ms",
        ),
        (
            "bizcall POST → `OK` p50 (intake, answered after the publish confirm)",
            get("bizcall", "webhook_ok_p50_ms"),
            "ms",
        ),
        (
            "bizcall POST → `OK` p99",
            get("bizcall", "webhook_ok_p99_ms"),
            "ms",
        ),
        (
            "bizcall publishedAt → popup p50 (publishedAt has whole milliseconds: reads ~0.5 ms high)",
            get("bizcall", "published_to_popup_p50_ms"),
            "ms",
        ),
        (
            "bizcall publishedAt → popup p99",
            get("bizcall", "published_to_popup_p99_ms"),
            "ms",
        ),
        (
            "Web-STOMP subscribed connections",
            get("webstomp", "tablets"),
            "",
        ),
        (
            "Web-STOMP broker memory per idle subscribed connection",
            get("webstomp", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "Socket.IO clients connected",
            get("socketio", "tablets"),
            "",
        ),
        (
            "Socket.IO instance memory per idle connected client",
            get("socketio", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "p50 bizcall − p50 Socket.IO",
            get("bizcall", "p50_ms")
                .zip(get("socketio", "p50_ms"))
                .map(|(a, b)| a - b),
            "ms",
        ),
        (
            "p50 bizcall − p50 floor",
            get("bizcall", "p50_ms")
                .zip(get("floor", "p50_ms"))
                .map(|(a, b)| a - b),
            "ms",
        ),
        (
            "p99 bizcall ÷ p99 floor",
            get("bizcall", "p99_ms")
                .zip(get("floor", "p99_ms"))
                .map(|(a, b)| a / b.max(1e-9)),
            "×",
        ),
        (
            "intake, stored-only path ÷ direct upserts",
            get("intake", "ratio"),
            "×",
        ),
        (
            "intake: INSERT … ON CONFLICT directly",
            get("intake", "direct_upserts_per_s"),
            "/s",
        ),
        (
            "intake: POST /bizcall/cdr with a durable OK (no store matched: nothing published)",
            get("intake", "http_cdrs_per_s"),
            "/s",
        ),
        (
            "intake: POST /bizcall/cdr with a durable OK after the publish confirm",
            get("intake", "http_published_cdrs_per_s"),
            "/s",
        ),
        (
            "intake, published path ÷ direct upserts",
            get("intake", "published_ratio"),
            "×",
        ),
    ];
    for (label, value, unit) in rows {
        let shown = match value {
            Some(v) => format!("{v:.2} {unit}"),
            None => "not measured".into(),
        };
        md.push_str(&format!("| {label} | {shown} |\n"));
    }
    let cores = load_series(dir, "bizcall")
        .and_then(|(_, j)| j.get("cores_used").and_then(|c| c.as_array().cloned()))
        .unwrap_or_default();
    if !cores.is_empty() {
        md.push_str("\n| process, while bizcall's CDRs were sent | cores used |\n|---|---|\n");
        for c in &cores {
            md.push_str(&format!(
                "| {} | {:.2} |\n",
                c.get("process").and_then(|p| p.as_str()).unwrap_or("?"),
                c.get("cores").and_then(|p| p.as_f64()).unwrap_or(0.0)
            ));
        }
    }
    let only: Vec<Series> = series.into_iter().map(|(s, _)| s).collect();
    report::svg(&only, &dir.join("latency.svg"))?;
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        dir.join("latency.svg").display(),
        dir.join("results.md").display()
    );
    Ok(())
}
