//! Clients we did not write: @stomp/stompjs (npm, over `ws`) and the tablet
//! page in Debian's headless Chromium (playwright-core), against a real
//! `bizcall serve` on its embedded defaults. `scripts/test` installs the npm
//! packages and Chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Instance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_receives_and_acknowledges_a_popup() {
    common::require_js("@stomp/stompjs");
    let dir = tempfile::tempdir().unwrap();
    let token = common::register(dir.path(), "js-store", "050-3333-4444", "js");
    let server = Instance::spawn(dir.path(), &[]);
    let base = server.base();

    let mut node = Command::new("node")
        .arg(common::js_dir().join("stompjs_tablet.mjs"))
        .args([&format!("ws://{}/ws", server.addr), &token, "js-store"])
        .current_dir(common::js_dir())
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
    let list = common::get_json(&format!("{base}/api/stores/js-store/calls"), &token).await;
    assert_eq!(list[0]["callId"], "js1");
    assert_eq!(list[0]["acknowledged"], true);
}

/// Runs one of the page scripts under node; returns its standard output
/// once it has succeeded.
async fn run_page_script(script: &str, args: Vec<String>) -> String {
    let script = common::js_dir().join(script);
    let chromium = common::chromium();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(common::js_dir())
            .env("CHROMIUM", chromium)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "page test failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("PAGEERROR"), "{stdout}");
    println!("{stdout}");
    stdout
}

