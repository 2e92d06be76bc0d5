//! Tablets: one STOMP client each, over `/ws` or one of SockJS's
//! transports (`run --transport`), opened in this process or spread over
//! worker processes (`run --workers`).

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

/// How a tablet reaches the instance.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub(crate) enum Transport {
    /// STOMP over a plain WebSocket (`/ws`): the URL is `ws://…/ws`.
    #[default]
    Ws,
    /// SockJS's `websocket` transport: the URL is the SockJS base
    /// (`http://…/ws/v1/offline-store-pad`).
    SockjsWebsocket,
    /// SockJS's `xhr_streaming` (receives) and `xhr_send` (sends): the URL
    /// is the SockJS base.
    SockjsXhrStreaming,
}

/// What a tablet logs in with and subscribes to.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Login {
    pub(crate) url: String,
    pub(crate) source: Option<IpAddr>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) destination: String,
    #[serde(default)]
    pub(crate) transport: Transport,
}

/// The CONNECT and SUBSCRIBE (with a receipt) a tablet starts with.
fn opening_frames(login: &Login) -> [String; 2] {
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
    [connect, subscribe].map(|f| String::from_utf8_lossy(&f.encode(Version::V1_2)).into_owned())
}

/// Feeds received STOMP bytes to `decoder`; forwards each MESSAGE's call
/// id to `tx`. Returns whether a RECEIPT came; an ERROR is an error.
fn take_frames(
    decoder: &mut Decoder,
    bytes: &[u8],
    index: usize,
    at: Instant,
    tx: &mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<bool> {
    decoder.push(bytes);
    let mut receipt = false;
    while let Some(item) = decoder.next_item()? {
        let Item::Frame(f) = item else { continue };
        match f.command {
            Command::Receipt => receipt = true,
            Command::Error => bail!("ERROR {}", f.get("message").unwrap_or("")),
            Command::Message => {
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
            _ => {}
        }
    }
    Ok(receipt)
}

/// A SockJS session URL under `base`: a random server and session id.
fn sockjs_session(base: &str) -> String {
    format!(
        "{}/{:03}/{:016x}",
        base.trim_end_matches('/'),
        rand::random::<u16>() % 1000,
        rand::random::<u64>()
    )
}

/// What one SockJS frame (one line of a stream, or one WebSocket message)
/// says.
enum SockJsFrame {
    Open,
    Heartbeat,
    Messages(Vec<String>),
    Close(String),
}

fn sockjs_frame(text: &str) -> anyhow::Result<SockJsFrame> {
    let text = text.trim_end_matches('\n');
    Ok(match text.as_bytes().first() {
        Some(b'o') => SockJsFrame::Open,
        Some(b'h') => SockJsFrame::Heartbeat,
        Some(b'a') => SockJsFrame::Messages(serde_json::from_str(&text[1..])?),
        Some(b'c') => SockJsFrame::Close(text[1..].to_string()),
        _ => bail!("not a SockJS frame: {text:?}"),
    })
}

/// Opens one tablet over its transport; then a task forwards every
/// MESSAGE's call id to `tx`.
pub(crate) async fn open_tablet(
    index: usize,
    login: Login,
    tx: mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<()> {
    match login.transport {
        Transport::Ws | Transport::SockjsWebsocket => open_ws_tablet(index, login, tx).await,
        Transport::SockjsXhrStreaming => open_xhr_tablet(index, login, tx).await,
    }
}

/// A WebSocket tablet: on `/ws` each message is STOMP; on SockJS each is
/// a SockJS frame whose messages are STOMP frames.
async fn open_ws_tablet(
    index: usize,
    login: Login,
    tx: mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<()> {
    let sockjs = login.transport == Transport::SockjsWebsocket;
    let ws_url = if sockjs {
        format!("{}/websocket", sockjs_session(&login.url)).replacen("http", "ws", 1)
    } else {
        login.url.clone()
    };
    let url = url::Url::parse(&ws_url)?;
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
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)?;
    if !sockjs {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "v12.stomp".parse()?);
    }
    // tungstenite's default 128 KiB read buffer is zero-filled before
    // every read: at 10,000 MESSAGEs a second that memset alone took a
    // twentieth of the machine. Popups are well under 4 KiB.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    let frames = opening_frames(&login);
    if sockjs {
        ws.send(Message::Text(serde_json::to_string(&frames)?.into()))
            .await?;
    } else {
        for f in frames {
            ws.send(Message::Text(f.into())).await?;
        }
    }
    let mut decoder = Decoder::new(1 << 20);
    // One received message: its STOMP bytes (SockJS unwrapped).
    let unwrap = move |msg: Message| -> anyhow::Result<Vec<u8>> {
        if !sockjs {
            return Ok(msg.into_data().to_vec());
        }
        let text = msg.into_text()?;
        Ok(match sockjs_frame(&text)? {
            SockJsFrame::Open | SockJsFrame::Heartbeat => Vec::new(),
            SockJsFrame::Messages(m) => m.concat().into_bytes(),
            SockJsFrame::Close(why) => bail!("SockJS session closed: {why}"),
        })
    };
    let mut ready = false;
    while !ready {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no answer to CONNECT/SUBSCRIBE")?
            .context("closed")??;
        let bytes = unwrap(msg)?;
        ready = take_frames(&mut decoder, &bytes, index, Instant::now(), &tx)?;
    }
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let at = Instant::now();
            let Ok(bytes) = unwrap(msg) else { break };
            if take_frames(&mut decoder, &bytes, index, at, &tx).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// One HTTP client per source address, shared by the xhr tablets on it.
fn http_client(source: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    static CLIENTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<Option<IpAddr>, reqwest::Client>>,
    > = std::sync::OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(&source) {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .local_address(source)
        .tcp_nodelay(true)
        .build()?;
    clients.insert(source, c.clone());
    Ok(c)
}

/// An `xhr_streaming` tablet: one streaming response at a time (the next
/// opened when one ends at the server's byte limit), frames sent with
/// `xhr_send`.
async fn open_xhr_tablet(
    index: usize,
    login: Login,
    tx: mpsc::UnboundedSender<Delivery>,
) -> anyhow::Result<()> {
    let http = http_client(login.source)?;
    let session = sockjs_session(&login.url);
    let receive = {
        let (http, url) = (http.clone(), format!("{session}/xhr_streaming"));
        move || http.post(url.clone()).send()
    };
    let mut stream = receive().await?.error_for_status()?;
    let mut pending = Vec::new();
    let mut decoder = Decoder::new(1 << 20);
    // The next complete line of the stream; `None` when the response ended.
    async fn line(
        r: &mut reqwest::Response,
        pending: &mut Vec<u8>,
    ) -> anyhow::Result<Option<(String, Instant)>> {
        loop {
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                return Ok(Some((String::from_utf8(line)?, Instant::now())));
            }
            match r.chunk().await? {
                Some(c) => pending.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }
    let mut ready = false;
    while !ready {
        let (text, at) =
            tokio::time::timeout(Duration::from_secs(30), line(&mut stream, &mut pending))
                .await
                .context("no answer to CONNECT/SUBSCRIBE")??
                .context("the stream ended before the subscription")?;
        match sockjs_frame(&text)? {
            SockJsFrame::Open => {
                let body = serde_json::to_string(&opening_frames(&login))?;
                http.post(format!("{session}/xhr_send"))
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            SockJsFrame::Heartbeat => {}
            SockJsFrame::Messages(m) => {
                ready = take_frames(&mut decoder, m.concat().as_bytes(), index, at, &tx)?;
            }
            SockJsFrame::Close(why) => bail!("SockJS session closed: {why}"),
        }
    }
    tokio::spawn(async move {
        loop {
            match line(&mut stream, &mut pending).await {
                Ok(Some((text, at))) => match sockjs_frame(&text) {
                    Ok(SockJsFrame::Messages(m)) => {
                        if take_frames(&mut decoder, m.concat().as_bytes(), index, at, &tx).is_err()
                        {
                            return;
                        }
                    }
                    Ok(SockJsFrame::Open | SockJsFrame::Heartbeat) => {}
                    Ok(SockJsFrame::Close(_)) | Err(_) => return,
                },
                // The response reached the server's byte limit: the next.
                Ok(None) => {
                    pending.clear();
                    match receive().await {
                        Ok(r) if r.status().is_success() => stream = r,
                        _ => return,
                    }
                }
                Err(_) => return,
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
