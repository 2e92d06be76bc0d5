//! Clients we did not write: @stomp/stompjs (npm, over `ws`) and the tablet
//! page in Debian's headless Chromium (playwright-core), against a real
//! `bizcall serve` on its embedded defaults. `scripts/test` installs the npm
//! packages and Chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Instance;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn require_js_deps() {
    assert!(
        js_dir().join("node_modules/@stomp/stompjs").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test does)"
    );
}

/// A store and token made with the CLI in the instance's directory.
fn register(dir: &Path, slug: &str, number: &str) -> String {
    let run = |args: &[&str]| {
        let out = Command::new(common::bin())
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["store", "add", slug, "--name", slug, "--number", number]);
    run(&["token", "issue", slug, "--label", "js"])
}

async fn call_list(base: &str, slug: &str, token: &str) -> serde_json::Value {
    common::http()
        .get(format!("{base}/api/stores/{slug}/calls"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_receives_and_acknowledges_a_popup() {
    require_js_deps();
    let dir = tempfile::tempdir().unwrap();
    let token = register(dir.path(), "js-store", "050-3333-4444");
    let server = Instance::spawn(dir.path(), &[]);
    let base = server.base();

    let mut node = Command::new("node")
        .arg(js_dir().join("stompjs_tablet.mjs"))
        .args([&format!("ws://{}/ws", server.addr), &token, "js-store"])
        .current_dir(js_dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    assert_eq!(next(&mut rx).await, "READY");
    let code = common::post_cdr(
        &base,
        &[
            ("seq", "js1"),
            ("sdt", "20261122101500"),
            ("fromn", "010-9999-0000"),
            ("ton", "02"),
            ("vn", "05033334444"),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let line = next(&mut rx).await;
    let body = line
        .strip_prefix("MESSAGE ")
        .unwrap_or_else(|| panic!("{line}"));
    let ev: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(ev["callId"], "js1");
    assert_eq!(ev["store"], "js-store");
    assert_eq!(ev["callerNumber"], "01099990000");
    assert_eq!(next(&mut rx).await, "ACKED");
    assert!(node.wait().unwrap().success());
    let list = call_list(&base, "js-store", &token).await;
    assert_eq!(list[0]["callId"], "js1");
    assert_eq!(list[0]["acknowledged"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_page_in_headless_chromium() {
    require_js_deps();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = register(dir.path(), "page-store", "050-5555-6666");
    let server = Instance::spawn(dir.path(), &[]);
    let base = server.base();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    let bin = common::bin().to_string();
    let script = js_dir().join("tablet_page.mjs");
    let (base2, token2, artifacts2) = (base.clone(), token.clone(), artifacts.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([
                base2.as_str(),
                token2.as_str(),
                bin.as_str(),
                "05055556666",
                artifacts2.to_str().unwrap(),
            ])
            .current_dir(js_dir())
            .env("CHROMIUM", chromium)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "page test failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("PAGEERROR"), "{stdout}");
    let seq = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();

    let list = call_list(&base, "page-store", &token).await;
    assert_eq!(list[0]["callId"], seq.as_str());
    assert_eq!(list[0]["status"], "answered");
    assert_eq!(list[0]["acknowledged"], true, "acknowledged from the page");
    let reservations: serde_json::Value = common::http()
        .get(format!("{base}/api/stores/page-store/reservations"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = reservations
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["callId"] == seq.as_str());
    let r = r.unwrap_or_else(|| panic!("reservation for {seq}: {reservations}"));
    assert_eq!(r["customerNumber"], "01043218765");
    assert_eq!(r["carNumber"], "12가3456");
    assert!(artifacts.join("tablet-popup-landscape.png").is_file());
    assert!(artifacts.join("tablet-portrait.png").is_file());
}
