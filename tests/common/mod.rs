//! Shared helpers for the behaviour tests: real databases (a SQLite file or
//! a fresh PostgreSQL database per test), in-process servers on real
//! sockets, and `bizcall` processes.
#![allow(dead_code)]

pub mod checker;
pub mod fault;
pub mod fleet;
pub mod nginx;
pub mod pgbouncer;
pub mod rabbit;
pub mod relay;
pub mod stomp;

use std::net::SocketAddr;
use std::time::Duration;

use bizcall::config::Config;
use bizcall::db::Db;
use bizcall::server::Server;

/// Where the tests find PostgreSQL: an admin URL on a database that exists.
pub fn pg_admin_url() -> String {
    std::env::var("BIZCALL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("BIZCALL_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A database of its own for one test, removed by `cleanup`, or when it is
/// dropped without (a test that failed).
pub enum TestDb {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        name: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("bizcall.db").display());
                TestDb::Sqlite { url, _dir: dir }
            }
            Backend::Postgres => {
                let name = unique("bizcall_test");
                let admin = Db::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL for tests");
                if let Db::Postgres(pool) = &admin {
                    sqlx::query(&format!("CREATE DATABASE {name}"))
                        .execute(pool)
                        .await
                        .expect("create test database");
                }
                admin.close().await;
                let mut url = url::Url::parse(&pg_admin_url()).expect("pg url");
                url.set_path(&name);
                TestDb::Postgres {
                    url: url.to_string(),
                    name,
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub async fn connect(&self) -> Db {
        let db = Db::connect(self.url()).await.expect("connect test db");
        db.migrate().await.expect("migrate");
        db
    }

    pub async fn cleanup(mut self) {
        if let TestDb::Postgres { name, .. } = &mut self {
            drop_database(name).await;
            // Dropped: nothing left for `Drop`.
            name.clear();
        }
    }
}

async fn drop_database(name: &str) {
    if let Ok(Db::Postgres(pool)) = Db::connect(&pg_admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// Runs `work` to its end (at most `limit`) on a runtime of its own in a
/// thread of its own: `Drop` may run inside the test's runtime, which
/// cannot be blocked on.
fn run_aside<F>(limit: Duration, work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                let _ = tokio::time::timeout(limit, work).await;
            });
        }
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { name, .. } = self {
            if !name.is_empty() {
                let name = std::mem::take(name);
                run_aside(Duration::from_secs(10), async move {
                    drop_database(&name).await;
                });
            }
        }
    }
}

/// A configuration for one test instance: an ephemeral port and the db.
pub fn config_for(db_url: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.database.url = db_url.to_string();
    c
}

/// Starts an in-process instance and registers a store `slug` with `numbers`.
pub async fn start(config: Config) -> Server {
    bizcall::server::start(config).await.expect("server starts")
}

pub fn base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// One in-process server on a SQLite database of its own, for the tests of a
/// single instance (STOMP, SockJS, the Spring compatibility).
pub struct Single {
    pub db: TestDb,
    pub server: Server,
}

impl Single {
    pub async fn new(tweak: impl FnOnce(&mut Config)) -> Single {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut config = config_for(db.url());
        tweak(&mut config);
        let server = start(config).await;
        Single { db, server }
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.server.addr)
    }

    pub fn base(&self) -> String {
        base(self.server.addr)
    }

    /// Registers a store with one number and returns a tablet token.
    pub async fn store(&self, slug: &str, number: &str) -> String {
        let db = &self.server.app.db;
        db.store_add(slug, slug, &[number.to_string()])
            .await
            .unwrap();
        db.token_issue(slug, "test").await.unwrap().1
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Runs one async test body against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(common::Backend::Postgres).await;
            }
        }
    };
}

/// Path of the built `bizcall` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bizcall")
}

/// Runs `bizcall <args>` with the given environment; returns (code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run bizcall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `bizcall serve` process, killed on drop.
pub struct Instance {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Instance {
    /// Starts `bizcall serve` in `dir` with `env`, listening on an ephemeral
    /// port, and waits until it says where it listens.
    pub fn spawn(dir: &std::path::Path, env: &[(&str, &str)]) -> Instance {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .arg("serve")
            .current_dir(dir)
            .env("BIZCALL_SERVER__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bizcall serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("bizcall serve did not start: {:?}", log.lock().unwrap());
            }
        };
        Instance { child, addr, log }
    }

