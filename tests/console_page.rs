//! The operator console (`/admin`) in Debian's headless Chromium, driven by
//! playwright-core (tests/js/admin_console.mjs) against a real `bizcall
//! serve`: store, token with QR, a tablet page online, a call's trail up to
//! its ACK, revocation; axe-core on every screen. `scripts/test` installs
//! Chromium, the Korean font and the npm packages.

mod common;

use std::process::Command;

use common::Instance;

const ADMIN: &str = "console-admin-5c1d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_console_in_headless_chromium() {
    common::require_js("axe-core");
    let chromium = common::chromium();
    let dir = tempfile::tempdir().unwrap();
    let server = Instance::spawn(dir.path(), &[("BIZCALL_ADMIN__TOKEN", ADMIN)]);
    let base = server.base();
    let artifacts = common::artifacts();
    let bin = common::bin().to_string();
    let script = common::js_dir().join("admin_console.mjs");
    let (base2, artifacts2) = (base.clone(), artifacts.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([
                base2.as_str(),
                ADMIN,
                bin.as_str(),
                artifacts2.to_str().unwrap(),
            ])
            .current_dir(common::js_dir())
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
        "console test failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("PAGEERROR"), "{stdout}");
    assert!(!stdout.contains("CSPBLOCKED"), "{stdout}");
    let seq = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();

    // What the page did is what the API says.
    let trail = common::get_json(&format!("{base}/api/admin/calls/{seq}"), ADMIN).await;
    assert_eq!(trail["trail"]["verdict"], "acknowledged", "{trail}");
    assert_eq!(trail["trail"]["firstAck"]["label"], "프런트 태블릿");
    // The token never reached the server's log (it travels in a body once,
    // and in the URL fragment only).
    let log = server.log_text();
    assert!(!log.contains("bzc_"), "a token in the log:\n{log}");
    for shot in [
        "admin-token-issued.png",
        "admin-stores-laptop.png",
        "admin-call-trail-laptop.png",
        "admin-stores-ipad-landscape.png",
        "admin-call-trail-ipad-portrait.png",
    ] {
        assert!(artifacts.join(shot).is_file(), "{shot}");
    }
}
