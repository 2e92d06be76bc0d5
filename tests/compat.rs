//! The Spring service's tablets over `/ws`: the legacy destination and its
//! body shape, and token-less tablets under `compat.anonymous`, with a
//! real WebSocket STOMP client against an in-process server.

mod common;

use std::time::Duration;

use common::stomp::Client;
use common::Single as Ctx;

const PAD: &str = "https://pad.example.com";

impl Ctx {
    /// A server with the admin endpoints on (`admin-secret`).
    async fn with_admin(tweak: impl FnOnce(&mut bizcall::config::Config)) -> Ctx {
        Ctx::new(|config| {
            config.admin.token = "admin-secret".into();
            tweak(config);
        })
        .await
    }

    async fn cdr(&self, fields: &[(&str, &str)]) {
        assert_eq!(common::post_cdr(&self.base(), fields).await, 200);
    }

    async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.cleanup().await;
    }
}

fn anonymous(c: &mut bizcall::config::Config) {
    c.compat.anonymous = true;
    c.stomp.allowed_origins = vec![PAD.into()];
}

async fn subscribe(c: &mut Client, id: &str, destination: &str) {
    c.send_raw(&format!(
        "SUBSCRIBE\nid:{id}\ndestination:{destination}\nreceipt:r-{id}\n\n\0"
    ))
    .await;
    assert_eq!(
        c.expect("RECEIPT").await.get("receipt-id"),
        Some(format!("r-{id}").as_str())
    );
}

