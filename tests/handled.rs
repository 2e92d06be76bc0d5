//! "One call, several tablets" (docs/call-event.md, "When a call is
//! handled"): two real `bizcall serve` processes on PostgreSQL and the real
//! RabbitMQ; when a tablet on one acknowledges a popup, the store's tablets
//! on the other get `{"type":"handled",…}` on `/topic/call-store/<slug>`,
//! and never on the legacy destination, neither over `/ws` nor SockJS.

mod common;

use bizcall::call::BusEvent;
use std::time::Duration;

use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};

const VN: &str = "05061617171";
const SLUG: &str = "two-bays";

/// The next MESSAGE (heart-beats and receipts aside), within a generous
/// deadline.
async fn message(c: &mut Client) -> common::stomp::Got {
    loop {
        match c.next(Duration::from_secs(30)).await {
            Some(f) if f.command == "MESSAGE" => return f,
            Some(f) if f.command == "RECEIPT" => continue,
            other => panic!("expected MESSAGE, got {other:?}"),
        }
    }
}

async fn tablet(url: &str, token: &str, subs: &[(&str, &str)]) -> Client {
    let mut c = Client::open(url, None, None).await;
    c.connect(token).await;
    for (id, destination) in subs {
        c.send_raw(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:{destination}\nack:client-individual\nreceipt:r-{id}\n\n\0"
        ))
        .await;
        c.expect("RECEIPT").await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_call_closes_on_the_other_instance_and_never_reaches_legacy_tablets() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    let env = common::env_refs(&env);
    let cli = |args: &[&str]| {
        let (code, out, err) = common::run_cli(args, &env);
        assert_eq!(code, 0, "{args:?}: {err}");
        out.trim().to_string()
    };
    cli(&[
        "store",
        "add",
        SLUG,
        "--name",
        "두 베이 세차",
        "--number",
        VN,
    ]);
    let front = cli(&["token", "issue", SLUG, "--label", "front desk"]);
    let bay = cli(&["token", "issue", SLUG, "--label", "bay"]);
    let old = cli(&["token", "issue", SLUG, "--label", "old page"]);
    let dir = tempfile::tempdir().unwrap();
    let one = Instance::spawn(dir.path(), &env);
    let two = Instance::spawn(dir.path(), &env);
    for i in [&one, &two] {
        common::bus_up(&i.base(), Duration::from_secs(30)).await;
    }
    let ws = |i: &Instance| format!("ws://{}/ws", i.addr);
    let topic = format!("/topic/call-store/{SLUG}");
    let legacy = format!("/ws/v1/topic/call-store/{SLUG}");

    // The front desk on instance one; the bay on instance two, following
    // both destinations; the Spring page on instance two over SockJS's raw
    // WebSocket, on the legacy destination only.
    let mut a = tablet(&ws(&one), &front, &[("calls", &topic)]).await;
    let mut b = tablet(&ws(&two), &bay, &[("calls", &topic), ("old", &legacy)]).await;
    let sockjs = format!("ws://{}/ws/v1/offline-store-pad/websocket", two.addr);
    let mut c = tablet(&sockjs, &old, &[("0", &legacy)]).await;

    assert_eq!(common::post_call(&one.base(), "h1", VN).await, 200);
    let popup = message(&mut a).await;
    assert_eq!(popup.json()["type"], "call");
    let mut b_frames = vec![message(&mut b).await, message(&mut b).await];
    assert_eq!(message(&mut c).await.json()["callId"], "h1");

    // The front desk takes it.
    let ack = popup.get("ack").expect("ack header").to_string();
    a.send_raw(&format!("ACK\nid:{ack}\n\n\0")).await;

    // The bay gets the handled event on the new destination, in the shape
    // of the spec and nothing more.
    let handled = message(&mut b).await;
    assert_eq!(handled.get("destination"), Some(topic.as_str()));
    assert_eq!(handled.get("subscription"), Some("calls"));
    let body = handled.json();
    assert_eq!(body["type"], "handled", "{body}");
    assert_eq!(body["callId"], "h1");
    assert_eq!(body["store"], SLUG);
    assert_eq!(body["by"], "front desk");
    let at = body["at"].as_str().unwrap();
    assert!(at.ends_with("+09:00"), "{at}");
    chrono::DateTime::parse_from_rfc3339(at).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 5, "{body}");
    // Acknowledging the handled message itself is allowed and takes
    // nothing (the call stays the front desk's).
    let handled_ack = handled.get("ack").expect("ack header").to_string();
    b.send_raw(&format!("ACK\nid:{handled_ack}\nreceipt:ha\n\n\0"))
        .await;

    // A second call: what each tablet receives next shows what came
    // between. The handled event reached instance two's hub before this
    // call did (the bay saw it first), so had the legacy subscriptions been
    // sent it, it would come before the call.
    assert_eq!(common::post_call(&two.base(), "h2", VN).await, 200);
    let next_c = message(&mut c).await;
    assert_eq!(next_c.json()["callId"], "h2", "{next_c:?}");
    assert_eq!(next_c.json()["type"], "call");
    b_frames.push(message(&mut b).await);
    b_frames.push(message(&mut b).await);
    for f in &b_frames {
        assert_eq!(f.json()["type"], "call", "{f:?}");
    }
    assert!(
        b_frames
            .iter()
            .any(|f| f.get("destination") == Some(legacy.as_str())),
        "the legacy subscription did get the calls: {b_frames:?}"
    );
    // The front desk is not told that it took the call itself: its next
    // message is the second call.
    let next_a = message(&mut a).await;
    assert_eq!(next_a.json()["callId"], "h2", "{next_a:?}");
    assert_eq!(next_a.json()["type"], "call");

    // The call list, asked on the other instance, says who took it.
    let list = common::get_json(&format!("{}/api/stores/{SLUG}/calls", two.base()), &bay).await;
    let h1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["callId"] == "h1")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(h1["acknowledged"], true);
    assert_eq!(h1["acknowledgedBy"], "front desk");
    let h2 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["callId"] == "h2")
        .unwrap();
    assert_eq!(h2["acknowledged"], false);
    assert_eq!(h2["acknowledgedBy"], serde_json::Value::Null);

    // The bay takes the second call: the front desk gets that one, and a
    // later ACK of the same call by another tablet tells nobody again.
    let h2_bay = b_frames
        .iter()
        .find(|f| f.json()["callId"] == "h2" && f.get("destination") == Some(topic.as_str()))
        .unwrap();
    b.send_raw(&format!("ACK\nid:{}\n\n\0", h2_bay.get("ack").unwrap()))
        .await;
    let handled_a = message(&mut a).await;
    assert_eq!(handled_a.json()["type"], "handled");
    assert_eq!(handled_a.json()["by"], "bay");
    a.send_raw(&format!("ACK\nid:{}\n\n\0", next_a.get("ack").unwrap()))
        .await;
    assert_eq!(common::post_call(&one.base(), "h3", VN).await, 200);
    assert_eq!(message(&mut b).await.json()["callId"], "h3");
    assert_eq!(message(&mut b).await.json()["callId"], "h3");
    assert_eq!(message(&mut c).await.json()["callId"], "h3");

    drop((a, b, c));
    drop((one, two));
    broker.cleanup().await;
    db.cleanup().await;
}