    pub fn base(&self) -> String {
        base(self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RabbitMQ names of one test on one broker, deleted by `cleanup`.
pub struct Broker {
    /// The broker: the shared one (`amqp_url`), or a node of the test's own.
    pub url: String,
    pub exchange: String,
    pub prefix: String,
    pub dlx: String,
    pub dlq: String,
    /// Set by `cleanup`; otherwise `Drop` deletes the names (a test that
    /// failed).
    cleaned: std::sync::atomic::AtomicBool,
}

impl Broker {
    /// Names on the shared broker.
    pub fn new() -> Self {
        Self::on(&amqp_url())
    }

    /// Names on the broker at `url` (a node of the test's own:
    /// `rabbit::Node::url`).
    pub fn on(url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Broker {
            url: url.to_string(),
            exchange: format!("bizcall-test-x-{id}"),
            prefix: format!("bizcall-test-q-{id}"),
            dlx: format!("bizcall-test-dlx-{id}"),
            dlq: format!("bizcall-test-dlq-{id}"),
            cleaned: Default::default(),
        }
    }

    /// Points a configuration's bus at these names on this broker.
    pub fn apply(&self, c: &mut Config) {
        c.bus.kind = bizcall::config::BusKind::Amqp;
        // Tests post CDRs without a key: said on purpose.
        c.webhook.open = true;
        c.amqp.url = self.url.clone();
        c.amqp.exchange = self.exchange.clone();
        c.amqp.queue_prefix = self.prefix.clone();
        c.amqp.dead_letter_exchange = self.dlx.clone();
        c.amqp.dead_letter_queue = self.dlq.clone();
    }

    /// The same, as environment variables for a `bizcall` process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BIZCALL_BUS__KIND".into(), "amqp".into()),
            ("BIZCALL_WEBHOOK__OPEN".into(), "true".into()),
            ("BIZCALL_AMQP__URL".into(), self.url.clone()),
            ("BIZCALL_AMQP__EXCHANGE".into(), self.exchange.clone()),
            ("BIZCALL_AMQP__QUEUE_PREFIX".into(), self.prefix.clone()),
            (
                "BIZCALL_AMQP__DEAD_LETTER_EXCHANGE".into(),
                self.dlx.clone(),
            ),
            ("BIZCALL_AMQP__DEAD_LETTER_QUEUE".into(), self.dlq.clone()),
        ]
    }

    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
            .await
            .expect("test broker");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    /// The direct exchange of store-routed delivery (its default name).
    pub fn routed_exchange(&self) -> String {
        format!("{}-store", self.exchange)
    }

    /// Publishes raw bytes to the exchange, as a foreign publisher would.
    pub async fn publish_raw(&self, payload: &[u8]) {
        self.publish_raw_to(&self.exchange, "", payload).await;
    }

    /// Publishes raw bytes to `exchange` with a routing key.
    pub async fn publish_raw_to(&self, exchange: &str, key: &str, payload: &[u8]) {
        let (conn, ch) = self.channel().await;
        ch.basic_publish(
            exchange.into(),
            key.into(),
            Default::default(),
            payload,
            Default::default(),
        )
        .await
        .expect("publish");
        let _ = conn.close(200, "done".into()).await;
    }

    /// Messages in the dead-letter queue now.
    pub async fn dlq_depth(&self) -> u32 {
        let (conn, ch) = self.channel().await;
        let q = ch
            .queue_declare(
                self.dlq.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        let _ = conn.close(200, "done".into()).await;
        q.map(|q| q.message_count()).unwrap_or(0)
    }

    pub async fn cleanup(&self) {
        self.cleaned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (conn, ch) = self.channel().await;
        delete_names(&ch, &self.names()).await;
        let _ = conn.close(200, "done".into()).await;
    }

    /// The dead-letter queue, then the exchanges.
    fn names(&self) -> [String; 4] {
        [
            self.dlq.clone(),
            self.dlx.clone(),
            self.exchange.clone(),
            self.routed_exchange(),
        ]
    }
}

/// Deletes the dead-letter queue and the exchanges of `Broker::names`.
async fn delete_names(ch: &lapin::Channel, names: &[String; 4]) {
    let _ = ch
        .queue_delete(names[0].as_str().into(), Default::default())
        .await;
    for exchange in &names[1..] {
        let _ = ch
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.cleaned.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (url, names) = (self.url.clone(), self.names());
        run_aside(Duration::from_secs(5), async move {
            let props = lapin::ConnectionProperties::default();
            if let Ok(conn) = lapin::Connection::connect(&url, props).await {
                if let Ok(ch) = conn.create_channel().await {
                    delete_names(&ch, &names).await;
                }
                let _ = conn.close(200, "done".into()).await;
            }
        });
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

/// `rabbitmqctl <listing> <columns…>` (`list_queues`, `list_exchanges`,
/// `list_bindings`), a row of fields per line.
pub fn rabbitmq_rows(listing: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([listing, "-q", "--no-table-headers"])
        .args(columns)
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// `rabbitmqctl list_queues name <columns…>` rows whose name starts with `prefix`.
pub fn list_queues(prefix: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let columns: Vec<&str> = std::iter::once("name")
        .chain(columns.iter().copied())
        .collect();
    rabbitmq_rows("list_queues", &columns)
        .into_iter()
        .filter(|row| row[0].starts_with(prefix))
        .collect()
}

/// Borrows owned (key, value) pairs as the `&str` pairs `Instance::spawn` takes.
pub fn env_refs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A gauge or counter of the instance at `base`, summed over labels;
/// `None` while it does not answer within 10 s (restarting, or busy).
pub async fn metric_if_up(base: &str, name: &str) -> Option<f64> {
    let r = http()
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    Some(sum_of(&r.text().await.unwrap_or_default(), name))
}

/// The samples of metric `name` in an exposition `text`, summed.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A counter or gauge from an instance's `/metrics`, summed over labels.
pub async fn metric(base: &str, name: &str) -> f64 {
    sum_of(&get_text(&format!("{base}/metrics")).await, name)
}

/// A counter from an instance's `/metrics` whose labels include `label`
/// (e.g. `result="conflict"`), summed.
pub async fn metric_labelled(base: &str, name: &str, label: &str) -> f64 {
    get_text(&format!("{base}/metrics"))
        .await
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .is_some_and(|rest| rest.split('}').next().unwrap_or("").contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An answer's header `name`, or "" when it has none.
pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// `GET url`, read as text.
pub async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET url` with `Authorization: Bearer <bearer>`, read as JSON.
pub async fn get_json(url: &str, bearer: &str) -> serde_json::Value {
    http()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Posts a provider-shaped CDR form; returns the status code (0 when
/// nothing answered).
pub async fn post_cdr(base: &str, fields: &[(&str, &str)]) -> u16 {
    match http()
        .post(format!("{base}/bizcall/cdr"))
        .form(fields)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// `post_call`, with the answer's `Retry-After` too; a request that got no
/// answer at all is status 0.
pub async fn post_call_answer(base: &str, seq: &str, vn: &str) -> (u16, Option<String>) {
    let r = http()
        .post(format!("{base}/bizcall/cdr"))
        .form(&[
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "010-2222-3333"),
            ("ton", "0299990000"),
            ("vn", vn),
        ])
        .send()
        .await;
    match r {
        Ok(r) => {
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (r.status().as_u16(), retry)
        }
        Err(_) => (0, None),
    }
}

/// Posts a ringing CDR for the store number `vn` (from 010-2222-3333 to
/// 0299990000, on 2026-11-22 10:15); returns the status code.
pub async fn post_call(base: &str, seq: &str, vn: &str) -> u16 {
    post_cdr(
        base,
        &[
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "010-2222-3333"),
            ("ton", "0299990000"),
            ("vn", vn),
        ],
    )
    .await
}

/// A CDR's form fields without a virtual number (so for no store), for a
/// client of the test's own choosing.
pub fn cdr_fields(seq: &str) -> Vec<(&'static str, String)> {
    vec![
        ("seq", seq.to_string()),
        ("sdt", "20261122101500".into()),
        ("fromn", "01012345678".into()),
        ("ton", "0212345678".into()),
    ]
}

/// `/readyz` of the instance at `base`: its status and body.
pub async fn ready(base: &str) -> (u16, serde_json::Value) {
    let r = http().get(format!("{base}/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until the instance at `base` is connected to its broker.
pub async fn bus_up(base: &str, limit: Duration) {
    eventually(limit, &format!("bus up on {base}"), || async move {
        metric(base, "bizcall_bus_connected").await == 1.0
    })
    .await;
}

/// Runs `bizcall <args>` in `dir` (where its `bizcall.toml` and SQLite file
/// are) with `env` added and `RUST_LOG` unset, asserting it succeeds;
/// returns its standard output, trimmed.
pub fn cli_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run bizcall");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A store `slug` (named after its slug) on `number` and a tablet token
/// labelled `label` for it, made with the CLI in `dir`; returns the token.
pub fn register(dir: &std::path::Path, slug: &str, number: &str, label: &str) -> String {
    register_named(dir, slug, slug, number, label, &[])
}

/// `register` with the store's name and the CLI's environment.
pub fn register_named(
    dir: &std::path::Path,
    slug: &str,
    name: &str,
    number: &str,
    label: &str,
    env: &[(&str, &str)],
) -> String {
    cli_in(
        dir,
        &["store", "add", slug, "--name", name, "--number", number],
        env,
    );
    cli_in(dir, &["token", "issue", slug, "--label", label], env)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The JavaScript test clients (tests/js).
pub fn js_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Asserts the npm package `package` is installed under tests/js.
pub fn require_js(package: &str) {
    assert!(
        js_dir().join("node_modules").join(package).is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test does)"
    );
}

/// The headless Chromium the page tests drive (`CHROMIUM`, else Debian's).
pub fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test does)"
    );
    chromium
}

/// Where the page tests leave their screenshots.
pub fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts")
}
