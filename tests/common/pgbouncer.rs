//! A real PgBouncer in transaction mode in front of the tests' PostgreSQL,
//! as a fleet would run it: many instances' pools multiplexed onto a few
//! server connections.
//!
//! The binary is `BIZCALL_TEST_PGBOUNCER` (scripts/test sets it), else
//! `pgbouncer` on the PATH; it must be 1.21 or later, the first release
//! that keeps protocol-level named prepared statements (sqlx's) apart
//! between clients in transaction mode (`max_prepared_statements`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Server connections PgBouncer keeps per database: fewer than one
/// instance's own pool, so the instances' clients must share them.
pub const SERVER_CONNECTIONS: u32 = 8;

/// A running PgBouncer, killed on drop.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("BIZCALL_TEST_PGBOUNCER").unwrap_or_else(|_| "pgbouncer".into())
}

/// `PgBouncer 1.24.1` → (1, 24).
fn version(binary: &str) -> Option<(u32, u32)> {
    let out = Command::new(binary).arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().next()?.strip_prefix("PgBouncer ")?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl PgBouncer {
    /// Starts PgBouncer on a free port in front of the server of
    /// `server_url` (any database on it), and waits until it answers.
    pub async fn start(server_url: &str) -> PgBouncer {
        let bin = binary();
        match version(&bin) {
            Some(v) if v >= (1, 21) => {}
            Some((a, b)) => panic!(
                "{bin} is PgBouncer {a}.{b}: 1.21 or later is needed (named prepared statements \
                 in transaction mode); scripts/test provides one"
            ),
            None => panic!("no PgBouncer at {bin}: scripts/test provides one"),
        }
        let url = url::Url::parse(server_url).expect("PostgreSQL URL");
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5432);
        let user = user_of(&url);
        let dir = tempfile::tempdir().expect("pgbouncer dir");
        let listen = super::free_port();
        let ini = format!(
            "[databases]\n\
             * = host={host} port={port} user={user}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             max_prepared_statements = 200\n\
             default_pool_size = {SERVER_CONNECTIONS}\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             admin_users = {user}\n"
        );
        let ini_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).expect("pgbouncer.ini");
        let mut cmd = Command::new(&bin);
        cmd.arg(&ini_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // PgBouncer refuses to run as root: run it as nobody, who must
        // read its configuration.
        let euid = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc/self"),
        );
        if euid == 0 {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            let open = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(dir.path(), open.clone()).expect("chmod");
            std::fs::set_permissions(&ini_path, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            cmd.uid(65534).gid(65534);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{bin}: {e}"));
        let bouncer = PgBouncer {
            child,
            port: listen,
            _dir: dir,
        };
        super::eventually(Duration::from_secs(10), "PgBouncer up", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", listen))
                .await
                .is_ok()
        })
        .await;
        bouncer
    }

    /// `url` (a database on the server behind) as reached through PgBouncer.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("PostgreSQL URL");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.port)).expect("port");
        u.to_string()
    }

    /// What PgBouncer's admin console says now of the database of `url`
    /// (as reached directly).
    pub fn stats(&self, url: &str) -> Stats {
        let url = url::Url::parse(url).expect("PostgreSQL URL");
        let database = url.path().trim_start_matches('/');
        let user = user_of(&url);
        let console = format!("postgres://{user}@127.0.0.1:{}/pgbouncer", self.port);
        // One row of `sql`'s answer (the one for `database`), by column name.
        let row = |sql: &str| -> std::collections::HashMap<String, u64> {
            let out = Command::new("psql")
                .args([console.as_str(), "-AF", "|", "-c", sql])
                .output()
                .expect("psql");
            assert!(
                out.status.success(),
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or("").split('|').collect();
            let line = lines
                .find(|l| l.split('|').next() == Some(database))
                .unwrap_or_else(|| panic!("{sql}: no row for {database}: {text}"));
            header
                .iter()
                .zip(line.split('|'))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        };
        let stats = row("SHOW STATS");
        let pools = row("SHOW POOLS");
        let n =
            |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        Stats {
            transactions: n(&stats, "total_xact_count"),
            client_parses: n(&stats, "total_client_parse_count"),
            server_connections: ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
                .iter()
                .map(|k| n(&pools, k))
                .sum(),
        }
    }
}

/// The role a PostgreSQL URL logs in as (`postgres` when it names none).
fn user_of(url: &url::Url) -> &str {
    match url.username() {
        "" => "postgres",
        u => u,
    }
}

/// From PgBouncer's admin console, for one database.
#[derive(Debug)]
pub struct Stats {
    /// Transactions carried (`SHOW STATS` total_xact_count).
    pub transactions: u64,
    /// Named prepared statements clients asked for (total_client_parse_count).
    pub client_parses: u64,
    /// Server connections open now (`SHOW POOLS` sv_*).
    pub server_connections: u64,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