async fn connect_without_token(c: &mut Client) -> common::stomp::Got {
    c.send_raw("CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\0")
        .await;
    c.next(Duration::from_secs(10)).await.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_destination_carries_the_spring_fields() {
    let ctx = Ctx::with_admin(|_| {}).await;
    let token = ctx.store("gangnam", "05011112222").await;
    let mut tablet = Client::open(&ctx.ws(), None, None).await;
    tablet.connect(&token).await;
    subscribe(&mut tablet, "new", "/topic/call-store/gangnam").await;
    subscribe(&mut tablet, "old", "/ws/v1/topic/call-store/gangnam").await;

    ctx.cdr(&[
        ("seq", "L1"),
        ("sdt", "20261122235959"),
        ("fromn", "010-2222-3333"),
        ("ton", "0299990000"),
        ("vn", "050-1111-2222"),
    ])
    .await;
    let mut got = [
        tablet.expect("MESSAGE").await,
        tablet.expect("MESSAGE").await,
    ];
    got.sort_by_key(|m| m.get("subscription").unwrap_or("").to_string());
    let (new, old) = (&got[0], &got[1]);
    assert_eq!(new.get("destination"), Some("/topic/call-store/gangnam"));
    assert_eq!(
        old.get("destination"),
        Some("/ws/v1/topic/call-store/gangnam")
    );
    assert_eq!(old.get("content-type"), Some("application/json"));
    let (n, o) = (new.json(), old.json());
    // The new body is unchanged.
    assert!(
        n.get("fromNumber").is_none() && n.get("stardDate").is_none(),
        "{n}"
    );
    assert_eq!(n["virtualNumber"], "05011112222");
    // The legacy body is the event plus the Spring fields.
    assert_eq!(o["fromNumber"], "01022223333");
    assert_eq!(o["stardDate"], "2026-11-22T23:59:59");
    assert_eq!(o["virtualNumber"], "05011112222");
    for key in [
        "type",
        "callId",
        "store",
        "status",
        "callerNumber",
        "startedAt",
        "expiresAt",
    ] {
        assert_eq!(o[key], n[key], "{key}");
    }

    // A status update reaches the legacy subscription too.
    ctx.cdr(&[
        ("seq", "L1"),
        ("sdt", "20261122235959"),
        ("swidt", "20261123000005"),
        ("fromn", "010-2222-3333"),
        ("ton", "0299990000"),
        ("vn", "050-1111-2222"),
    ])
    .await;
    let a = tablet.expect("MESSAGE").await;
    let b = tablet.expect("MESSAGE").await;
    for m in [&a, &b] {
        assert_eq!(m.json()["status"], "answered");
        assert_eq!(m.json()["callId"], "L1");
    }

    // Matched by the store's real number (no vn): virtualNumber is absent.
    let t2 = ctx.store("jamsil", "0233334444").await;
    let mut other = Client::open(&ctx.ws(), None, None).await;
    other.connect(&t2).await;
    subscribe(&mut other, "old", "/ws/v1/topic/call-store/jamsil").await;
    ctx.cdr(&[
        ("seq", "L2"),
        ("sdt", "20261122101500"),
        ("fromn", "01055556666"),
        ("ton", "02-3333-4444"),
    ])
    .await;
    let m = other.expect("MESSAGE").await.json();
    assert_eq!(m["fromNumber"], "01055556666");
    assert_eq!(m["stardDate"], "2026-11-22T10:15:00");
    assert!(m.get("virtualNumber").is_none(), "{m}");
    // Nothing of jamsil reached gangnam's tablet.
    assert!(tablet.next(Duration::from_millis(500)).await.is_none());
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_tablet_gets_only_its_own_store_on_either_destination() {
    let ctx = Ctx::with_admin(anonymous).await;
    let token = ctx.store("gangnam", "0501").await;
    ctx.store("jamsil", "0502").await;
    for destination in [
        "/ws/v1/topic/call-store/jamsil",
        "/topic/call-store/jamsil",
        "/ws/v1/topic/call-store/",
        "/ws/v1/topic/call-store/gangnam/x",
        "/ws/v1/topic/call-store/../gangnam",
    ] {
        // Even from an allowed origin, a token means that token's store.
        let mut c = Client::open_with(&ctx.ws(), &[("Origin", PAD)]).await;
        c.connect(&token).await;
        c.send_raw(&format!("SUBSCRIBE\nid:0\ndestination:{destination}\n\n\0"))
            .await;
        let e = c.expect("ERROR").await;
        assert_eq!(
            e.get("message"),
            Some("forbidden destination"),
            "{destination}"
        );
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_less_tablets_are_refused_by_default() {
    let ctx = Ctx::with_admin(|c| c.stomp.allowed_origins = vec![PAD.into()]).await;
    let mut c = Client::open_with(&ctx.ws(), &[("Origin", PAD)]).await;
    let e = connect_without_token(&mut c).await;
    assert_eq!(e.command, "ERROR");
    assert_eq!(e.get("message"), Some("unauthorized"));
    assert!(c.closed_within(Duration::from_secs(5)).await);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_tablets_from_allowed_origins_follow_opted_in_stores_legacy_only() {
    let ctx = Ctx::with_admin(anonymous).await;
    ctx.store("gangnam", "0501").await;
    ctx.store("jamsil", "0502").await;
    ctx.store("mapo", "0503").await;

    // A store that does not exist, or that is not opted in: refused.
    for slug in ["nosuch", "mapo"] {
        let mut pad = Client::open_with(&ctx.ws(), &[("Origin", PAD)]).await;
        assert_eq!(connect_without_token(&mut pad).await.command, "CONNECTED");
        pad.send_raw(&format!(
            "SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/{slug}\n\n\0"
        ))
        .await;
        let e = pad.expect("ERROR").await;
        assert_eq!(e.get("message"), Some("forbidden destination"), "{slug}");
        assert!(
            e.body.contains("does not take tablets without a token"),
            "{e:?}"
        );
        assert!(pad.closed_within(Duration::from_secs(5)).await);
    }
    // The operator opts gangnam and jamsil in through the admin API.
    for slug in ["gangnam", "jamsil"] {
        let r = common::http()
            .patch(format!("{}/api/admin/stores/{slug}", ctx.base()))
            .bearer_auth("admin-secret")
            .json(&serde_json::json!({"anonymousTablets": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let one: serde_json::Value = r.json().await.unwrap();
        assert_eq!(one["anonymousTablets"], true, "{one}");
        assert_eq!(one["name"], slug, "the name is kept: {one}");
    }

    // No Origin (not a browser), or one not listed: refused.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    let e = connect_without_token(&mut c).await;
    assert_eq!(
        (e.command.as_str(), e.get("message")),
        ("ERROR", Some("unauthorized"))
    );
    for origin in [
        "https://evil.example.com",
        "null",
        "https://pad.example.com.evil.net",
    ] {
        // The listed-origins check on the upgrade refuses it with 403.
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = ctx.ws().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{origin}")
            }
            other => panic!("{origin}: expected 403, got {other:?}"),
        }
    }

    // From the pad's origin: accepted, legacy destinations of any store.
    let mut pad = Client::open_with(&ctx.ws(), &[("Origin", PAD)]).await;
    let connected = connect_without_token(&mut pad).await;
    assert_eq!(connected.command, "CONNECTED", "{connected:?}");
    assert_eq!(connected.get("user-name"), Some("anonymous"));
    subscribe(&mut pad, "a", "/ws/v1/topic/call-store/gangnam").await;
    subscribe(&mut pad, "b", "/ws/v1/topic/call-store/jamsil").await;
    // (The auth-labelled gauge is checked in a process of its own, in
    // tests/sockjs_clients.rs: the recorder is shared by this process's
    // servers.)
    let admin = common::get_json(&format!("{}/api/admin/stores", ctx.base()), "admin-secret").await;
    for s in admin.as_array().unwrap() {
        let opted_in = s["slug"] != "mapo";
        assert_eq!(s["anonymousTablets"], opted_in, "{s}");
        assert_eq!(s["anonymousTabletsHere"], u32::from(opted_in), "{s}");
        assert_eq!(s["tabletsHere"], 0, "{s}");
    }

    for (seq, vn, store) in [("A1", "0501", "gangnam"), ("A2", "0502", "jamsil")] {
        ctx.cdr(&[
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "01077778888"),
            ("ton", "0299990000"),
            ("vn", vn),
        ])
        .await;
        let m = pad.expect("MESSAGE").await;
        assert_eq!(
            m.get("destination"),
            Some(format!("/ws/v1/topic/call-store/{store}").as_str())
        );
        assert_eq!(m.json()["store"], store);
        assert_eq!(m.json()["fromNumber"], "01077778888");
    }

    // The new destination needs a token.
    pad.send_raw("SUBSCRIBE\nid:c\ndestination:/topic/call-store/gangnam\n\n\0")
        .await;
    let e = pad.expect("ERROR").await;
    assert_eq!(e.get("message"), Some("forbidden destination"));
    assert!(pad.closed_within(Duration::from_secs(5)).await);
    common::eventually(Duration::from_secs(5), "anonymous tablet gone", || async {
        ctx.server.app.hub.counts().0 == 0
    })
    .await;
    ctx.finish().await;
}

#[test]
fn anonymous_without_allowed_origins_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let (code, _, stderr) = common::run_cli(
        &["serve"],
        &[
            ("BIZCALL_DATABASE__URL", &db),
            ("BIZCALL_SERVER__LISTEN", "127.0.0.1:0"),
            ("BIZCALL_COMPAT__ANONYMOUS", "true"),
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("compat.anonymous"), "{stderr}");
    assert!(stderr.contains("stomp.allowed_origins"), "{stderr}");
}
