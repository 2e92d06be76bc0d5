//! The command line against a real `bizcall serve` on its embedded defaults.

mod common;

use std::time::Duration;

use common::{run_cli, Instance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_issue_and_simulate_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let in_dir = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .current_dir(&dir_s)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = in_dir(&[
        "store",
        "add",
        "gangnam",
        "--name",
        "Gangnam Wash",
        "--number",
        "050-1111-2222",
        "--number",
        "02-123-4567",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    let (code, out, _) = in_dir(&["store", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "gangnam\tGangnam Wash\t021234567,05011112222");

    let (code, token, err) = in_dir(&["token", "issue", "gangnam", "--label", "front desk"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("bzc_") && token.len() > 40, "{token}");
    assert_eq!(token.lines().count(), 1);
    let (_, list, _) = in_dir(&["token", "list", "gangnam"]);
    assert!(
        list.contains("front desk") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&token), "the token itself is never listed");

    let mut server = Instance::spawn(dir.path(), &[]);
    let (code, seq, err) = in_dir(&[
        "call",
        "simulate",
        "--to",
        "050-1111-2222",
        "--from",
        "010-5555-6666",
        "--server",
        &server.base(),
    ]);
    assert_eq!(code, 0, "{err}");
    let seq = seq.trim().to_string();
    let (code, _, err) = in_dir(&[
        "call",
        "simulate",
        "--to",
        "05011112222",
        "--from",
        "01055556666",
        "--server",
        &server.base(),
        "--status",
        "completed",
        "--seq",
        &seq,
    ]);
    assert_eq!(code, 0, "{err}");

    let db = bizcall::db::Db::connect(&format!("sqlite://{dir_s}/bizcall.db"))
        .await
        .unwrap();
    let row = db
        .call(&seq)
        .await
        .unwrap()
        .expect("the simulated call is stored");
    assert_eq!(row.store, "gangnam");
    assert_eq!(row.status, "completed");
    assert_eq!(row.caller, "01055556666");
    db.close().await;

    // Callers' numbers never reach the log in full.
    let log = server.log_text();
    assert!(log.contains("*******6666"), "{log}");
    assert!(!log.contains("01055556666"), "{log}");
    assert!(server.terminate().success());
}

#[test]
fn bad_input_is_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let env = [("BIZCALL_DATABASE__URL", db.as_str())];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "store", "add", "Bad Slug", "--name", "x", "--number", "0501",
            ],
            "store slug",
        ),
        (
            vec!["store", "add", "ok", "--name", "x", "--number", "call-me"],
            "--number",
        ),
        (vec!["store", "add", "ok", "--name", "x"], "--number"),
        (vec!["token", "issue", "nobody"], "no store nobody"),
        (vec!["token", "revoke", "tok_nothing"], "no active token"),
        (vec!["store", "remove", "nobody"], "no store nobody"),
        (
            vec![
                "call", "simulate", "--to", "1", "--from", "2", "--status", "gone",
            ],
            "gone",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run_cli(&args, &env);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A number cannot belong to two stores; a slug cannot be reused.
    assert_eq!(
        run_cli(
            &["store", "add", "a", "--name", "A", "--number", "0501"],
            &env
        )
        .0,
        0
    );
    let (code, _, err) = run_cli(
        &["store", "add", "b", "--name", "B", "--number", "0501"],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already registered to store a"), "{err}");
    let (code, _, err) = run_cli(
        &["store", "add", "a", "--name", "A", "--number", "0502"],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.contains("store a already exists"), "{err}");

    // Every write says where it went; a token for a store of another
    // database says which database it looked in.
    let (code, _, err) = run_cli(&["token", "issue", "nosuch", "--label", "x"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("no store nosuch in "), "{err}");
    let (code, _, err) = run_cli(&["token", "issue", "a", "--label", "x"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(in "), "which database: {err}");

    let (code, _, err) = run_cli(&["store", "list"], &[("BIZCALL_BUS__MESSAGE_TTL", "soon")]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bus.message_ttl"), "{err}");
    let (code, _, err) = run_cli(
        &["store", "list"],
        &[("BIZCALL_DATABASE__URL", "mysql://x")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("database.url"), "{err}");
}

#[test]
fn revoked_tokens_stop_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let env = [("BIZCALL_DATABASE__URL", url.as_str())];
    assert_eq!(
        run_cli(
            &["store", "add", "s1", "--name", "S", "--number", "0501"],
            &env
        )
        .0,
        0
    );
    let (_, token, _) = run_cli(&["token", "issue", "s1"], &env);
    let token = token.trim().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(bizcall::db::Db::connect(&url)).unwrap();
    let info = rt
        .block_on(db.token_verify(&token))
        .unwrap()
        .expect("valid");
    assert_eq!(info.store, "s1");
    assert!(rt.block_on(db.token_verify("bzc_wrong")).unwrap().is_none());
    let (code, _, err) = run_cli(&["token", "revoke", &info.id], &env);
    assert_eq!(code, 0, "{err}");
    assert!(rt.block_on(db.token_verify(&token)).unwrap().is_none());
    // Stored only as a hash.
    let stored: Vec<String> = rt
        .block_on(async {
            match &db {
                bizcall::db::Db::Sqlite(p) => {
                    sqlx::query_scalar("SELECT hash FROM tokens")
                        .fetch_all(p)
                        .await
                }
                bizcall::db::Db::Postgres(p) => {
                    sqlx::query_scalar("SELECT hash FROM tokens")
                        .fetch_all(p)
                        .await
                }
            }
        })
        .unwrap();
    assert_eq!(stored, vec![bizcall::token::hash(&token)]);
}

/// A port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn unreachable_services_are_named_with_their_cause() {
    let port = closed_port();
    let pg = format!("postgres://postgres:secret@127.0.0.1:{port}/bizcall");
    let (code, out, err) = run_cli(&["store", "list"], &[("BIZCALL_DATABASE__URL", &pg)]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "database: connection refused at 127.0.0.1:{port} (is PostgreSQL running?)"
        )),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");

    let server = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run_cli(
        &[
            "call", "simulate", "--to", "0501", "--from", "0102", "--server", &server,
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach http://127.0.0.1:{port}/bizcall/cdr: connection refused"
        )),
        "{err}"
    );
    assert!(err.contains("bizcall serve"), "{err}");
}

#[test]
fn the_test_suites_variables_are_not_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/x.db", dir.path().display());
    let (code, _, err) = run_cli(
        &["store", "list"],
        &[
            ("BIZCALL_DATABASE__URL", db.as_str()),
            (
                "BIZCALL_TEST_PG",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            ("BIZCALL_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ],
    );
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_is_plain_to_a_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Instance::spawn(dir.path(), &[]);
    let base = server.base();
    // The start-up line reaches the log just after the address is read.
    let line = "(database: sqlite sqlite://bizcall.db; bus: in-process (one instance))";
    common::eventually(Duration::from_secs(5), line, || async {
        server.log_text().contains(line)
    })
    .await;

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Before any call, /metrics lists every series at zero with its HELP.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "# HELP bizcall_cdr_received_total",
        "bizcall_cdr_received_total{result=\"stored\"} 0",
        "bizcall_calls_total{status=\"ringing\"} 0",
        "bizcall_events_published_total 0",
        "bizcall_events_rejected_total{reason=\"poison\"} 0",
        "bizcall_popups_sent_total 0",
        "bizcall_slow_consumer_disconnects_total 0",
        "bizcall_calls_deleted_total 0",
        "# HELP bizcall_tablets_connected",
        "bizcall_tablets_connected{auth=\"token\"} 0",
        "bizcall_stores_with_tablets 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    let root = client.get(format!("{base}/")).send().await.unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/tablet");

    let icon = client
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.status().as_u16(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.unwrap().starts_with("<svg"));
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.log_text());

    // With RabbitMQ, the line names the broker without its password.
    let broker = common::Broker::new();
    let env = broker.env();
    let mut server = Instance::spawn(dir.path(), &common::env_refs(&env));
    let url = bizcall::server::without_password(&common::amqp_url());
    let line = format!("bus: RabbitMQ {url}, exchange {}", broker.exchange);
    common::eventually(Duration::from_secs(5), &line, || async {
        server.log_text().contains(&line)
    })
    .await;
    let log = server.log_text();
    if let Some(password) = url::Url::parse(&common::amqp_url()).unwrap().password() {
        assert!(!log.contains(&format!(":{password}@")), "{log}");
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.log_text());
    broker.cleanup().await;
}

/// Every write says which database it went to, on both databases, and a
/// token for a store that database lacks says where it looked (a token
/// issued into ./bizcall.db while a cluster runs on PostgreSQL was silent).
async fn writes_name_their_database(backend: common::Backend) {
    let db = common::TestDb::new(backend).await;
    let env = [("BIZCALL_DATABASE__URL", db.url())];
    let shown = bizcall::server::without_password(db.url());
    let (code, _, err) = run_cli(
        &["store", "add", "w", "--name", "W", "--number", "0509"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("(in {shown})")), "{err}");
    let (code, out, err) = run_cli(&["token", "issue", "w", "--label", "desk"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    assert!(err.contains(&format!("(in {shown})")), "{err}");
    let (code, out, err) = run_cli(&["token", "issue", "nosuch"], &env);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("no store nosuch in {shown}"))
            && err.contains("BIZCALL_DATABASE__URL"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["store", "remove", "w"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("(in {shown})")), "{err}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_name_their_database_sqlite() {
    writes_name_their_database(common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_name_their_database_postgres() {
    writes_name_their_database(common::Backend::Postgres).await;
}

/// The fix is in the error: a PostgreSQL database that does not exist
/// gives the createdb line; a port in use names the setting that moves it;
/// a mistyped key names the variable typed and the key meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_say_how_to_fix_them() {
    let admin = common::TestDb::new(common::Backend::Postgres).await;
    let mut missing = url::Url::parse(admin.url()).unwrap();
    missing.set_path("bizcall_no_such_database");
    let (code, _, err) = run_cli(
        &["store", "list"],
        &[("BIZCALL_DATABASE__URL", missing.as_str())],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("does not exist")
            && err.contains("createdb")
            && err.contains("bizcall_no_such_database"),
        "{err}"
    );
    admin.cleanup().await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/b.db", dir.path().display());
    let (code, _, err) = run_cli(
        &["serve"],
        &[
            ("BIZCALL_SERVER__LISTEN", at.as_str()),
            ("BIZCALL_DATABASE__URL", url.as_str()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("server.listen") && err.contains(&at), "{err}");

    let (code, _, err) = run_cli(
        &["store", "list"],
        &[("BIZCALL_SERVER__LISTN", "127.0.0.1:1")],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("BIZCALL_SERVER__LISTN") && err.contains("did you mean listen?"),
        "{err}"
    );
}
