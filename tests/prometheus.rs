//! The alerts and the dashboard against a real Prometheus (Debian's
//! `prometheus` package): it scrapes two `bizcall serve` processes on
//! RabbitMQ and PostgreSQL, loads deploy/prometheus/bizcall-alerts.yml as
//! shipped, and evaluates every 1 s. One instance reaches the broker through
//! a TCP relay this test owns; cutting the relay leaves that instance
//! reconnecting (the shared broker stays up), and BizcallBusReconnecting must
//! go pending, then firing, for it alone. Every PromQL expression of
//! deploy/grafana/bizcall-dashboard.json must evaluate without error.
//! Takes about 70 s: the alert waits out its `for: 1m`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::stomp::Client;
use common::{env_refs, Backend, Broker, Instance, TestDb};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP relay to the test broker that the test can cut: on `cut` it stops
/// listening and drops every relayed connection.
struct Relay {
    port: u16,
    cut: CancellationToken,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Relay { port, cut }
    }
}

/// A Prometheus server started by this test, killed on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/bizcall-alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: bizcall\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = common::free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test installs it)");
        let prom = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let http = common::http();
        let ready = format!("{}/-/ready", prom.base);
        common::eventually(Duration::from_secs(60), "Prometheus ready", || {
            let req = http.get(&ready).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        prom
    }

    /// `/api/v1/<path>` with `query`; the `data` member of a success.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp = common::http()
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(body.to_string())
        }
    }

    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The state ("pending", "firing") of `alert` per instance label.
    async fn alert_states(&self, alert: &str) -> Vec<(String, String)> {
        let data = self.api("alerts", &[]).await.unwrap_or_default();
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == alert)
            .map(|a| {
                (
                    a["labels"]["instance"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// Every `expr` in the dashboard, with Grafana's variables given values.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/bizcall-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            out.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                expr.replace("$__rate_interval", "1m")
                    .replace("$job", "bizcall"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_alert_fires_on_a_real_prometheus_and_the_dashboard_evaluates() {
    let started = Instant::now();
    let broker = Broker::new();
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start("127.0.0.1:5672".into()).await;
    let direct = broker.env();
    let mut relayed = direct.clone();
    let broker_url = url::Url::parse(&common::amqp_url()).unwrap();
    for (k, v) in relayed.iter_mut() {
        if k == "BIZCALL_AMQP__URL" {
            let mut u = broker_url.clone();
            u.set_port(Some(relay.port)).unwrap();
            *v = u.to_string();
        }
    }
    let with_db = |mut env: Vec<(String, String)>| {
        env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
        env
    };
    let (direct, relayed) = (with_db(direct), with_db(relayed));
    let (code, _, err) = common::run_cli(
        &[
            "store",
            "add",
            "promwash",
            "--name",
            "Prom Wash",
            "--number",
            "05077770000",
        ],
        &env_refs(&direct),
    );
    assert_eq!(code, 0, "{err}");
    let (code, token, err) = common::run_cli(&["token", "issue", "promwash"], &env_refs(&direct));
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();

    let dir = tempfile::tempdir().unwrap();
    let a = Instance::spawn(dir.path(), &env_refs(&relayed));
    let b = Instance::spawn(dir.path(), &env_refs(&direct));
    let (a_target, b_target) = (a.addr.to_string(), b.addr.to_string());
    let prom = Prometheus::start(&[a_target.clone(), b_target.clone()]).await;

    // Calls posted to A reach a tablet on B over the bus.
    let mut tablet = Client::open(&format!("ws://{}/ws", b.addr), None, None).await;
    tablet.connect(&token).await;
    tablet.subscribe("promwash", "s", "auto").await;
    let http = common::http();
    for i in 0..5 {
        let resp = http
            .get(format!(
                "{}/bizcall/cdr?seq=prom{i}&sdt=20261122101500&fromn=0101234{i:04}&vn=05077770000&ton=021110000",
                a.base()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let popup = tablet.expect("MESSAGE").await;
        assert_eq!(popup.json()["callId"], format!("prom{i}"));
    }

    // Prometheus sees both instances, both linked to the broker.
    common::eventually(
        Duration::from_secs(30),
        "both scraped with the bus up",
        || async {
            prom.query("bizcall_bus_connected{job=\"bizcall\"} == 1")
                .await
                .is_ok_and(|r| r.len() == 2)
        },
    )
    .await;
    assert!(prom.alert_states("BizcallBusReconnecting").await.is_empty());

    // Cut A's way to the broker: it keeps taking CDRs and reconnects.
    relay.cut.cancel();
    let cut_at = Instant::now();
    common::eventually(
        Duration::from_secs(30),
        "A reports the bus reconnecting",
        || async {
            let ready: Value = match http.get(format!("{}/readyz", a.base())).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            ready["bus"] == "reconnecting"
        },
    )
    .await;
    let stored = http
        .get(format!(
            "{}/bizcall/cdr?seq=promcut&sdt=20261122101500&fromn=01099990000&vn=05077770000&ton=021110000",
            a.base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored.status(),
        200,
        "CDRs are still stored while the bus is away"
    );

    common::eventually(
        Duration::from_secs(30),
        "the bus alert pending for A",
        || async {
            prom.alert_states("BizcallBusReconnecting")
                .await
                .contains(&(a_target.clone(), "pending".into()))
        },
    )
    .await;
    let pending_after = cut_at.elapsed();

    // While the alert waits out its minute: every dashboard query evaluates,
    // and every alert rule evaluates without error.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let mut with_data = 0;
    for (panel, expr) in &queries {
        let result = prom
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("panel {panel:?}: {expr}: {e}"));
        if !result.is_empty() {
            with_data += 1;
        }
    }
    // The metrics exist: most panels have data already (rates need two
    // scrapes, and some counters only appear with their first event).
    assert!(
        with_data * 2 >= queries.len(),
        "{with_data} of {} panels have data",
        queries.len()
    );
    let tablets = prom
        .query("sum by (instance) (bizcall_tablets_connected{job=\"bizcall\"})")
        .await
        .unwrap();
    let on_b = tablets
        .iter()
        .find(|s| s["metric"]["instance"] == b_target.as_str())
        .map(|s| s["value"][1].as_str().unwrap_or_default().to_string());
    assert_eq!(on_b.as_deref(), Some("1"), "{tablets:?}");

    let rules = prom.api("rules", &[]).await.unwrap();
    let mut alerting = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(
                rule["health"], "err",
                "rule {}: {}",
                rule["name"], rule["lastError"]
            );
            alerting += 1;
        }
    }
    assert_eq!(alerting, 8, "every rule of bizcall-alerts.yml is loaded");

    common::eventually(
        Duration::from_secs(120),
        "the bus alert firing for A",
        || async {
            prom.alert_states("BizcallBusReconnecting")
                .await
                .contains(&(a_target.clone(), "firing".into()))
        },
    )
    .await;
    let firing_after = cut_at.elapsed();
    assert!(
        firing_after >= Duration::from_secs(60),
        "fired after {firing_after:?}"
    );
    let states = prom.alert_states("BizcallBusReconnecting").await;
    assert!(
        states.iter().all(|(instance, _)| instance == &a_target),
        "only A is without the broker: {states:?}"
    );
    assert!(
        prom.alert_states("BizcallWebhook5xx").await.is_empty(),
        "no 503s were answered"
    );
    eprintln!(
        "bus alert: pending {pending_after:?} and firing {firing_after:?} after the cut; test took {:?}",
        started.elapsed()
    );

    drop(prom);
    drop((a, b));
    broker.cleanup().await;
    db.cleanup().await;
}

/// `promtool check rules` and the rules' unit tests: every alert fires on
/// its failure series and stays quiet on the healthy ones.
#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "bizcall-alerts.yml"],
        ["test", "rules", "bizcall-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; scripts/test installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert of the rule file has a unit test.
    let rules = std::fs::read_to_string(dir.join("bizcall-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("bizcall-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for alert in alerts {
        let tested = format!("alertname: {alert}\n");
        assert!(
            tests.matches(&tested).count() >= 2,
            "{alert} needs a firing and a quiet case in bizcall-alerts.test.yml"
        );
    }
}
