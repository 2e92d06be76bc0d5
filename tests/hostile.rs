//! Hostile input, round three: what a stranger on the network can send
//! without credentials must end only their own connection, cleanly, and
//! must not hold the service.

mod common;

use std::time::Duration;

use common::stomp::Client;
use common::Single;

/// A `content-length` near `usize::MAX`: the body offset overflowed in
/// the decoder and the connection's task panicked.
const HUGE: &str = "SEND\ndestination:/x\ncontent-length:18446744073709551577\n\nhello\0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_content_length_is_a_frame_too_large_not_a_panic() {
    let ctx = Single::new(|_| {}).await;
    let token = ctx.store("hostile-cl", "050-1111-2201").await;
    for connected in [false, true] {
        let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
        if connected {
            c.connect(&token).await;
        }
        c.send_raw(HUGE).await;
        let err = c.expect("ERROR").await;
        assert_eq!(err.get("message"), Some("frame too large"), "{connected}");
        assert_eq!(c.close_code().await, Some(1009), "{connected}");
    }
    // The instance goes on: a tablet connects and subscribes.
    let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
    c.connect(&token).await;
    c.subscribe("hostile-cl", "0", "auto").await;
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_content_length_over_xhr_send_ends_its_session_and_leaks_nothing() {
    let ctx = Single::new(|_| {}).await;
    let base = format!("http://{}/ws/v1/offline-store-pad", ctx.server.addr);
    let http = common::http();
    const SESSIONS: usize = 20;
    for i in 0..SESSIONS {
        let url = format!("{base}/000/hostile{i}");
        let open = http.post(format!("{url}/xhr")).send().await.unwrap();
        assert_eq!(open.text().await.unwrap(), "o\n");
        let body = serde_json::to_string(&[HUGE]).unwrap();
        let sent = http
            .post(format!("{url}/xhr_send"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 204);
        let answer = http.post(format!("{url}/xhr")).send().await.unwrap();
        let text = answer.text().await.unwrap();
        let frames: Vec<String> = text
            .strip_prefix('a')
            .and_then(|a| serde_json::from_str(a.trim_end()).ok())
            .unwrap_or_else(|| panic!("{i}: not a message frame: {text}"));
        assert!(
            frames[0].starts_with("ERROR\nmessage:frame too large\n"),
            "{i}: {text}"
        );
    }
    // Every session is forgotten once its close has been served for the
    // disconnect delay (5 s): none is left to count against the caps.
    common::eventually(Duration::from_secs(20), "sessions forgotten", || async {
        ctx.server.sockjs.is_empty()
    })
    .await;
    // Opening sessions still works.
    let open = http
        .post(format!("{base}/000/afterwards/xhr"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.text().await.unwrap(), "o\n");
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// Control characters add fake lines to `bizcall store list` and the logs;
/// bidirectional overrides reorder what the tablet shows. Refused, naming
/// the field, in store names, token labels and reservation fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_direction_characters_are_refused_naming_the_field() {
    let ctx = Single::new(|c| c.admin.token = "admin-secret".into()).await;
    let token = ctx.store("texts", "050-1111-2202").await;
    let http = common::http();
    let base = ctx.base();
    let admin = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth("admin-secret")
            .json(&body)
            .send()
    };
    let cases = [
        (
            reqwest::Method::POST,
            "/api/admin/stores",
            serde_json::json!({"slug": "fake", "name": "Real\nfake\t1\t050", "numbers": []}),
            "name",
        ),
        (
            reqwest::Method::PATCH,
            "/api/admin/stores/texts",
            serde_json::json!({"name": "Gangnam\u{202E}1"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            "/api/admin/stores/texts/tokens",
            serde_json::json!({"label": "desk\u{1b}[2J"}),
            "label",
        ),
    ];
    for (method, path, body, field) in cases {
        let r = admin(method, path, body).await.unwrap();
        assert_eq!(r.status(), 422, "{path}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["field"], field, "{path}: {e}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("control or text-direction"),
            "{e}"
        );
    }
    for (field, value) in [
        ("carNumber", "12가\u{202E}3456"),
        ("carModel", "Sonata\u{2066}"),
        ("service", "wash\nfree"),
        ("memo", "call back\u{202E}"),
    ] {
        let mut body = serde_json::json!({
            "customerNumber": "01012345678",
            "reservedAt": "2026-11-23T10:00:00+09:00",
        });
        body[field] = value.into();
        let r = http
            .post(format!("{base}/api/stores/texts/reservations"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{field}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["field"], field, "{e}");
    }
    // A memo may have lines.
    let r = http
        .post(format!("{base}/api/stores/texts/reservations"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "customerNumber": "01012345678",
            "reservedAt": "2026-11-23T10:00:00+09:00",
            "memo": "first line\nsecond line",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Nothing of the refused ones was stored.
    let stores = ctx.server.app.db.store_list().await.unwrap();
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].name, "texts");
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

#[test]
fn the_command_line_refuses_control_characters_in_names_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let env = [("BIZCALL_DATABASE__URL", url.as_str())];
    let (code, _, err) = common::run_cli(
        &[
            "store",
            "add",
            "fake",
            "--name",
            "Real\nfake\t050",
            "--number",
            "0501",
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(
        err.starts_with("error: --name: must not contain control"),
        "{err}"
    );
    let (code, _, err) = common::run_cli(
        &["store", "add", "real", "--name", "Real", "--number", "0501"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        common::run_cli(&["token", "issue", "real", "--label", "desk\u{202E}"], &env);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("--label: must not contain control"), "{err}");
    let (code, out, _) = common::run_cli(&["store", "list"], &env);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// A body trickled a byte at a time used to hold its connection (the
/// header deadline is off while a handler runs): now it has
/// `server.body_timeout` to arrive, then 408 and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_within_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ctx = Single::new(|c| c.server.body_timeout = Duration::from_secs(1)).await;
    let mut s = tokio::net::TcpStream::connect(ctx.server.addr)
        .await
        .unwrap();
    s.write_all(
        b"POST /bizcall/cdr HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nseq=",
    )
    .await
    .unwrap();
    // One byte every 300 ms: the body would take 30 s.
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"1").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // A body sent at once is unaffected.
    let fields = [
        ("seq", "trickle-after"),
        ("sdt", "20261122101500"),
        ("fromn", "01012345678"),
        ("ton", "0212345678"),
    ];
    assert_eq!(common::post_cdr(&ctx.base(), &fields).await, 200);
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// A streamed answer still being sent is not an idle connection: an
/// xhr-streaming tablet and the console's event stream outlive several
/// `server.idle_timeout`s (2 s here, 60 s by default) without output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_not_cut_at_the_idle_timeout() {
    let ctx = Single::new(|c| {
        c.server.idle_timeout = Duration::from_secs(2);
        c.admin.token = "admin-secret".into();
    })
    .await;
    let http = common::http();
    let mut tablet = http
        .post(format!(
            "http://{}/ws/v1/offline-store-pad/000/streamer/xhr_streaming",
            ctx.server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(tablet.status(), 200);
    let mut console = http
        .get(format!("{}/api/admin/events", ctx.base()))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(console.status(), 200);
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut tablet_bytes = 0;
    loop {
        match tokio::time::timeout_at(until, tablet.chunk()).await {
            Err(_) => break,
            Ok(Ok(Some(b))) => tablet_bytes += b.len(),
            Ok(other) => panic!("the xhr-streaming answer ended: {other:?}"),
        }
    }
    assert!(tablet_bytes > 2048, "the prelude and the open frame came");
    match tokio::time::timeout(Duration::from_millis(100), console.chunk()).await {
        Err(_) | Ok(Ok(Some(_))) => {}
        Ok(other) => panic!("the event stream ended: {other:?}"),
    }
    drop((tablet, console));
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// After CONNECT nothing capped connections per token: 300 connections of
/// one token filled the instance. Now a token, and a client address, have
/// a share of connected tablets (2 and 3 here; 16 and 1024 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_tablets_are_capped_per_token_and_per_address() {
    let ctx = Single::new(|c| {
        c.stomp.max_connections_per_token = 2;
        c.stomp.max_connections_per_address = 3;
    })
    .await;
    let token = ctx.store("crowd", "050-1111-2203").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
        c.connect(&token).await;
        held.push(c);
    }
    // A CONNECT the server answers with ERROR: that frame and the close code.
    let refused = |token: String| {
        let url = ctx.ws();
        async move {
            let mut c = Client::open(&url, Some("v12.stomp"), None).await;
            c.send_raw(&format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{token}\n\n\0"
            ))
            .await;
            let e = c.expect("ERROR").await;
            (e, c.close_code().await)
        }
    };
    let (e, code) = refused(token.clone()).await;
    assert_eq!(e.get("message"), Some("too many connections"));
    assert!(e.body.contains("per token"), "{e:?}");
    assert_eq!(code, Some(1008));
    // Another token of the store connects: the address holds 3 now.
    let other = ctx
        .server
        .app
        .db
        .token_issue("crowd", "second")
        .await
        .unwrap()
        .1;
    let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
    c.connect(&other).await;
    held.push(c);
    let (e, _) = refused(other.clone()).await;
    assert_eq!(e.get("message"), Some("too many connections"));
    assert!(e.body.contains("per address"), "{e:?}");
    // One leaves: its share comes back.
    let mut gone = held.remove(0);
    gone.send_raw("DISCONNECT\nreceipt:bye\n\n\0").await;
    gone.expect("RECEIPT").await;
    common::eventually(Duration::from_secs(5), "the tablet left", || async {
        ctx.server.app.hub.counts().0 == 2
    })
    .await;
    let mut again = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
    again.connect(&token).await;
    again.subscribe("crowd", "0", "auto").await;
    drop((held, again));
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// Lines anybody can cause without credentials are written a few per
/// minute, not one per request: refused SockJS sessions (193,696 lines in
/// 30 s before) and wrong webhook keys. The metrics count every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_strangers_cause_are_logged_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Instance::spawn(dir.path(), &[("BIZCALL_WEBHOOK__KEY", "provider-key")]);
    let http = common::http();
    let base = server.base();
    let mut refused = 0;
    for i in 0..400 {
        let r = http
            .post(format!("{base}/ws/v1/offline-store-pad/000/flood{i}/xhr"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            refused += 1;
        }
    }
    assert_eq!(refused, 400 - 256, "one address holds 256 sessions");
    for i in 0..100 {
        let r = http
            .get(format!(
                "{base}/bizcall/cdr?key=wrong&seq=k{i}&sdt=20261122101500&fromn=01012345678&ton=02"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let metrics = common::get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains(
            "bizcall_connections_refused_total{reason=\"sockjs_sessions_per_address\"} 144"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("bizcall_cdr_received_total{result=\"unauthorized\"} 100"),
        "{metrics}"
    );
    // The log writer runs on its own thread: wait for the last lines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = server.log_text();
    let sockjs = log.matches("SockJS session refused").count();
    let keys = log.matches("CDR with a missing or wrong key").count();
    assert!((1..=5).contains(&sockjs), "{sockjs} lines:\n{log}");
    assert!((1..=5).contains(&keys), "{keys} lines:\n{log}");
}

/// The security headers were added before the SockJS routes were merged:
/// SockJS answers and the 404 fallback went without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_answers_and_unknown_paths_carry_the_security_headers() {
    let ctx = Single::new(|_| {}).await;
    let http = common::http();
    let base = format!("http://{}", ctx.server.addr);
    for (method, path) in [
        ("GET", "/ws/v1/offline-store-pad"),
        ("GET", "/ws/v1/offline-store-pad/info"),
        ("POST", "/ws/v1/offline-store-pad/000/headers/xhr"),
        ("GET", "/ws/v1/offline-store-pad/000/headers/eventsource"),
        ("GET", "/no/such/page"),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// The webhook was open by default and nothing said so. With RabbitMQ (a
/// production shape) an instance now refuses to start with an open webhook
/// unless `webhook.open = true` says it is on purpose; with one instance
/// it warns.
#[test]
fn an_open_webhook_on_rabbitmq_refuses_to_start_unless_said() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .env("BIZCALL_DATABASE__URL", &url)
        .env("BIZCALL_BUS__KIND", "amqp")
        .env("BIZCALL_SERVER__LISTEN", "127.0.0.1:0")
        .env("BIZCALL_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().unwrap_or("");
    assert!(
        line.starts_with("error: configuration: webhook: open to anybody"),
        "{err}"
    );
    assert!(line.contains("webhook.open = true"), "{err}");
    // One instance on the embedded defaults starts, and warns.
    let server = common::Instance::spawn(dir.path(), &[("BIZCALL_DATABASE__URL", &url)]);
    assert!(
        server
            .log_text()
            .contains("is open to anybody (no webhook.key, no webhook.allow_from)"),
        "{}",
        server.log_text()
    );
}