/// A token-less Spring-era page on `origin`, subscribed (`ack:client`)
/// to store solo's legacy destination.
async fn legacy_pad(ws: &str, origin: &str) -> Client {
    let mut pad = Client::open_with(ws, &[("Origin", origin)]).await;
    pad.send_raw("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    pad.expect("CONNECTED").await;
    pad.send_raw(
        "SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/solo\nack:client\nreceipt:r\n\n\0",
    )
    .await;
    pad.expect("RECEIPT").await;
    pad
}

/// A token-less Spring page (`compat.anonymous`) is read-only: its ACK of
/// a legacy popup does not mark the call acknowledged and tells the store's
/// other tablets nothing (a stranger on an allowed origin must not be able
/// to close the real tablet's popup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_legacy_ack_changes_nothing() {
    const PAD: &str = "https://pad.example.com";
    let ctx = common::Single::new(|c| {
        c.compat.anonymous = true;
        c.stomp.allowed_origins = vec![PAD.into()];
    })
    .await;
    let token = ctx.store("solo", "0509").await;
    ctx.server
        .app
        .db
        .store_set_anonymous("solo", true)
        .await
        .unwrap();
    let mut desk = tablet(&ctx.ws(), &token, &[("calls", "/topic/call-store/solo")]).await;
    let mut pad = legacy_pad(&ctx.ws(), PAD).await;
    let fields = [
        ("seq", "an1"),
        ("sdt", "20261122101500"),
        ("fromn", "01033334444"),
        ("ton", "02"),
        ("vn", "0509"),
    ];
    assert_eq!(common::post_cdr(&ctx.base(), &fields).await, 200);
    let popup = message(&mut pad).await;
    assert_eq!(message(&mut desk).await.json()["type"], "call");
    pad.send_raw(&format!(
        "ACK\nid:{}\n\n\0",
        popup.get("ack").expect("ack header")
    ))
    .await;
    // The ACK was read (a receipt after it comes back) and changed nothing.
    pad.send_raw("DISCONNECT\nreceipt:bye\n\n\0").await;
    pad.expect("RECEIPT").await;
    let calls = common::get_json(&format!("{}/api/stores/solo/calls", ctx.base()), &token).await;
    assert_eq!(calls[0]["callId"], "an1", "{calls}");
    assert_eq!(calls[0]["acknowledged"], false, "{calls}");
    let mut pad = legacy_pad(&ctx.ws(), PAD).await;
    // The desk's next message is the next call: no handled event came.
    let fields = [
        ("seq", "an2"),
        ("sdt", "20261122101600"),
        ("fromn", "01033334444"),
        ("ton", "02"),
        ("vn", "0509"),
    ];
    assert_eq!(common::post_cdr(&ctx.base(), &fields).await, 200);
    let next = message(&mut desk).await.json();
    assert_eq!(
        (&next["type"], &next["callId"]),
        (&"call".into(), &"an2".into()),
        "{next}"
    );
    let next = message(&mut pad).await.json();
    assert_eq!(next["callId"], "an2", "{next}");
    assert_eq!(next["fromNumber"], "01033334444");
    drop((desk, pad));
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}

