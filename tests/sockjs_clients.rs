//! The Spring service's tablet code, unchanged but for the token, in Node:
//! `sockjs-client` 1.6 and `@stomp/stompjs` 7 against a real `bizcall
//! serve`, once per SockJS transport and once with the client's default
//! list: the popup with the right `fromNumber`/`stardDate`, its status
//! update, and `ERROR message:server restart` then a reconnect when the
//! instance is stopped and started again. `scripts/test` installs the npm
//! packages.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::nginx::Nginx;
use common::Instance;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

struct Node {
    child: Child,
    lines: UnboundedReceiver<String>,
}

impl Node {
    fn spawn(url: &str, token: &str, slug: &str, transports: &str) -> Node {
        common::require_js("sockjs-client");
        let mut child = Command::new("node")
            .arg(common::js_dir().join("sockjs_tablet.mjs"))
            .args([url, token, slug, transports])
            .current_dir(common::js_dir())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Node { child, lines }
    }

    /// The next line starting with `prefix`, skipping others.
    async fn expect(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return line,
                Ok(Some(line)) => {
                    assert!(!line.starts_with("FAIL"), "{line}");
                    println!("skipped: {line}");
                }
                other => panic!("waiting for {prefix}: {other:?}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn cdr(base: &str, seq: &str, extra: &[(&str, &str)]) {
    let mut fields = vec![
        ("seq", seq),
        ("sdt", "20261122101500"),
        ("fromn", "010-9999-0000"),
        ("ton", "0299990000"),
    ];
    if !extra.iter().any(|(k, _)| *k == "vn") {
        fields.push(("vn", "05033334444"));
    }
    fields.extend_from_slice(extra);
    assert_eq!(common::post_cdr(base, &fields).await, 200);
}

/// The whole story for one transport list; `expect_transport` is the
/// sockjs-client transport that must be chosen.
async fn spring_tablet(transports: &str, expect_transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = common::register(dir.path(), "pad-store", "050-3333-4444", "sockjs");
    let mut server = Instance::spawn(dir.path(), &[]);
    let addr = server.addr.to_string();
    let base = server.base();
    let url = format!("{base}/ws/v1/offline-store-pad");
    let mut node = Node::spawn(&url, &token, "pad-store", transports);
    assert_eq!(node.expect("CONNECTED").await, "CONNECTED 1");
    node.expect("READY").await;

    cdr(&base, "sj1", &[]).await;
    let popup = node.expect("POPUP").await;
    assert_eq!(
        popup,
        format!("POPUP 01099990000 2026-11-22T10:15:00 ringing {expect_transport}")
    );
    cdr(&base, "sj1", &[("swidt", "20261122101510")]).await;
    let popup = node.expect("POPUP").await;
    assert!(popup.contains(" answered "), "{popup}");

    // Stopping the instance tells the tablet to reconnect; it does, to
    // the instance started in its place.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(node.expect("ERROR").await, "ERROR server restart");
    let server = Instance::spawn(dir.path(), &[("BIZCALL_SERVER__LISTEN", addr.as_str())]);
    assert_eq!(node.expect("CONNECTED").await, "CONNECTED 2");
    node.expect("READY").await;
    cdr(&server.base(), "sj2", &[]).await;
    let popup = node.expect("POPUP").await;
    assert!(
        popup.starts_with("POPUP 01099990000 2026-11-22T10:15:00 ringing"),
        "{popup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_tablet_over_websocket() {
    spring_tablet("websocket", "websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_tablet_over_xhr_streaming() {
    spring_tablet("xhr-streaming", "xhr-streaming").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_tablet_over_xhr_polling() {
    spring_tablet("xhr-polling", "xhr-polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_tablet_with_the_default_transports() {
    spring_tablet("default", "websocket").await;
}

/// The Spring-era page, unchanged (no token), in headless Chromium on its
/// own origin, cross-origin to bizcall with `compat.anonymous`; the popup
/// shows and a screenshot goes to `artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_page_in_headless_chromium() {
    use std::io::Write;
    let chromium = common::chromium();
    let artifacts = common::artifacts();
    let mut child = Command::new("node")
        .arg(common::js_dir().join("spring_page.mjs"))
        .arg(&artifacts)
        .current_dir(common::js_dir())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut node = Node { child, lines };
    let origin = node.expect("ORIGIN ").await["ORIGIN ".len()..].to_string();

    let dir = tempfile::tempdir().unwrap();
    common::register(dir.path(), "old-pad", "050-7777-8888", "sockjs");
    // Token-less tablets follow only stores the operator opted in.
    let db_url = format!("sqlite://{}", dir.path().join("bizcall.db").display());
    let (code, _, stderr) = common::run_cli(
        &["store", "anonymous", "old-pad", "on"],
        &[("BIZCALL_DATABASE__URL", db_url.as_str())],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("store old-pad: token-less tablets may follow"),
        "{stderr}"
    );
    let origins = format!("[\"{origin}\"]");
    let server = Instance::spawn(
        dir.path(),
        &[
            ("BIZCALL_COMPAT__ANONYMOUS", "true"),
            ("BIZCALL_STOMP__ALLOWED_ORIGINS", origins.as_str()),
            ("BIZCALL_ADMIN__TOKEN", "admin-secret"),
        ],
    );
    assert!(server.log_text().contains("compat.anonymous is on"));
    writeln!(stdin, "GO {} old-pad", server.base()).unwrap();
    let connected = node.expect("CONNECTED").await;
    assert!(connected.contains("connected ("), "{connected}");
    println!("{connected}");
    // Subscribed: the store lists one anonymous tablet.
    common::eventually(Duration::from_secs(10), "the page subscribed", || async {
        let stores: serde_json::Value = common::http()
            .get(format!("{}/api/admin/stores", server.base()))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        stores[0]["anonymousTabletsHere"] == 1
    })
    .await;
    let metrics = common::get_text(&format!("{}/metrics", server.base())).await;
    assert!(metrics.contains("bizcall_tablets_connected{auth=\"anonymous\"} 1"));
    cdr(&server.base(), "page1", &[("vn", "05077778888")]).await;
    let popup = node.expect("POPUP").await;
    assert_eq!(popup, "POPUP 01099990000 2026-11-22T10:15:00");
    node.expect("DONE").await;
    assert!(artifacts.join("sockjs-spring-page.png").is_file());
}

/// Three instances on RabbitMQ behind nginx (the deploy template): every
/// transport's tablet gets its popup and the update, so the xhr
/// transports' requests reached the instance holding their session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_through_nginx_to_three_instances() {
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let broker = common::Broker::new();
    let pool = db.connect().await;
    pool.store_add("lb-store", "lb-store", &["05012121212".into()])
        .await
        .unwrap();
    let token = pool.token_issue("lb-store", "lb").await.unwrap().1;
    pool.close().await;
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push((
        "BIZCALL_SERVER__TRUSTED_PROXIES".into(),
        "[\"127.0.0.1/32\"]".into(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let instances: Vec<Instance> = (0..3)
        .map(|_| Instance::spawn(dir.path(), &common::env_refs(&env)))
        .collect();

    let servers: String = instances
        .iter()
        .map(|i| format!("        server {};\n", i.addr))
        .collect();
    let nginx = Nginx::start_servers(&servers).await;
    let base = nginx.base();

    let url = format!("{base}/ws/v1/offline-store-pad");
    let kinds = ["websocket", "xhr-streaming", "xhr-polling"];
    let mut nodes = Vec::new();
    for kind in kinds {
        let mut node = Node::spawn(&url, &token, "lb-store", kind);
        node.expect("READY").await;
        nodes.push(node);
    }
    for (seq, extra) in [("lb1", vec![]), ("lb1", vec![("swidt", "20261122101510")])] {
        let mut fields = vec![
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "010-9999-0000"),
            ("ton", "0299990000"),
            ("vn", "05012121212"),
        ];
        fields.extend(extra.iter().copied());
        assert_eq!(common::post_cdr(&base, &fields).await, 200);
        let status = if fields.len() == 5 {
            "ringing"
        } else {
            "answered"
        };
        for (node, kind) in nodes.iter_mut().zip(kinds) {
            assert_eq!(
                node.expect("POPUP").await,
                format!("POPUP 01099990000 2026-11-22T10:15:00 {status} {kind}")
            );
        }
    }
    drop(nodes);
    drop(instances);
    broker.cleanup().await;
    db.cleanup().await;
}
