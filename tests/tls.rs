//! `amqps://` against a real RabbitMQ node with a TLS listener, started
//! here beside the shared broker (tests/common/rabbit.rs) with a CA, server
//! and client certificates made at test time: the popup path across two
//! instances, `bizcall dlq` over TLS, a broker that requires a client
//! certificate, and each TLS mistake's one-line error.

mod common;

use std::time::{Duration, Instant};

use common::rabbit::{Certs, Listen, Nodes};
use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};

const VN: &str = "05077770001";
const HIDDEN: &str = "NotPrinted4821";

/// Runs `bizcall <args>` expected to fail; returns its stderr. Fails the
/// test if it is still running after a generous limit (a hang).
fn fails(args: &[&str], env: &[(String, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args(args)
        .current_dir(dir.path())
        .env("BIZCALL_SERVER__LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!status.success(), "bizcall {args:?} should fail: {err}");
            assert!(!err.contains(HIDDEN), "the password is never shown: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let url = env
                .iter()
                .rev()
                .find(|(k, _)| k == "BIZCALL_AMQP__URL")
                .map(|(_, v)| v.replace(HIDDEN, "…"));
            let _ = child.wait();
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("bizcall {args:?} with {url:?} hung instead of failing: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one line of a failed start (lapin's own log lines may follow it).
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    lines[0].to_string()
}

fn with(base: &[(String, String)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    for (k, v) in extra {
        env.push((k.to_string(), v.clone()));
    }
    env
}

/// What a failed command must say on stderr.
enum Says {
    /// Its error line, exactly.
    Line(String),
    /// An error line that starts so.
    Starts(String),
    /// An error line that starts with the first and ends with the second.
    Framed(String, &'static str),
    /// An error line that contains this.
    LineHas(&'static str),
    /// Its stderr contains this (the line may come from the configuration).
    Has(&'static str),
}

/// One TLS mistake: `bizcall <args>` with `env` on top of the test's own
/// must fail and say `says`.
struct Case {
    what: &'static str,
    args: &'static [&'static str],
    env: Vec<(&'static str, String)>,
    says: Says,
}

impl Case {
    /// Runs the case on top of the environment `base`.
    fn check(&self, base: &[(String, String)]) {
        let err = fails(self.args, &with(base, &self.env));
        let what = self.what;
        match &self.says {
            Says::Line(line) => assert_eq!(&error_line(&err), line, "{what}: {err}"),
            Says::Starts(start) => {
                assert!(error_line(&err).starts_with(start), "{what}: {err}")
            }
            Says::Framed(start, end) => {
                let line = error_line(&err);
                assert!(
                    line.starts_with(start) && line.ends_with(end),
                    "{what}: {err}"
                );
            }
            Says::LineHas(part) => assert!(error_line(&err).contains(part), "{what}: {err}"),
            Says::Has(part) => assert!(err.contains(part), "{what}: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_a_real_tls_node() {
    let mut nodes = Nodes::new();
    let certs = Certs::generate(&nodes.root().join("certs"));
    nodes.add(Listen::Tls(&certs));
    tokio::task::block_in_place(|| nodes.wait_all());
    let node = &nodes.nodes[0];
    let tls_port = node.tls_port.unwrap();
    let ca = certs.ca.display().to_string();

    let broker = Broker::new();
    let db = TestDb::new(Backend::Postgres).await;
    let mut base = broker.env();
    base.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    base.push(("BIZCALL_AMQP__DEAD_LETTER".into(), "true".into()));
    let url = |host: &str, port: u16, scheme: &str| {
        format!("{scheme}://guest:{HIDDEN}@{host}:{port}/%2f")
    };

    // Each mistake stops the start with its line, naming the broker.
    let mut mistakes = vec![
        Case {
            what: "a CA the client does not know",
            args: &["serve"],
            env: vec![("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps"))],
            says: Says::Line(format!("error: RabbitMQ at amqps://localhost:{tls_port}: its TLS certificate is signed by an unknown certificate authority: set amqp.tls.ca_file to that CA's PEM file")),
        },
        Case {
            what: "a name the certificate does not list",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("127.0.0.1", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
            ],
            says: Says::Line(format!("error: RabbitMQ at amqps://127.0.0.1:{tls_port}: its TLS certificate is not valid for the name '127.0.0.1': connect by a name the certificate lists, or set amqp.tls.server_name to one")),
        },
        Case {
            what: "an expired certificate",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
                (
                    "BIZCALL_AMQP__TLS__SERVER_NAME",
                    "expired.bizcall.test".into(),
                ),
            ],
            says: Says::Line(format!("error: RabbitMQ at amqps://localhost:{tls_port}: its TLS certificate has expired: renew it on the broker (or check this machine's clock)")),
        },
        Case {
            what: "no client certificate for a broker that requires one",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
                ("BIZCALL_AMQP__TLS__SERVER_NAME", "mtls.bizcall.test".into()),
            ],
            says: Says::Framed(
                format!("error: RabbitMQ at amqps://localhost:{tls_port}: the broker requires a client certificate"),
                "set amqp.tls.cert_file and amqp.tls.key_file",
            ),
        },
        // amqps:// on the plain port, amqp:// on the TLS port.
        Case {
            what: "amqps:// on the plain port",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", node.port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
            ],
            says: Says::Line(format!("error: RabbitMQ at amqps://localhost:{}: it does not speak TLS on this port: use amqp:// for a plain port, or the broker's TLS port (usually 5671) with amqps://", node.port)),
        },
        Case {
            what: "amqp:// on the TLS port",
            args: &["serve"],
            env: vec![("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqp"))],
            says: Says::Line(format!("error: RabbitMQ at amqp://localhost:{tls_port}: that port speaks TLS: use amqps:// (or the broker's plain port, usually 5672)")),
        },
    ];
    // Unusable settings.
    let missing = nodes.root().join("no-such-ca.pem");
    mistakes.extend([
        Case {
            what: "a CA file that is not there",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", missing.display().to_string()),
            ],
            says: Says::Starts(format!(
                "error: amqp.tls: amqp.tls.ca_file {}: cannot read it",
                missing.display()
            )),
        },
        Case {
            what: "a key as the CA file",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                (
                    "BIZCALL_AMQP__TLS__CA_FILE",
                    certs.server_key.display().to_string(),
                ),
            ],
            says: Says::LineHas("no PEM certificate in it"),
        },
        Case {
            what: "a certificate as the key file",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
                (
                    "BIZCALL_AMQP__TLS__CERT_FILE",
                    certs.client.display().to_string(),
                ),
                (
                    "BIZCALL_AMQP__TLS__KEY_FILE",
                    certs.ca.display().to_string(),
                ),
            ],
            says: Says::LineHas("no PEM private key in it"),
        },
        Case {
            what: "a client certificate without its key",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                (
                    "BIZCALL_AMQP__TLS__CERT_FILE",
                    certs.client.display().to_string(),
                ),
            ],
            says: Says::Has("amqp.tls.cert_file and amqp.tls.key_file go together"),
        },
        Case {
            what: "a server name that is not a name",
            args: &["serve"],
            env: vec![
                ("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps")),
                ("BIZCALL_AMQP__TLS__SERVER_NAME", "not a name".into()),
            ],
            says: Says::Has("amqp.tls.server_name"),
        },
    ]);
    for case in &mistakes {
        case.check(&base);
    }

    // The popup path over amqps://, two instances: A by the certificate's
    // name; B by IP with amqp.tls.server_name, presenting a client
    // certificate to the listener that requires one.
    let good = |host: &str, extra: &[(&str, String)]| {
        let mut env = with(
            &base,
            &[
                (
                    "BIZCALL_AMQP__URL",
                    format!("amqps://guest:guest@{host}:{tls_port}/%2f"),
                ),
                ("BIZCALL_AMQP__TLS__CA_FILE", ca.clone()),
            ],
        );
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let env_a = good("localhost", &[]);
    let env_b = good(
        "127.0.0.1",
        &[
            ("BIZCALL_AMQP__TLS__SERVER_NAME", "mtls.bizcall.test".into()),
            (
                "BIZCALL_AMQP__TLS__CERT_FILE",
                certs.client.display().to_string(),
            ),
            (
                "BIZCALL_AMQP__TLS__KEY_FILE",
                certs.client_key.display().to_string(),
            ),
        ],
    );
    let (code, _, err) = common::run_cli(
        &["store", "add", "tls1", "--name", "TLS 1", "--number", VN],
        &common::env_refs(&env_a),
    );
    assert_eq!(code, 0, "{err}");
    let pool = db.connect().await;
    let token = pool.token_issue("tls1", "tls").await.unwrap().1;
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let a = Instance::spawn(dir.path(), &common::env_refs(&env_a));
    let b = Instance::spawn(dir.path(), &common::env_refs(&env_b));
    for (i, want) in [
        (&a, format!("amqps://localhost:{tls_port}")),
        (&b, format!("amqps://127.0.0.1:{tls_port}")),
    ] {
        let base_url = i.base();
        common::bus_up(&base_url, Duration::from_secs(60)).await;
        let ready: serde_json::Value = common::http()
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["bus_node"], want.as_str(), "{ready}");
        assert_eq!(
            common::metric_labelled(&base_url, "bizcall_bus_node", &format!("node=\"{want}\""))
                .await,
            1.0
        );
        assert!(
            i.log_text().contains(&format!("broker={want}")),
            "{}",
            i.log_text()
        );
    }
    let queues = nodes.nodes[0].ctl_ok(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "type",
        "durable",
    ]);
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with(&format!("{}\tquorum\ttrue", broker.dlq))),
        "the dead-letter queue is a durable quorum queue: {queues}"
    );

    // A tablet on B sees a call posted to A, and one posted to B.
    let ws = format!("ws://{}/ws", b.addr);
    let mut tablet = Client::open(&ws, None, None).await;
    tablet.connect(&token).await;
    tablet.subscribe("tls1", "0", "auto").await;
    for (instance, seq) in [(&a, "tls-a1"), (&b, "tls-b1")] {
        assert_eq!(common::post_call(&instance.base(), seq, VN).await, 200);
        let got = tablet.expect("MESSAGE").await;
        assert_eq!(got.json()["store"], "tls1", "{:?}", got.json());
    }

    // `bizcall dlq` with the same TLS settings; without the CA, the same line.
    let (code, out, err) = common::run_cli(&["dlq", "list"], &common::env_refs(&env_b));
    assert_eq!(code, 0, "{out}{err}");
    let mut no_ca = env_a.clone();
    no_ca.retain(|(k, _)| k != "BIZCALL_AMQP__TLS__CA_FILE");
    Case {
        what: "`bizcall dlq` without the CA",
        args: &["dlq", "list"],
        env: vec![("BIZCALL_AMQP__URL", url("localhost", tls_port, "amqps"))],
        says: Says::Has(
            "its TLS certificate is signed by an unknown certificate authority: set amqp.tls.ca_file",
        ),
    }
    .check(&no_ca);

    drop((a, b));
    db.cleanup().await;
    drop(nodes);
}
