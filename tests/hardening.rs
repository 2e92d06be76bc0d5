//! Attacks on a real `bizcall serve` process, each of which once worked:
//! forging `X-Forwarded-For` past `webhook.allow_from` through our own nginx
//! template, and the smaller holes of the tablet page, API and logins.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::nginx::Nginx;
use common::Instance;

/// An HTTP client whose connections come from `source` (any 127/8 address
/// is this machine).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().ok())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn stored_calls(dir: &Path) -> i64 {
    let url = format!("sqlite://{}", dir.join("bizcall.db").display());
    let db = bizcall::db::Db::connect(&url)
        .await
        .expect("open the instance's db");
    let n = db.count_calls().await.expect("count");
    db.close().await;
    n
}

/// nginx on 127.0.0.1 is the trusted proxy; only 127.0.0.2 may send CDRs.
/// nginx appends the address it really saw, so whatever a client at
/// 127.0.0.3 forges on the left never passes, and 127.0.0.2 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_never_passes_the_allow_list_through_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let server = Instance::spawn(
        dir.path(),
        &[
            ("BIZCALL_SERVER__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
            ("BIZCALL_WEBHOOK__ALLOW_FROM", "[\"127.0.0.2/32\"]"),
        ],
    );
    let nginx = Nginx::start(&[server.addr.port()]).await;
    let url = format!("{}/bizcall/cdr", nginx.base());

    let allowed = client_from("127.0.0.2");
    let r = allowed
        .post(&url)
        .form(&common::cdr_fields("OK1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the allowed address passes");
    // Even when it forges something itself: its own address is appended.
    let r = allowed
        .post(&url)
        .header("X-Forwarded-For", "203.0.113.1")
        .form(&common::cdr_fields("OK2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let attacker = client_from("127.0.0.3");
    let forged: &[&[&str]] = &[
        &["127.0.0.2"],
        &["127.0.0.2, 127.0.0.2"],
        &["10.9.9.9, 127.0.0.2"],
        &["  127.0.0.2  "],
        &["127.0.0.2:8080"],
        &["[::ffff:127.0.0.2]:8080"],
        &["::ffff:127.0.0.2"],
        &["127.0.0.2,127.0.0.1"],
        &["127.0.0.2, garbage"],
        &["garbage"],
        &[","],
        &[""],
        &["127.0.0.2", "127.0.0.2"],
        &["127.0.0.1", "127.0.0.2"],
    ];
    for (i, lines) in forged.iter().enumerate() {
        let mut req = attacker
            .post(&url)
            .form(&common::cdr_fields(&format!("F{i}")));
        for line in lines.iter() {
            req = req.header("X-Forwarded-For", *line);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "forged {lines:?} must not pass");
    }
    // No forwarding header at all: the attacker is itself.
    let r = attacker
        .post(&url)
        .form(&common::cdr_fields("F-none"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    assert_eq!(stored_calls(dir.path()).await, 2, "only the allowed CDRs");
    let log = server.log_text();
    assert!(
        log.contains("client=127.0.0.3"),
        "refusals name the real client: {log}"
    );
    assert!(!log.contains("client=127.0.0.2\n"), "{log}");
}

/// A store `s1` on 0501111 and a tablet token for it, made with the CLI.
fn store_s1(dir: &Path) -> String {
    common::register_named(dir, "s1", "S1", "0501111", "t", &[])
}

/// The page runs no inline script and cannot be framed; it and the API's
/// JSON answers are never sniffed and send no `Referer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_page_and_api_carry_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let token = store_s1(dir.path());
    let server = Instance::spawn(dir.path(), &[]);
    let base = server.base();
    let http = common::http();

    let page = http.get(format!("{base}/tablet")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = common::header(&page, "content-security-policy").to_string();
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    assert!(directives.contains(&"frame-ancestors 'none'"), "{csp}");
    assert!(directives.contains(&"connect-src 'self'"), "{csp}");
    assert!(directives.contains(&"script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(common::header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(common::header(&page, "referrer-policy"), "no-referrer");
    let html = page.text().await.unwrap();
    // Every script is a file of this server: none inline, none elsewhere.
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for s in scripts {
        let tag = s.split('>').next().unwrap();
        assert!(
            tag.contains("src=\"/"),
            "inline or foreign script: <script{tag}>"
        );
        assert!(s.split('>').nth(1).unwrap().starts_with("</script"), "{s}");
    }
    // No inline event handlers (`onclick="…"`): CSP would block them.
    let handlers: Vec<&str> = html
        .split(" on")
        .skip(1)
        .filter(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        })
        .collect();
    assert!(handlers.is_empty(), "inline handlers: {handlers:?}");
    assert!(!html.contains("<style"), "no inline style either");
    // The page's script connects where the server says (`stomp.path`).
    assert!(
        html.contains(r#"<meta name="bizcall-stomp-path" content="/ws">"#),
        "{html}"
    );

    assert!(directives.contains(&"manifest-src 'self'"), "{csp}");
    assert!(directives.contains(&"worker-src 'self'"), "{csp}");
    for (path, kind) in [
        ("/tablet.js", "text/javascript"),
        ("/tablet/main.js", "text/javascript"),
        ("/tablet/strings.js", "text/javascript"),
        ("/tablet/stomp.js", "text/javascript"),
        ("/tablet/views.js", "text/javascript"),
        ("/tablet.css", "text/css"),
        ("/sw.js", "text/javascript"),
        ("/manifest.webmanifest", "application/manifest+json"),
        ("/icon-192.png", "image/png"),
        ("/icon-512.png", "image/png"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(
            common::header(&r, "content-type").starts_with(kind),
            "{path}"
        );
        assert_eq!(common::header(&r, "x-content-type-options"), "nosniff");
        if path.ends_with(".js") {
            assert_eq!(common::header(&r, "cache-control"), "no-cache", "{path}");
        }
    }

    // API answers, good and bad.
    let ok = http
        .get(format!("{base}/api/stores/s1/calls"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let denied = http
        .get(format!("{base}/api/stores/s1/calls"))
        .send()
        .await
        .unwrap();
    for (r, code) in [(ok, 200), (denied, 401)] {
        assert_eq!(r.status().as_u16(), code);
        assert!(common::header(&r, "content-type").starts_with("application/json"));
        assert_eq!(common::header(&r, "x-content-type-options"), "nosniff");
        assert_eq!(common::header(&r, "referrer-policy"), "no-referrer");
        let csp = common::header(&r, "content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
    }
}

/// With `stomp.path` moved, the tablet page names the new path (its script
/// connects there), and the socket is there and not at `/ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_page_names_a_configured_stomp_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = Instance::spawn(dir.path(), &[("BIZCALL_STOMP__PATH", "/custom-ws")]);
    let base = server.base();
    let http = common::http();
    let html = common::get_text(&format!("{base}/tablet")).await;
    assert!(
        html.contains(r#"<meta name="bizcall-stomp-path" content="/custom-ws">"#),
        "{html}"
    );
    assert!(!html.contains("{{"), "an unfilled slot: {html}");
    let status = |path: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(status("/ws").await, 404);
    assert_ne!(status("/custom-ws").await, 404, "no socket at /custom-ws");
}

/// Guessing tokens: every failure is counted, logged at warn with the
/// client's address and never the token (within a budget), and an address
/// that fails too often is refused for a while, even with a good token,
/// while other addresses are not. The bearer scheme is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_logged_counted_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = store_s1(dir.path());
    let server = Instance::spawn(
        dir.path(),
        &[
            ("BIZCALL_SERVER__AUTH_FAIL_LIMIT", "3"),
            ("BIZCALL_SERVER__AUTH_FAIL_WINDOW", "1m"),
        ],
    );
    let base = server.base();
    let calls = format!("{base}/api/stores/s1/calls");
    const GUESS: &str = "bzt_guessedguessedguessedguessed00";

    let tablet = client_from("127.0.0.2");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = tablet
            .get(&calls)
            .header("Authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }

    let guesser = client_from("127.0.0.3");
    for _ in 0..3 {
        let r = guesser.get(&calls).bearer_auth(GUESS).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    for _ in 0..40 {
        let r = guesser.get(&calls).bearer_auth(GUESS).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
        let wait: u64 = common::header(&r, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // Refused even with the right token, for the rest of the window.
    let r = guesser
        .get(&calls)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    // Other addresses are not affected.
    let r = tablet.get(&calls).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // STOMP CONNECT, from 127.0.0.1.
    let ws = format!("ws://{}/ws", server.addr);
    for passcode in [GUESS, "", GUESS] {
        let mut c = common::stomp::Client::open(&ws, None, None).await;
        c.send_raw(&format!(
            "CONNECT\naccept-version:1.2\nhost:b\npasscode:{passcode}\n\n\0"
        ))
        .await;
        let e = c.expect("ERROR").await;
        assert_eq!(e.get("message"), Some("unauthorized"));
    }
    let mut c = common::stomp::Client::open(&ws, None, None).await;
    c.send_raw(&format!(
        "CONNECT\naccept-version:1.2\nhost:b\nAuthorization:bearer {token}\n\n\0"
    ))
    .await;
    let e = c.expect("ERROR").await;
    assert!(e.body.contains("too many failed sign-ins"), "{}", e.body);

    let api =
        common::metric_labelled(&base, "bizcall_auth_failures_total", "surface=\"api\"").await;
    let stomp =
        common::metric_labelled(&base, "bizcall_auth_failures_total", "surface=\"stomp\"").await;
    assert_eq!(api, 44.0, "3 failures, 41 refusals");
    assert_eq!(stomp, 4.0, "3 failures, 1 refusal");

    let lines = |log: &str, client: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("sign-in") && l.contains(client))
            .count()
    };
    // The instance writes its log on its own thread, after the counters
    // move: wait for the last line, then a moment for any that would follow.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines(&server.log_text(), "client=127.0.0.1") < 2 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log_text();
    assert!(!log.contains(GUESS), "a token in the log");
    assert!(!log.contains(&token), "a token in the log");
    // The first failure and the refusal: not one line per attempt.
    assert_eq!(lines(&log, "client=127.0.0.3"), 2, "{log}");
    assert_eq!(lines(&log, "client=127.0.0.1"), 2, "{log}");
}

/// The SQLite file holds callers' numbers: it and its `-wal` and `-shm`
/// files are created readable by their owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Instance::spawn(dir.path(), &[]);
    let r = common::http()
        .post(format!("{}/bizcall/cdr", server.base()))
        .form(&common::cdr_fields("P1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for name in ["bizcall.db", "bizcall.db-wal", "bizcall.db-shm"] {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
}

/// A database failure behind the tablet API is answered 503 and logged
/// (it used to leave no trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_on_the_api_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token = store_s1(dir.path());
    let server = Instance::spawn(dir.path(), &[]);
    let url = format!("sqlite://{}", dir.path().join("bizcall.db").display());
    let db = bizcall::db::Db::connect(&url).await.unwrap();
    if let bizcall::db::Db::Sqlite(pool) = &db {
        sqlx::query("DROP TABLE reservations")
            .execute(pool)
            .await
            .unwrap();
    }
    db.close().await;
    let r = common::http()
        .get(format!("{}/api/stores/s1/reservations", server.base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unavailable: database"
    );
    common::eventually(Duration::from_secs(5), "the failure logged", || async {
        server.log_text().lines().any(|l| {
            l.contains("ERROR") && l.contains("database unavailable") && l.contains("reservations")
        })
    })
    .await;
    assert!(!server.log_text().contains(&token));
}

/// A repeated `seq` with another store's `vn`, against a real process: `409`
/// in plain text, the call stays where it was, and the log line that says
/// so shows callers' numbers masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_seq_cannot_move_a_call_and_is_logged_masked() {
    let dir = tempfile::tempdir().unwrap();
    let token = store_s1(dir.path());
    let out = std::process::Command::new(common::bin())
        .args(["store", "add", "s2", "--name", "S2", "--number", "0502222"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = Instance::spawn(dir.path(), &[]);
    let url = format!("{}/bizcall/cdr", server.base());
    let first = [
        ("seq", "M1"),
        ("sdt", "20261122101500"),
        ("fromn", "010-9876-5432"),
        ("ton", "0212345678"),
        ("vn", "0501111"),
    ];
    assert_eq!(common::post_cdr(&server.base(), &first).await, 200);
    let mut moved = first;
    moved[4] = ("vn", "0502222");
    let r = common::http().post(&url).form(&moved).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(
        common::header(&r, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert!(r.text().await.unwrap().starts_with("conflict: vn: "));
    let list = common::get_json(&format!("{}/api/stores/s1/calls", server.base()), &token).await;
    assert_eq!(list[0]["callId"], "M1");
    assert_eq!(
        common::metric_labelled(
            &server.base(),
            "bizcall_cdr_received_total",
            "result=\"conflict\""
        )
        .await,
        1.0
    );
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("disagrees"))
        .unwrap_or_else(|| panic!("no conflict line in {log}"));
    assert!(
        line.contains("field=\"vn\"") && line.contains("*******5432"),
        "{line}"
    );
    assert!(
        !log.contains("98765432") && !log.contains("0502222"),
        "{log}"
    );
}

/// `customerNumber` takes what the README says: 2 to 20 digits, with `-`
/// and spaces between them, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_number_accepts_exactly_what_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let token = store_s1(dir.path());
    let server = Instance::spawn(dir.path(), &[]);
    let url = format!("{}/api/stores/s1/reservations", server.base());
    for (number, code) in [
        ("010-1234-5678", 201),
        ("010 1234 5678", 201),
        ("+82 10 1234 5678", 422),
        ("(02) 1234-5678", 422),
        ("010.1234.5678", 422),
        ("1", 422),
        ("123456789012345678901", 422),
    ] {
        let r = common::http()
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "customerNumber": number,
                "reservedAt": "2026-11-22T14:00:00+09:00",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{number}");
        let body: serde_json::Value = r.json().await.unwrap();
        if code == 201 {
            assert_eq!(body["customerNumber"], "01012345678");
        } else {
            assert_eq!(body["field"], "customerNumber");
        }
    }
}
