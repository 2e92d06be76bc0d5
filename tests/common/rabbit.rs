//! RabbitMQ nodes of the tests' own, beside the shared broker (which is
//! never touched): own node names (`bizcall-t-<id>@localhost`), ports, data
//! and log directories and Erlang cookie, all under one temporary directory
//! that `Nodes` removes on drop, with every node's process, pass or fail.
//! `scripts/rabbit-nodes clean` removes what a killed test run left.
//!
//! Also the certificates of the TLS tests, made with `openssl` at test time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Prefix of every test node's name and directory (scripts/rabbit-nodes).
pub const PREFIX: &str = "bizcall-t-";

/// A node boots in about 15 s on an idle 2-core machine; allow for load.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// The certificates a TLS node and its clients use.
pub struct Certs {
    pub ca: PathBuf,
    /// For `localhost`, `rabbit.bizcall.test` and `mtls.bizcall.test` (not
    /// for 127.0.0.1).
    pub server: PathBuf,
    pub server_key: PathBuf,
    /// For `expired.bizcall.test`; valid during 2020 only.
    pub expired: PathBuf,
    pub expired_key: PathBuf,
    /// A client certificate signed by `ca`.
    pub client: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// A CA, and certificates it signs, in `dir`.
    pub fn generate(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut ca = vec!["req", "-x509", "-nodes", "-days", "3650"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=bizcall test CA",
        ]);
        openssl(dir, &ca);
        std::fs::create_dir_all(dir.join("ca_db")).unwrap();
        std::fs::write(dir.join("ca_db/index.txt"), "").unwrap();
        std::fs::write(dir.join("ca_db/serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/ca_db/index.txt\nserial = {d}/ca_db/serial\n\
                 new_certs_dir = {d}/ca_db\ndefault_md = sha256\npolicy = any\ncopy_extensions = none\nunique_subject = no\n\
                 [any]\ncommonName = supplied\n\
                 [server]\nsubjectAltName = DNS:localhost,DNS:rabbit.bizcall.test,DNS:mtls.bizcall.test\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n\
                 [expired]\nsubjectAltName = DNS:expired.bizcall.test\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n\
                 [client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let sign = |name: &str, cn: &str, ext: &str, dates: &[&str]| {
            let mut req = vec!["req", "-new", "-nodes"];
            req.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &req);
            let pem = format!("{name}.pem");
            let mut ca = vec![
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &pem,
                "-extensions",
                ext,
            ];
            ca.extend(dates);
            openssl(dir, &ca);
        };
        sign("server", "localhost", "server", &["-days", "3650"]);
        sign(
            "expired",
            "expired.bizcall.test",
            "expired",
            &[
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20210101000000Z",
            ],
        );
        sign("client", "bizcall", "client", &["-days", "3650"]);
        Certs {
            ca: dir.join("ca.pem"),
            server: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            expired: dir.join("expired.pem"),
            expired_key: dir.join("expired.key"),
            client: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// One node: a `rabbitmq-server` of its own.
pub struct Node {
    /// `bizcall-t-<id>-<n>@localhost`
    pub name: String,
    pub port: u16,
    /// The TLS listener's port, when the node has one.
    pub tls_port: Option<u16>,
    dist_port: u16,
    dir: PathBuf,
    home: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@localhost:{}/%2f", self.port)
    }

    /// `amqps://` to the TLS listener, by `host` (the certificate lists
    /// `localhost` and `rabbit.bizcall.test`).
    pub fn tls_url(&self, host: &str) -> String {
        format!(
            "amqps://guest:guest@{host}:{}/%2f",
            self.tls_port.expect("a TLS node")
        )
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", &self.home)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    /// Starts (or starts again) the node's process; see `wait_up`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .unwrap();
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        self.env(&mut cmd);
        cmd.current_dir(&self.dir)
            .env("ERL_CRASH_DUMP", self.dir.join("erl_crash.dump"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let _ = std::fs::remove_file(self.dir.join("pid"));
        // A process group of its own: `kill` reaches the script, the Erlang
        // VM and its helpers at once.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().expect("rabbitmq-server"));
    }

    /// `rabbitmqctl -n <node> <args>` with the nodes' cookie.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
        cmd.env("HOME", &self.home)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .args(["-n", &self.name])
            .args(args);
        cmd.output().expect("rabbitmqctl")
    }

    /// `ctl`, asserting success.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the node runs RabbitMQ (panics after a generous limit).
    pub fn wait_up(&mut self) {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            if self
                .ctl(&["-q", "await_startup", "--timeout", "10"])
                .status
                .success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "RabbitMQ node {} exited ({status}): {}",
                        self.name,
                        std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start within {BOOT_LIMIT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The Erlang VM's process id, from the node's pid file.
    fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL to the Erlang VM: the node dies without a word.
    pub fn kill(&mut self) {
        if let Some(pid) = self.beam_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A clean stop of the whole node (`rabbitmqctl stop`).
    pub fn stop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill();
    }
}

/// What a node listens for besides plain AMQP.
pub enum Listen<'a> {
    Plain,
    /// Plain and TLS: the server certificate for `localhost`; the expired
    /// one when the client asks for `expired.bizcall.test` (SNI); a client
    /// certificate required when it asks for `mtls.bizcall.test`.
    Tls(&'a Certs),
}

/// A set of nodes sharing one temporary directory and cookie; dropping it
/// kills every node and removes the directory.
pub struct Nodes {
    pub nodes: Vec<Node>,
    root: PathBuf,
    id: String,
}

/// A port for a node, below the kernel's ephemeral range (32768 and up),
/// so that no outgoing connection takes it between the choice and the
/// node's start; free on every address (the distribution port binds
/// 0.0.0.0). Not 25600–25799 (the shared broker's distribution port) and
/// below 31000 (RabbitMQ's CLI tools take ports 10000 above a node's
/// distribution port).
fn node_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::rng().random_range(20000..31000u16);
        if (25600..25800).contains(&port) {
            continue;
        }
        let any = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        let local = any && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if local {
            return port;
        }
    }
}

impl Nodes {
    pub fn new() -> Nodes {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let root = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        std::fs::create_dir_all(root.join("home")).unwrap();
        let cookie = root.join("home/.erlang.cookie");
        std::fs::write(&cookie, format!("BIZCALLTEST{id}").to_uppercase()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        Nodes {
            nodes: Vec::new(),
            root,
            id,
        }
    }

    /// One node with a plain listener, started and up. Blocks for the
    /// node's boot: from async code, call it inside `block_in_place`.
    pub fn single() -> Nodes {
        let mut nodes = Nodes::new();
        nodes.add(Listen::Plain);
        nodes.wait_all();
        nodes
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a node and starts its process (not waiting: see `wait_all`).
    pub fn add(&mut self, listen: Listen<'_>) -> usize {
        let n = self.nodes.len() + 1;
        let name = format!("{PREFIX}{}-{n}@localhost", self.id);
        let dir = self.root.join(format!("node{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = node_port();
        let mut conf = format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n");
        let mut advanced = "[].\n".to_string();
        let mut tls_port = None;
        if let Listen::Tls(certs) = listen {
            let p = node_port();
            tls_port = Some(p);
            conf.push_str(&format!("listeners.ssl.1 = 127.0.0.1:{p}\n"));
            advanced = format!(
                "[{{rabbit, [{{ssl_options, [{{cacertfile, {ca:?}}}, {{certfile, {cert:?}}}, {{keyfile, {key:?}}}, \
                 {{verify, verify_peer}}, {{fail_if_no_peer_cert, false}}, \
                 {{sni_hosts, [{{\"expired.bizcall.test\", [{{certfile, {exp:?}}}, {{keyfile, {exp_key:?}}}]}}, \
                 {{\"mtls.bizcall.test\", [{{verify, verify_peer}}, {{fail_if_no_peer_cert, true}}]}}]}}]}}]}}].\n",
                ca = certs.ca.display().to_string(),
                cert = certs.server.display().to_string(),
                key = certs.server_key.display().to_string(),
                exp = certs.expired.display().to_string(),
                exp_key = certs.expired_key.display().to_string(),
            );
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.join("advanced.config"), advanced).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let mut node = Node {
            name,
            port,
            tls_port,
            dist_port: node_port(),
            dir,
            home: self.root.join("home"),
            child: None,
        };
        node.spawn();
        self.nodes.push(node);
        n - 1
    }

    pub fn wait_all(&mut self) {
        for node in &mut self.nodes {
            node.wait_up();
        }
    }

    /// `n` nodes with plain listeners, up and clustered. Blocks for their
    /// boot: from async code, run it off the runtime.
    pub fn clustered(n: usize) -> Nodes {
        let mut nodes = Nodes::new();
        for _ in 0..n {
            nodes.add(Listen::Plain);
        }
        nodes.wait_all();
        nodes.cluster();
        nodes
    }

    /// Joins every node to the first one's cluster.
    pub fn cluster(&mut self) {
        let first = self.nodes[0].name.clone();
        for node in self.nodes.iter().skip(1) {
            node.ctl_ok(&["stop_app"]);
            node.ctl_ok(&["join_cluster", &first]);
            node.ctl_ok(&["start_app"]);
        }
    }
}

impl Default for Nodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
