//! Attacks on the network side of a real `bizcall serve` process: idle
//! connections that would exhaust its descriptors, WebSocket messages that
//! would pin a core, foreign origins, tokens in trace logs, garbage frames,
//! and the close codes of each ending.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use common::stomp::{Client, Polled};
use common::Instance;

const VN: &str = "05012340000";

/// One process with a store, its tablet token, and its database file.
struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    token: String,
    instance: Instance,
}

impl Setup {
    fn new(extra: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![(
            "BIZCALL_DATABASE__URL".to_string(),
            format!("sqlite://{}", dir.path().join("bizcall.db").display()),
        )];
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let refs = common::env_refs(&env);
        let (code, _, err) = common::run_cli(
            &["store", "add", "wash", "--name", "Wash", "--number", VN],
            &refs,
        );
        assert_eq!(code, 0, "{err}");
        let (code, token, err) = common::run_cli(&["token", "issue", "wash"], &refs);
        assert_eq!(code, 0, "{err}");
        let instance = Instance::spawn(dir.path(), &refs);
        Setup {
            dir,
            env,
            token: token.trim().to_string(),
            instance,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.instance.addr)
    }

    fn pid(&self) -> u32 {
        self.instance.child.id()
    }

    /// The address of `webhook.listen`, from the start-up line.
    fn webhook_base(&self) -> String {
        let log = self.instance.log_text();
        let at = log
            .split("webhook listener on http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("webhook listener line");
        format!("http://{at}")
    }

    async fn tablet(&self) -> Client {
        let mut t = Client::open(&self.ws(), None, None).await;
        t.connect(&self.token).await;
        t.subscribe("wash", "0", "auto").await;
        t
    }
}

/// Waits for the popup of `seq`, skipping others.
async fn popup(tablet: &mut Client, seq: &str) {
    for _ in 0..50 {
        match tablet.poll(Duration::from_secs(30)).await {
            Polled::Frame(f) if f.command == "MESSAGE" && f.json()["callId"] == seq => return,
            Polled::Frame(_) => continue,
            other => panic!("no popup for {seq}: {other:?}"),
        }
    }
    panic!("no popup for {seq}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// What the server does with a connection that sends nothing: `Some(text)`
/// when it answers and closes (a refusal), `None` when it keeps it open
/// for `within`.
async fn refusal(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(e)) => Some(e.to_string()),
    }
}

/// Whether the server has closed `stream` (EOF or reset) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads until the server's close; returns its close code.
async fn close_code(c: &mut Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_over_the_cap_leave_the_webhook_and_tablets_working() {
    const CAP: usize = 40;
    let setup = Setup::new(&[
        ("BIZCALL_SERVER__MAX_CONNECTIONS", "40"),
        ("BIZCALL_SERVER__MAX_PENDING_PER_ADDRESS", "16"),
        // Held connections must outlive the test, not the header timeout.
        ("BIZCALL_SERVER__HEADER_TIMEOUT", "5m"),
        ("BIZCALL_WEBHOOK__LISTEN", "127.0.0.1:0"),
    ]);
    let hook = setup.webhook_base();
    let pid = setup.pid();
    let mut tablet = setup.tablet().await;
    assert_eq!(common::post_call(&hook, "warm", VN).await, 200);
    popup(&mut tablet, "warm").await;
    let (fds_before, rss_before) = (open_fds(pid), common::rss_kib(pid));

    // Hold idle connections from four source addresses, more than the cap.
    let mut held = Vec::new();
    let mut refused = 0;
    for last in 2..=5u8 {
        for _ in 0..16 {
            let from = IpAddr::from([127, 0, 0, last]);
            let mut s = connect_from(from, setup.instance.addr).await.unwrap();
            match refusal(&mut s, Duration::from_millis(300)).await {
                None => held.push(s),
                Some(answer) => {
                    assert!(answer.contains("503") || answer.is_empty(), "{answer}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(held.len(), CAP - 1, "the tablet holds one of the {CAP}");
    assert_eq!(refused, 64 - (CAP - 1));
    let (fds_during, rss_during) = (open_fds(pid), common::rss_kib(pid));

    // Over the cap: a new WebSocket is refused at once, not left hanging.
    let url = setup.ws();
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await;
    assert!(
        matches!(attempt, Ok(Err(_))),
        "a WebSocket over the cap is refused"
    );
    // The webhook listener keeps working: health, CDRs, popups.
    let health = common::http()
        .get(format!("{hook}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let sent = 20;
    for i in 0..sent {
        let seq = format!("hold{i}");
        assert_eq!(common::post_call(&hook, &seq, VN).await, 200, "{seq}");
        popup(&mut tablet, &seq).await;
    }
    let open = common::metric(&hook, "bizcall_connections_open{listener=\"main\"}").await;
    assert_eq!(open as usize, CAP);

    // Released: everything recovers, descriptors and memory come back.
    drop(held);
    let base = setup.instance.base();
    common::eventually(Duration::from_secs(30), "main listener answers", || {
        let base = base.clone();
        async move {
            matches!(common::http().get(format!("{base}/healthz")).send().await,
                Ok(r) if r.status() == 200)
        }
    })
    .await;
    let mut second = setup.tablet().await;
    common::eventually(Duration::from_secs(30), "descriptors freed", || async {
        open_fds(pid) <= fds_before + 2
    })
    .await;
    let (fds_after, rss_after) = (open_fds(pid), common::rss_kib(pid));
    assert_eq!(common::post_call(&hook, "after", VN).await, 200);
    popup(&mut tablet, "after").await;
    popup(&mut second, "after").await;
    let calls = common::get_json(&format!("{base}/api/stores/wash/calls"), &setup.token).await;
    let text = calls.to_string();
    let stored = (0..sent)
        .filter(|i| text.contains(&format!("\"hold{i}\"")))
        .count();
    assert_eq!(stored, sent, "every CDR of the hold is stored");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "FIGURES held={} refused={refused} cdrs_sent={sent} stored={stored} \
         fds before={fds_before} during={fds_during} after={fds_after} \
         rss_kib before={rss_before} during={rss_during} after={rss_after}",
        CAP - 1
    );
    drop(setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_many_unconnected_connections() {
    let setup = Setup::new(&[("BIZCALL_SERVER__MAX_PENDING_PER_ADDRESS", "4")]);
    let to = setup.instance.addr;
    let noisy = IpAddr::from([127, 0, 0, 6]);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(noisy, to).await.unwrap();
        assert!(refusal(&mut s, Duration::from_millis(300)).await.is_none());
        held.push(s);
    }
    let mut fifth = connect_from(noisy, to).await.unwrap();
    let answer = refusal(&mut fifth, Duration::from_secs(10)).await;
    assert!(
        answer.as_deref().is_some_and(|a| a.contains("429")),
        "{answer:?}"
    );
    // Another address is not affected.
    let mut other = connect_from(IpAddr::from([127, 0, 0, 7]), to)
        .await
        .unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A tablet that completes CONNECT stops counting against its address.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = connect_from(noisy, to).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(setup.ws(), stream)
        .await
        .unwrap();
    let mut tablet = Client::from_socket(ws);
    tablet.connect(&setup.token).await;
    let mut again = connect_from(noisy, to).await.unwrap();
    assert!(
        refusal(&mut again, Duration::from_millis(500))
            .await
            .is_none(),
        "the slot of the connected tablet is free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_http_connections_are_closed() {
    let setup = Setup::new(&[
        ("BIZCALL_SERVER__HEADER_TIMEOUT", "1s"),
        ("BIZCALL_SERVER__IDLE_TIMEOUT", "2s"),
    ]);
    let to = setup.instance.addr;
    let lo = IpAddr::from([127, 0, 0, 1]);
    // Sends nothing.
    let mut silent = connect_from(lo, to).await.unwrap();
    // Starts a request and stops half-way (also a WebSocket upgrade).
    let mut partial = connect_from(lo, to).await.unwrap();
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    // One request, then quiet on a kept-alive connection.
    let mut kept = connect_from(lo, to).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(closed(&mut silent, Duration::from_secs(30)).await, "silent");
    assert!(
        closed(&mut partial, Duration::from_secs(30)).await,
        "partial"
    );
    assert!(closed(&mut kept, Duration::from_secs(30)).await, "idle");
    assert!(
        common::metric(
            &setup.instance.base(),
            "bizcall_connections_timed_out_total"
        )
        .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_messages_are_refused_while_tablets_get_popups() {
    let setup = Setup::new(&[]);
    let base = setup.instance.base();
    let mut victim = setup.tablet().await;
    let url = setup.ws();
    let token = setup.token.clone();

    // 1. 2 MiB of end-of-lines in one message.
    let eols = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut c = Client::open(&url, None, None).await;
            // Refused from its start, often while it is still being
            // written: the write may fail with a reset, the ERROR still comes.
            let _ = c.try_send_raw(&"\n".repeat(2 << 20)).await;
            let err = c.expect("ERROR").await;
            (
                err.get("message").map(str::to_string),
                close_code(&mut c).await,
            )
        })
    };
    // 2. A few KiB of end-of-lines: fits a message, but no client needs them.
    let noise = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut c = Client::open(&url, None, None).await;
            c.send_raw(&"\r\n".repeat(4096)).await;
            let err = c.expect("ERROR").await;
            (
                err.get("message").map(str::to_string),
                close_code(&mut c).await,
            )
        })
    };
    // 3. 2 MiB of tiny frames from a connected tablet: in one message
    //    (refused), and in 64 KiB messages (decoded, answered in order).
    let tiny = {
        let url = url.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let frame = "ACK\nid:nothing\n\n\0";
            let mut one = Client::open(&url, None, None).await;
            one.connect(&token).await;
            let _ = one
                .try_send_raw(&frame.repeat((2 << 20) / frame.len()))
                .await;
            let refused = one.expect("ERROR").await.get("message").map(str::to_string);
            let code = close_code(&mut one).await;
            let mut many = Client::open(&url, None, None).await;
            many.connect(&token).await;
            let per_message = frame.repeat(60_000 / frame.len());
            for _ in 0..(2 << 20) / per_message.len() {
                many.send_raw(&per_message).await;
            }
            many.send_raw("DISCONNECT\nreceipt:done\n\n\0").await;
            let receipt = many.expect("RECEIPT").await;
            (refused, code, receipt.get("receipt-id").map(str::to_string))
        })
    };
    // 4. A frame over 64 KiB sent one byte per WebSocket message.
    let bytewise = {
        let url = url.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut c = Client::open(&url, None, None).await;
            c.connect(&token).await;
            let frame = format!("SEND\ndestination:/x\n\n{}\0", "y".repeat(65 * 1024));
            for (i, b) in frame.bytes().enumerate() {
                if c.ws.feed(Message::Binary(vec![b].into())).await.is_err() {
                    break;
                }
                if i % 1024 == 0 && c.ws.flush().await.is_err() {
                    break;
                }
            }
            let _ = c.ws.flush().await;
            let err = c.expect("ERROR").await;
            (
                err.get("message").map(str::to_string),
                close_code(&mut c).await,
            )
        })
    };

    // While attacked, the tablet gets every popup.
    for i in 0..10 {
        let seq = format!("attack{i}");
        assert_eq!(common::post_call(&base, &seq, VN).await, 200);
        popup(&mut victim, &seq).await;
    }
    let (m, code) = eols.await.unwrap();
    assert_eq!(
        (m.as_deref(), code),
        (Some("message too large"), Some(1009))
    );
    let (m, code) = noise.await.unwrap();
    assert_eq!((m.as_deref(), code), (Some("not connected"), Some(1008)));
    let (m, code, receipt) = tiny.await.unwrap();
    assert_eq!(
        (m.as_deref(), code),
        (Some("message too large"), Some(1009))
    );
    assert_eq!(receipt.as_deref(), Some("done"));
    let (m, code) = bytewise.await.unwrap();
    assert_eq!((m.as_deref(), code), (Some("frame too large"), Some(1009)));
    assert_eq!(common::post_call(&base, "after", VN).await, 200);
    popup(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let setup = Setup::new(&[(
        "BIZCALL_STOMP__ALLOWED_ORIGINS",
        "[\"https://tablets.example.com\"]",
    )]);
    let open = |origin: Option<&'static str>| {
        let url = setup.ws();
        async move {
            let mut req = url.into_client_request().unwrap();
            if let Some(o) = origin {
                req.headers_mut()
                    .insert("Origin", HeaderValue::from_static(o));
            }
            tokio_tungstenite::connect_async(req).await
        }
    };
    match open(Some("https://evil.example.com")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(open(Some("null")).await.is_err());
    assert!(open(Some("https://TABLETS.example.com/")).await.is_ok());
    assert!(open(None).await.is_ok(), "no Origin: not a browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_log_at_trace() {
    let setup = Setup::new(&[("RUST_LOG", "trace")]);
    let mut by_url = Client::open(
        &format!("{}?access_token={}", setup.ws(), setup.token),
        None,
        None,
    )
    .await;
    by_url.send_raw("CONNECT\naccept-version:1.2\n\n\0").await;
    by_url.expect("CONNECTED").await;
    let mut by_passcode = setup.tablet().await;
    let mut by_header = Client::open(&setup.ws(), None, Some(&setup.token)).await;
    by_header
        .send_raw("CONNECT\naccept-version:1.2\n\n\0")
        .await;
    by_header.expect("CONNECTED").await;
    assert_eq!(
        common::post_call(&setup.instance.base(), "traced", VN).await,
        200
    );
    popup(&mut by_passcode, "traced").await;
    drop((by_url, by_passcode, by_header));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = setup.instance.log_text();
    assert!(log.contains(" DEBUG "), "the process logs verbosely");
    let secret = &setup.token[setup.token.len() - 24..];
    assert!(
        !log.contains(secret),
        "the token is in the log: {}",
        log.lines().find(|l| l.contains(secret)).unwrap_or("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_at_once_and_every_close_has_a_code() {
    let mut setup = Setup::new(&[]);
    // A message whose first byte starts no command: refused at once, not
    // at the CONNECT deadline.
    let mut c = Client::open(&setup.ws(), None, None).await;
    c.send_bytes(b"\0\x01\x02\xff".to_vec()).await;
    let err = c.expect("ERROR").await;
    assert_eq!(err.get("message"), Some("unknown command"));
    assert_eq!(close_code(&mut c).await, Some(1002));

    let mut c = Client::open(&setup.ws(), None, None).await;
    c.send_raw("CONNECT\naccept-version:1.2\npasscode:bzc_wrong\n\n\0")
        .await;
    assert_eq!(c.expect("ERROR").await.get("message"), Some("unauthorized"));
    assert_eq!(close_code(&mut c).await, Some(1008));

    let mut tablet = setup.tablet().await;
    tablet.send_raw("SEND\ndestination:/x\n\nhi\0").await;
    assert_eq!(
        tablet.expect("ERROR").await.get("message"),
        Some("SEND is not accepted")
    );
    assert_eq!(close_code(&mut tablet).await, Some(1008));

    let mut staying = setup.tablet().await;
    let status = setup.instance.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        staying.expect("ERROR").await.get("message"),
        Some("server restart")
    );
    assert_eq!(close_code(&mut staying).await, Some(1001));
    let _ = &setup.env;
}