/// A handled event that reaches an instance twice (an outbox republish)
/// is passed on once; an expired one never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_or_expired_handled_event_is_passed_on_once_or_never() {
    let ctx = common::Single::new(|_| {}).await;
    let token = ctx.store("twice", "0508").await;
    let mut t = tablet(&ctx.ws(), &token, &[("calls", "/topic/call-store/twice")]).await;
    let ttl = Duration::from_secs(30);
    let bus = &ctx.server.app.bus;
    let old = bizcall::call::HandledEvent::new(
        "gone",
        "twice",
        "desk",
        chrono::Utc::now() - chrono::Duration::seconds(31),
        ttl,
    );
    bus.publish(&BusEvent::Handled(old.clone())).await.unwrap();
    let ev = bizcall::call::HandledEvent::new("d1", "twice", "desk", chrono::Utc::now(), ttl);
    bus.publish(&BusEvent::Handled(ev.clone())).await.unwrap();
    bus.publish(&BusEvent::Handled(ev.clone())).await.unwrap();
    let fields = [
        ("seq", "d2"),
        ("sdt", "20261122101500"),
        ("fromn", "01099998888"),
        ("ton", "02"),
        ("vn", "0508"),
    ];
    assert_eq!(common::post_cdr(&ctx.base(), &fields).await, 200);
    let first = message(&mut t).await.json();
    assert_eq!(first["type"], "handled");
    assert_eq!(first["callId"], "d1");
    let second = message(&mut t).await.json();
    assert_eq!(
        (second["type"].as_str(), second["callId"].as_str()),
        (Some("call"), Some("d2")),
        "{second}"
    );
    drop(t);
    ctx.server.stop().await.unwrap();
    ctx.db.cleanup().await;
}
