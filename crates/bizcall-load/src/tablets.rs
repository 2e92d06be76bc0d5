//! Tablets: one STOMP-over-WebSocket client each, opened in this process
//! or spread over worker processes (`run --workers`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizcall::stomp::frame::{Command, Decoder, Frame, Item, Version};
use chrono::Utc;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::*;

/// One popup as a tablet received it.
pub(crate) struct Delivery {
    pub(crate) tablet: usize,
    pub(crate) call_id: String,
    pub(crate) at: Instant,
    /// Microseconds from the event's `publishedAt` to its receipt (wall
    /// clocks of the same machine): the bus → hub → socket part alone.
    pub(crate) since_published_us: Option<i64>,
}

/// What a tablet logs in with and subscribes to.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Login {
    pub(crate) url: String,
    pub(crate) source: Option<IpAddr>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) destination: String,
}

/// Opens one tablet: WebSocket, CONNECT, SUBSCRIBE (with a receipt); then
/// a task forwards every MESSAGE's call id to `tx`.
pub(crate) async fn open_tablet(
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
pub(crate) async fn open_all(
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
pub(crate) fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What a worker process is given on stdin.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerJob {
    pub(crate) first_index: usize,
    pub(crate) concurrency: usize,
    pub(crate) logins: Vec<Login>,
}

/// Opens the tablets in this process and, with `workers` > 1, in child
/// processes (`bizcall-load worker`), each with its own descriptors. Their
/// deliveries arrive on `tx` like this process's own. Returns (opened,
/// failed, seconds, the children: they stop when dropped).
pub(crate) async fn open_with_workers(
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
pub(crate) async fn worker() -> anyhow::Result<()> {
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