const STORE_NAME: &str = "강남 손세차";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_page_in_headless_chromium() {
    common::require_js("@stomp/stompjs");
    let dir = tempfile::tempdir().unwrap();
    let token = common::register_named(
        dir.path(),
        "page-store",
        STORE_NAME,
        "050-5555-6666",
        "js",
        &[],
    );
    let server = Instance::spawn(dir.path(), &[]);
    let base = server.base();
    // A regular: an earlier call (a fixed day long past) and a reservation,
    // which the popup shows and the form is prefilled from.
    let code = common::post_cdr(
        &base,
        &[
            ("seq", "earlier-1"),
            ("sdt", "20260105100000"),
            ("edt", "20260105100100"),
            ("swidt", "20260105100010"),
            ("fromn", "010-4321-8765"),
            ("ton", "02"),
            ("vn", "05055556666"),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let r = common::http()
        .post(format!("{base}/api/stores/page-store/reservations"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"customerNumber": "01043218765",
            "reservedAt": "2026-01-05T15:00:00+09:00", "carNumber": "34나5678",
            "carModel": "쏘나타", "service": "실내 크리닝"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let stdout = run_page_script(
        "tablet_page.mjs",
        vec![
            base.clone(),
            token.clone(),
            common::bin().to_string(),
            "05055556666".into(),
            common::artifacts().to_string_lossy().to_string(),
            STORE_NAME.into(),
        ],
    )
    .await;
    let seq = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    // axe ran on every screen.
    let screens = stdout.lines().filter(|l| l.starts_with("AXE ")).count();
    assert!(screens >= 14, "axe runs: {screens}\n{stdout}");

    let list = common::get_json(&format!("{base}/api/stores/page-store/calls"), &token).await;
    let call = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["callId"] == seq.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(call["status"], "answered");
    assert_eq!(call["acknowledged"], true, "acknowledged from the page");
    assert_eq!(call["acknowledgedBy"], "js");
    let reservations = common::get_json(
        &format!("{base}/api/stores/page-store/reservations"),
        &token,
    )
    .await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(9 + 24))
        .format("%Y-%m-%d")
        .to_string();
    let later: serde_json::Value = common::http()
        .get(format!(
            "{base}/api/stores/page-store/reservations?date={tomorrow}"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<&serde_json::Value> = reservations
        .as_array()
        .unwrap()
        .iter()
        .chain(later.as_array().unwrap())
        .collect();
    let r = all.iter().find(|r| r["callId"] == seq.as_str());
    let r = r.unwrap_or_else(|| panic!("reservation for {seq}: {all:?}"));
    assert_eq!(r["customerNumber"], "01043218765");
    assert_eq!(r["carNumber"], "12가3456");
    assert_eq!(r["carModel"], "쏘나타", "prefilled from the last visit");
    assert_eq!(r["service"], "실내 크리닝");
    for size in ["landscape", "portrait", "laptop"] {
        for screen in ["popup", "sound"] {
            let shot = common::artifacts().join(format!("tablet-{screen}-{size}.png"));
            assert!(shot.is_file(), "{}", shot.display());
        }
    }
    for screen in ["offline-landscape", "missed-landscape", "signin-landscape"] {
        assert!(common::artifacts()
            .join(format!("tablet-{screen}.png"))
            .is_file());
    }
}

/// The page on an instance whose `stomp.path` is not `/ws`: it connects
/// where the server's page says, and acknowledges a call from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_page_on_a_configured_stomp_path_in_chromium() {
    common::require_js("@stomp/stompjs");
    let dir = tempfile::tempdir().unwrap();
    let token = common::register(dir.path(), "path-store", "050-7171-8181", "js");
    let server = Instance::spawn(dir.path(), &[("BIZCALL_STOMP__PATH", "/custom-ws")]);
    let base = server.base();
    let stdout = run_page_script(
        "tablet_path.mjs",
        vec![
            base.clone(),
            token.clone(),
            common::bin().to_string(),
            "05071718181".into(),
            "/custom-ws".into(),
        ],
    )
    .await;
    let seq = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    common::eventually(Duration::from_secs(30), "acknowledged", || {
        let (base, token, seq) = (base.clone(), token.clone(), seq.clone());
        async move {
            let list =
                common::get_json(&format!("{base}/api/stores/path-store/calls"), &token).await;
            list.as_array().unwrap().iter().any(|c| {
                c["callId"] == seq.as_str()
                    && c["acknowledged"] == true
                    && c["acknowledgedBy"] == "js"
            })
        }
    })
    .await;
}

/// Two tablets of one store on two instances (PostgreSQL, RabbitMQ): one
/// takes the call, the other's popup closes and says who took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tablets_on_two_instances_in_chromium() {
    common::require_js("@stomp/stompjs");
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let broker = common::Broker::new();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    let env = common::env_refs(&env);
    let dir = tempfile::tempdir().unwrap();
    let desk = common::register_named(dir.path(), "duo", STORE_NAME, "050-6060-7070", "js", &env);
    let run = |args: &[&str]| {
        let (code, out, err) = common::run_cli(args, &env);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let bay = run(&["token", "issue", "duo", "--label", "세차장 베이"]);
    let one = Instance::spawn(dir.path(), &env);
    let two = Instance::spawn(dir.path(), &env);
    for i in [&one, &two] {
        common::bus_up(&i.base(), Duration::from_secs(30)).await;
    }
    let stdout = run_page_script(
        "tablet_two.mjs",
        vec![
            one.base(),
            two.base(),
            desk.clone(),
            bay.clone(),
            common::bin().to_string(),
            "05060607070".into(),
            common::artifacts().to_string_lossy().to_string(),
            "js".into(),
        ],
    )
    .await;
    let seq = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    let list = common::get_json(&format!("{}/api/stores/duo/calls", two.base()), &bay).await;
    // The call the desk took and the missed one it called back. Both may
    // start in the same second (the CDR's resolution), so the list's order
    // between them is not theirs to assert: find each by what it is.
    let calls = list.as_array().unwrap_or_else(|| panic!("{list}"));
    assert_eq!(calls.len(), 2, "{list}");
    let taken = calls.iter().find(|c| c["callId"] == seq.as_str());
    let taken = taken.unwrap_or_else(|| panic!("{seq} in {list}"));
    assert_eq!(taken["acknowledgedBy"], "js");
    let missed = calls.iter().find(|c| c["callId"] != seq.as_str()).unwrap();
    assert_eq!(missed["status"], "missed");
    assert_eq!(missed["calledBackBy"], "js");
    assert!(common::artifacts()
        .join("tablet-two-bay-taken.png")
        .is_file());
    drop((one, two));
    broker.cleanup().await;
    db.cleanup().await;
}
