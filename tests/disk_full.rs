//! SQLite on a filesystem that fills up: a size-limited tmpfs the test
//! mounts (it needs root, as scripts/test runs), filled to the last byte.
//! The webhook answers 503 with Retry-After and never OK, the log says so
//! once per interval, a connected tablet stays connected, the database is
//! not corrupted, and once space returns everything works again, including
//! the provider's retries of what was refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::stomp::Client;
use common::Instance;

const VN: &str = "05011114444";
const STORE: &str = "full";

/// A tmpfs of `size`, unmounted on drop (also when the test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "could not mount a {size} tmpfs (this test needs root, as scripts/test runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with one file, to the last byte; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Then byte by byte what a whole block no longer fits.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn post(base: &str, seq: &str) -> (u16, Option<String>) {
    common::post_call_answer(base, seq, VN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_503_never_ok_and_everything_works_once_space_returns() {
    let disk = SmallDisk::mount("8m");
    let db_file = disk.path().join("bizcall.db");
    let url = format!("sqlite://{}", db_file.display());
    let env = [
        ("BIZCALL_DATABASE__URL", url.as_str()),
        ("BIZCALL_WEBHOOK__OPEN", "true"),
    ];
    let token = common::register_named(disk.path(), STORE, STORE, VN, "bay", &env);
    let mut instance = Instance::spawn(disk.path(), &env);
    let base = instance.base();
    let mut tablet = Client::open(&format!("ws://{}/ws", instance.addr), None, None).await;
    tablet.connect(&token).await;
    tablet.subscribe(STORE, "s1", "auto").await;

    for i in 0..5 {
        assert_eq!(post(&base, &format!("before-{i}")).await.0, 200);
    }
    let filler = disk.fill();
    let mut refused = Vec::new();
    for i in 0..20 {
        let seq = format!("full-{i}");
        let (status, retry) = post(&base, &seq).await;
        assert_eq!(status, 503, "{seq} on a full disk");
        assert!(retry.is_some(), "503 without Retry-After");
        refused.push(seq);
    }
    let log = instance.log_text();
    assert_eq!(
        log.matches("the database's disk is full").count(),
        1,
        "the disk-full line once per interval:\n{log}"
    );
    assert_eq!(
        common::metric(&base, "bizcall_database_disk_full_total").await,
        20.0
    );

    std::fs::remove_file(&filler).unwrap();
    // The tablet stayed connected: the calls after space returns reach it.
    for i in 0..5 {
        assert_eq!(post(&base, &format!("after-{i}")).await.0, 200);
    }
    // The provider retries what was refused: now stored.
    for seq in &refused {
        assert_eq!(post(&base, seq).await.0, 200, "retry of {seq}");
    }
    let mut popups = std::collections::HashSet::new();
    while popups.len() < 25 {
        let f = tablet
            .next(Duration::from_secs(10))
            .await
            .expect("a popup after space returned");
        let id = f.json()["callId"].as_str().unwrap_or("").to_string();
        if f.command == "MESSAGE" && !id.starts_with("before-") {
            popups.insert(id);
        }
    }
    drop(tablet);
    assert!(instance.terminate().success());

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let stored: Vec<String> = sqlx::query_scalar("SELECT seq FROM calls ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        30,
        "5 before, 5 after, 20 retried: {stored:?}"
    );
    common::checker::note_row(
        "| SQLite's disk full (a tmpfs filled to the last byte) | 20 CDRs | at once (`SQLITE_FULL`) | every CDR `503` + `Retry-After`, none `OK` | — | the tablet stayed connected; 25 / 25 shown once space returned / 0 / 0; the 20 refused stored on retry; `integrity_check` ok | 0 |",
    );
    pool.close().await;
}
