//! A real PostgreSQL restart: a cluster of the test's own (initdb in a
//! temporary directory, as the postgres user when run as root), stopped
//! and started again 2 s later (`pg_ctl`) while CDRs keep coming. The webhook answers 503
//! with `Retry-After` while it is down and never `OK` without a commit;
//! the tablet stays connected; within 5 s of the restart the instance takes
//! CDRs, its presence heart-beat, mark and trail writers write, and
//! `/readyz` is up, with no restart of the instance; every `OK` is stored
//! and every 503 is stored by the provider's retry.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::stomp::Client;
use common::Instance;

const VN: &str = "05011115555";
const STORE: &str = "restart";

/// A PostgreSQL cluster of the test's own, stopped and removed on drop.
struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// Whether the test runs as root (initdb will not: the postgres user runs
/// the cluster then).
fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `tool` of `bin`, as the postgres user when running as root.
fn pg_tool(bin: &std::path::Path, tool: &str) -> Command {
    if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (apt-get install postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        if root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown postgres");
        }
        let port = common::free_port();
        let pg = OwnPostgres { dir, bin, port };
        pg.run(&[
            "initdb",
            "-D",
            &pg.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        pg.ctl("start");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, args: &[&str]) {
        let out = pg_tool(&self.bin, args[0])
            .args(&args[1..])
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ctl(&self, verb: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-w",
            "-m",
            "fast",
            "-o",
            &options,
            verb,
        ]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = pg_tool(&self.bin, "pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

async fn post(base: &str, seq: &str) -> (u16, Option<String>) {
    common::post_call_answer(base, seq, VN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_is_503_meanwhile_and_everything_recovers_within_5_s() {
    let pg = OwnPostgres::start();
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE bizcall")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = pg.url("bizcall");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BIZCALL_DATABASE__URL", url.as_str()),
        ("BIZCALL_WEBHOOK__OPEN", "true"),
    ];
    let token = common::register_named(dir.path(), STORE, STORE, VN, "bay", &env);
    let instance = Instance::spawn(dir.path(), &env);
    let base = instance.base();
    let mut tablet = Client::open(&format!("ws://{}/ws", instance.addr), None, None).await;
    tablet.connect(&token).await;
    tablet.subscribe(STORE, "s1", "auto").await;

    // CDRs every 100 ms from before the restart until after it.
    let poster = {
        let base = base.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..100 {
                let seq = format!("r-{i}");
                let (status, retry) = post(&base, &seq).await;
                answers.push((seq, status, retry));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("stop");
        std::thread::sleep(Duration::from_secs(2));
        pg.ctl("start");
        pg
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    let restarted_ms = chrono::Utc::now().timestamp_millis();
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let id = instance
        .log_text()
        .split("instance=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the instance id in its log")
        .to_string();
    common::eventually(
        Duration::from_secs(5),
        "CDRs stored, heart-beat, mark and trail written, /readyz up",
        || {
            let (raw, id, base) = (raw.clone(), id.clone(), base.clone());
            async move {
                let seq = format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                let answer = post(&base, &seq).await;
                if answer.0 != 200 {
                    println!("after the restart: {seq} answered {answer:?}");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let beat: Option<i64> =
                    sqlx::query_scalar("SELECT heartbeat_at FROM instances WHERE id = $1")
                        .bind(&id)
                        .fetch_optional(&raw)
                        .await
                        .ok()
                        .flatten();
                let pending: Option<i64> =
                    sqlx::query_scalar("SELECT event_pending FROM calls WHERE seq = $1")
                        .bind(&seq)
                        .fetch_optional(&raw)
                        .await
                        .ok()
                        .flatten();
                let trail: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM call_trail WHERE seq = $1 AND instance_id = $2",
                )
                .bind(&seq)
                .bind(&id)
                .fetch_one(&raw)
                .await
                .unwrap_or(0);
                let ready = common::ready(&base).await.0;
                println!(
                    "after the restart: heart-beat {:?} ms later, mark {pending:?}, trail {trail}, readyz {ready}",
                    beat.map(|b| b - restarted_ms)
                );
                beat.is_some_and(|b| b >= restarted_ms)
                    && pending == Some(0)
                    && trail == 1
                    && ready == 200
            }
        },
    )
    .await;
    let recovered = restarted.elapsed();

    let answers = poster.await.unwrap();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .map(|(seq, _, _)| seq)
        .collect();
    for (seq, status, retry) in &answers {
        assert!(
            *status == 200 || (*status == 503 && retry.is_some()),
            "{seq}: {status} {retry:?}"
        );
    }
    assert!(!refused.is_empty(), "no CDR met the restart");
    for seq in &refused {
        assert_eq!(post(&base, seq).await.0, 200, "retry of {seq}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE seq LIKE 'r-%'")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(stored, 100, "every OK and every retried 503 stored");
    common::checker::note_row(&format!(
        "| PostgreSQL stopped and started again (a cluster of the test's own) | 2 s down | — | {} `OK`, {} `503` + `Retry-After` | — | recovered {:.1} s after the start (CDRs, heart-beat, mark, trail, `/readyz`); the {} refused stored on retry | 0 |",
        answers.len() - refused.len(),
        refused.len(),
        recovered.as_secs_f64(),
        refused.len()
    ));
    // The tablet stayed connected: the last calls reached it.
    let mut last_seen = false;
    while let Some(f) = tablet.next(Duration::from_secs(5)).await {
        if f.command == "MESSAGE" && f.json()["callId"] == "r-99" {
            last_seen = true;
            break;
        }
    }
    assert!(
        last_seen,
        "r-99 never reached the tablet\n{}",
        instance.log_text()
    );
    raw.close().await;
    drop(instance);
    drop(pg);
}
