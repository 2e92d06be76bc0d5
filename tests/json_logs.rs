//! `log.format = "json"`: a real `bizcall serve` through calls, errors and a
//! SIGTERM writes one JSON object per line, with no caller's number in full
//! and no secret anywhere.

mod common;

use std::time::Duration;

use common::stomp::Client;
use common::Instance;

const WEBHOOK_KEY: &str = "hook-secret-5d1f0c";
const ADMIN_TOKEN: &str = "admin-secret-77a9e2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_a_json_object_without_numbers_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bizcall.toml"),
        format!(
            "[log]\nformat = \"json\"\n[webhook]\nkey = \"{WEBHOOK_KEY}\"\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\n"
        ),
    )
    .unwrap();
    common::cli_in(
        dir.path(),
        &[
            "store",
            "add",
            "gangnam",
            "--name",
            "Gangnam Wash",
            "--number",
            "050-1111-2222",
        ],
        &[],
    );
    let token = common::cli_in(dir.path(), &["token", "issue", "gangnam"], &[]);
    assert!(token.starts_with("bzc_"), "{token}");

    let mut server = Instance::spawn(dir.path(), &[]);
    let base = server.base();
    let http = common::http();
    let ws = format!("ws://{}/ws", server.addr);

    // A tablet on the store, to have a popup sent and acknowledged.
    let mut tablet = Client::open(&ws, Some("v12.stomp"), None).await;
    tablet.connect(&token).await;
    tablet.subscribe("gangnam", "s1", "client-individual").await;

    let cdr =
        |params: &str| format!("{base}/bizcall/cdr?{params}&sdt=20261122101500&key={WEBHOOK_KEY}");
    // A call that rings, is shown, acknowledged, then completes.
    let ok = http
        .get(cdr(
            "seq=json1&fromn=010-5555-6666&vn=05011112222&ton=0212345678",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let popup = tablet.expect("MESSAGE").await;
    let ack = popup.get("ack").expect("ack header").to_string();
    tablet
        .send_raw(&format!("ACK\nid:{ack}\nreceipt:a1\n\n\0"))
        .await;
    tablet.expect("RECEIPT").await;
    let done = http
        .get(cdr(
            "seq=json1&fromn=01055556666&vn=05011112222&ton=0212345678&swidt=20261122101505&edt=20261122101600",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    // Errors: a bad CDR carrying an over-long number, a CDR no store
    // matches, a wrong webhook key, a bad tablet token, a bad API token.
    let bad = http
        .get(cdr(
            "seq=json2&fromn=010999988887777666655554444&vn=05011112222&ton=0212345678",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unmatched = http
        .get(cdr(
            "seq=json3&fromn=01077778888&vn=05099990000&ton=0299990000",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unmatched.status(), 200);
    let wrong_key = http
        .get(format!(
            "{base}/bizcall/cdr?seq=json4&sdt=20261122101500&fromn=01033334444&ton=0212345678&key=guess-{WEBHOOK_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    let bogus = format!("{token}x");
    let mut intruder = Client::open(&format!("{ws}?access_token={bogus}"), None, None).await;
    intruder
        .send_raw("CONNECT\naccept-version:1.2\nhost:bizcall\n\n\0")
        .await;
    let refused = intruder.expect("ERROR").await;
    assert_eq!(refused.get("message"), Some("unauthorized"));
    let api = http
        .get(format!("{base}/api/stores/gangnam/calls"))
        .bearer_auth(&bogus)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let admin = http
        .get(format!("{base}/api/admin/stores"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);

    // Graceful stop while the tablet is still connected.
    assert!(server.terminate().success());
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tablet.closed_within(Duration::from_secs(5)),
    )
    .await;

    let log = server.log_text();
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let ts = obj["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("timestamp: {line}"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "timestamp is not RFC 3339: {line}"
        );
        let level = obj["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "level: {line}"
        );
        assert!(
            obj["target"].as_str().is_some_and(|t| !t.is_empty()),
            "target: {line}"
        );
        let message = obj["message"]
            .as_str()
            .unwrap_or_else(|| panic!("message: {line}"));
        messages.push(message.to_string());
    }
    assert!(messages.len() >= 5, "{log}");
    let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
    assert!(has("listening on http://"), "{log}");
    assert!(has("CDR stored"), "{log}");
    assert!(has("CDR rejected"), "{log}");
    assert!(has("CDR matches no store"), "{log}");
    assert!(has("bizcall stopped"), "{log}");

    // The event's fields are members of the object: the stored call names
    // its store and its caller, masked.
    let stored: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "CDR stored")
        .expect("a CDR stored line");
    assert_eq!(stored["store"], "gangnam", "{stored}");
    assert_eq!(stored["caller"], "*******6666", "{stored}");
    assert_eq!(stored["seq"], "json1", "{stored}");

    for secret in [
        "01055556666",
        "010-5555-6666",
        "01077778888",
        "010999988887777666655554444",
        "01033334444",
        token.as_str(),
        bogus.as_str(),
        WEBHOOK_KEY,
        ADMIN_TOKEN,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
