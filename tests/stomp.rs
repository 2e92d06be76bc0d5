//! Tablets over STOMP 1.2 / WebSocket against an in-process server on a
//! real socket: the whole popup flow, authentication, isolation between
//! stores, hostile input, heart-beats, revocation, slow consumers.

mod common;

use bizcall::call::BusEvent;
use std::time::Duration;

use common::stomp::Client;
use common::Single as Ctx;

impl Ctx {
    async fn call(&self, seq: &str, number: &str, extra: &[(&str, &str)]) {
        let mut fields = vec![
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "010-2222-3333"),
            ("ton", "0299990000"),
            ("vn", number),
        ];
        fields.extend_from_slice(extra);
        assert_eq!(common::post_cdr(&self.base(), &fields).await, 200);
    }

    async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.cleanup().await;
    }
}

async fn popup_flow(protocol: Option<&str>) {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("gangnam", "0501").await;
    let mut tablet = Client::open(&ctx.ws(), protocol, None).await;
    if let Some(p) = protocol {
        assert_eq!(tablet.protocol.as_deref(), Some(p));
    }
    let connected = tablet.connect(&token).await;
    assert_eq!(connected.get("version"), Some("1.2"));
    assert_eq!(connected.get("user-name"), Some("gangnam"));
    assert_eq!(connected.get("heart-beat"), Some("0,0"));
    assert!(connected.get("session").is_some_and(|s| !s.is_empty()));
    assert!(connected
        .get("server")
        .is_some_and(|s| s.starts_with("bizcall/")));
    tablet
        .subscribe("gangnam", "sub-0", "client-individual")
        .await;

    ctx.call("F1", "0501", &[]).await;
    let msg = tablet.expect("MESSAGE").await;
    assert_eq!(msg.get("destination"), Some("/topic/call-store/gangnam"));
    assert_eq!(msg.get("subscription"), Some("sub-0"));
    assert_eq!(msg.get("content-type"), Some("application/json"));
    assert_eq!(
        msg.get("content-length"),
        Some(msg.body.len().to_string().as_str())
    );
    let ack = msg.get("ack").expect("ack header").to_string();
    assert!(msg.get("message-id").is_some());
    let ev = msg.json();
    assert_eq!(ev["type"], "call");
    assert_eq!(ev["callId"], "F1");
    assert_eq!(ev["store"], "gangnam");
    assert_eq!(ev["status"], "ringing");
    assert_eq!(ev["callerNumber"], "01022223333");
    assert_eq!(ev["startedAt"], "2026-11-22T10:15:00+09:00");

    // The call ends: the same popup is updated.
    ctx.call(
        "F1",
        "0501",
        &[("swidt", "20261122101510"), ("edt", "20261122102000")],
    )
    .await;
    let update = tablet.expect("MESSAGE").await;
    assert_eq!(update.json()["callId"], "F1");
    assert_eq!(update.json()["status"], "completed");

    tablet
        .send_raw(&format!("ACK\nid:{ack}\nreceipt:a1\n\n\0"))
        .await;
    assert_eq!(tablet.expect("RECEIPT").await.get("receipt-id"), Some("a1"));
    let list = common::get_json(&format!("{}/api/stores/gangnam/calls", ctx.base()), &token).await;
    assert_eq!(list[0]["callId"], "F1");
    assert_eq!(list[0]["acknowledged"], true);
    assert!(list[0]["acknowledgedAt"].is_string());

    tablet.send_raw("DISCONNECT\nreceipt:bye\n\n\0").await;
    assert_eq!(
        tablet.expect("RECEIPT").await.get("receipt-id"),
        Some("bye")
    );
    assert!(tablet.closed_within(Duration::from_secs(5)).await);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popup_flow_with_subprotocol() {
    popup_flow(Some("v12.stomp")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popup_flow_without_subprotocol() {
    popup_flow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_each_place_and_refusals() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("s1", "0501").await;

    let mut c = Client::open(&format!("{}?access_token={token}", ctx.ws()), None, None).await;
    c.send_raw("STOMP\naccept-version:1.1,1.2\nhost:x\n\n\0")
        .await;
    assert_eq!(c.expect("CONNECTED").await.get("user-name"), Some("s1"));

    let mut c = Client::open(&ctx.ws(), None, Some(&token)).await;
    c.send_raw("CONNECT\naccept-version:1.2\n\n\0").await;
    c.expect("CONNECTED").await;

    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_raw(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:Bearer {token}\n\n\0"
    ))
    .await;
    c.expect("CONNECTED").await;

    for bad in ["", "passcode:bzc_nope\n", "passcode:not-even-a-token\n"] {
        let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
        c.send_raw(&format!("CONNECT\naccept-version:1.2\n{bad}\n\0"))
            .await;
        let err = c.expect("ERROR").await;
        assert_eq!(err.get("message"), Some("unauthorized"), "{bad}");
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }

    // A revoked token is refused, and its open connection is closed.
    let mut open = Client::open(&ctx.ws(), None, None).await;
    open.connect(&token).await;
    let info = ctx
        .server
        .app
        .db
        .token_verify(&token)
        .await
        .unwrap()
        .unwrap();
    ctx.server.app.db.token_revoke(&info.id).await.unwrap();
    let err = open.expect("ERROR").await;
    assert_eq!(err.get("message"), Some("unauthorized"));
    assert!(open.closed_within(Duration::from_secs(5)).await);
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_raw(&format!(
        "CONNECT\naccept-version:1.2\npasscode:{token}\n\n\0"
    ))
    .await;
    assert_eq!(c.expect("ERROR").await.get("message"), Some("unauthorized"));

    // Versions: 1.0 and 1.1 are spoken; nothing else.
    let token2 = ctx.store("s2", "0502").await;
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_raw(&format!(
        "CONNECT\naccept-version:1.0,1.1\npasscode:{token2}\n\n\0"
    ))
    .await;
    assert_eq!(c.expect("CONNECTED").await.get("version"), Some("1.1"));
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_raw(&format!(
        "CONNECT\naccept-version:2.0\npasscode:{token2}\n\n\0"
    ))
    .await;
    assert_eq!(
        c.expect("ERROR").await.get("message"),
        Some("unsupported version")
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_destination_is_forbidden() {
    let ctx = Ctx::new(|_| {}).await;
    let token_a = ctx.store("store-a", "0501").await;
    ctx.store("store-b", "0502").await;
    for dest in [
        "/topic/call-store/store-b",
        "/topic/call-store/",
        "/topic/call-store/store-a/x",
        "/queue/anything",
        "/topic/call-store/*",
    ] {
        let mut c = Client::open(&ctx.ws(), None, None).await;
        c.connect(&token_a).await;
        c.send_raw(&format!("SUBSCRIBE\nid:0\ndestination:{dest}\n\n\0"))
            .await;
        let err = c.expect("ERROR").await;
        assert_eq!(err.get("message"), Some("forbidden destination"), "{dest}");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{dest}");
    }
    // SEND is refused too.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.connect(&token_a).await;
    c.send_raw("SEND\ndestination:/topic/call-store/store-a\n\nhi\0")
        .await;
    assert_eq!(
        c.expect("ERROR").await.get("message"),
        Some("SEND is not accepted")
    );
    assert!(c.closed_within(Duration::from_secs(5)).await);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_stores_five_hundred_calls_no_leaks() {
    let ctx = Ctx::new(|_| {}).await;
    let mut tablets = Vec::new();
    for i in 0..50 {
        let slug = format!("st{i}");
        let token = ctx.store(&slug, &format!("0500{i:04}")).await;
        let mut c = Client::open(&ctx.ws(), Some("v12.stomp"), None).await;
        c.connect(&token).await;
        c.subscribe(&slug, "0", "auto").await;
        tablets.push((slug, c));
    }
    let mut expected = vec![0usize; 50];
    let client = common::http();
    for n in 0..500 {
        let store = (n * 7 + n / 3) % 50;
        expected[store] += 1;
        let seq = format!("iso{n}");
        let vn = format!("0500{store:04}");
        let r = client
            .post(format!("{}/bizcall/cdr", ctx.base()))
            .form(&[
                ("seq", seq.as_str()),
                ("sdt", "20261122101500"),
                ("fromn", "0101"),
                ("ton", "02"),
                ("vn", vn.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    for (i, (slug, c)) in tablets.iter_mut().enumerate() {
        for _ in 0..expected[i] {
            let f = c.expect("MESSAGE").await;
            assert_eq!(
                f.json()["store"],
                slug.as_str(),
                "a call of another store leaked"
            );
        }
    }
    // Nothing else arrives anywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (slug, c) in tablets.iter_mut() {
        assert!(
            c.next(Duration::from_millis(20)).await.is_none(),
            "{slug} got an extra frame"
        );
    }
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_error_or_close_and_others_are_unaffected() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("calm", "0501").await;
    let mut bystander = Client::open(&ctx.ws(), None, None).await;
    bystander.connect(&token).await;
    bystander.subscribe("calm", "0", "auto").await;

    let big_body = format!("SEND\ndestination:/x\n\n{}\0", "x".repeat(1024 * 1024));
    let many_headers = {
        let mut s = String::from("CONNECT\naccept-version:1.2\n");
        for i in 0..1000 {
            s.push_str(&format!("h{i}:v\n"));
        }
        s.push_str("\n\0");
        s
    };
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "unknown command",
            "HELLO\n\n\0".into(),
            Some("unknown command"),
        ),
        (
            "bad header",
            "CONNECT\nno-colon-here\n\n\0".into(),
            Some("malformed header"),
        ),
        // One WebSocket message larger than a frame may be.
        ("1 MiB message", big_body, Some("message too large")),
        ("1000 headers", many_headers, Some("too many headers")),
        (
            "frame before CONNECT",
            "SUBSCRIBE\nid:0\ndestination:/topic/call-store/calm\n\n\0".into(),
            Some("not connected"),
        ),
        (
            "bad content-length",
            "CONNECT\ncontent-length:zz\n\n\0".into(),
            Some("bad content-length"),
        ),
    ];
    for (what, raw, message) in cases {
        let mut c = Client::open(&ctx.ws(), None, None).await;
        // The 1 MiB message is refused from its header, often while it is
        // still being written: the write may then fail, the ERROR still comes.
        let _ = c.try_send_raw(&raw).await;
        let err = c.expect("ERROR").await;
        assert_eq!(err.get("message"), message, "{what}");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{what}");
    }
    // After CONNECT, an escape STOMP 1.2 does not define.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.connect(&token).await;
    c.send_raw("SUBSCRIBE\nid:\\t\ndestination:/topic/call-store/calm\n\n\0")
        .await;
    assert_eq!(c.expect("ERROR").await.get("message"), Some("bad escape"));

    // Binary messages: a header that is not UTF-8 is refused.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_bytes(b"CONNECT\npasscode:\xff\xfe\n\n\0".to_vec())
        .await;
    assert_eq!(
        c.expect("ERROR").await.get("message"),
        Some("invalid UTF-8")
    );
    // Random binary noise.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.send_bytes((0..=255u8).cycle().take(5000).collect()).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // A text message that is not UTF-8 at the WebSocket level is closed.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    let _ =
        c.ws.send(tokio_tungstenite::tungstenite::Message::Frame(
            Frame::message(
                b"CONNECT\n\xc3\x28\n\n\0".to_vec(),
                OpCode::Data(Data::Text),
                true,
            ),
        ))
        .await;
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // A flood of frames without CONNECT ends at the first one.
    let mut c = Client::open(&ctx.ws(), None, None).await;
    let flood = "SEND\ndestination:/x\n\nspam\0".repeat(2000);
    c.send_raw(&flood).await;
    assert_eq!(
        c.expect("ERROR").await.get("message"),
        Some("not connected")
    );
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // The bystander was never disturbed.
    ctx.call("calm1", "0501", &[]).await;
    assert_eq!(bystander.expect("MESSAGE").await.json()["callId"], "calm1");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_negotiated_and_enforced() {
    let ctx = Ctx::new(|c| c.stomp.heartbeat = Duration::from_millis(500)).await;
    let token = ctx.store("hb", "0501").await;

    // Silent client promising beats every 500 ms: closed after ~1 s.
    let mut silent = Client::open(&ctx.ws(), None, None).await;
    silent
        .send_raw(&format!(
            "CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:500,0\n\n\0"
        ))
        .await;
    let c = silent.expect("CONNECTED").await;
    assert_eq!(c.get("heart-beat"), Some("0,500"));
    let err = silent
        .next(Duration::from_secs(10))
        .await
        .expect("ERROR before close");
    assert_eq!(err.get("message"), Some("heart-beat timeout"));
    assert!(silent.closed_within(Duration::from_secs(5)).await);

    // A client that keeps beating stays, and gets the server's beats.
    let mut lively = Client::open(&ctx.ws(), None, None).await;
    lively
        .send_raw(&format!(
            "CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:500,500\n\n\0"
        ))
        .await;
    assert_eq!(
        lively.expect("CONNECTED").await.get("heart-beat"),
        Some("500,500")
    );
    for _ in 0..12 {
        lively.send_raw("\n").await;
        assert!(lively.next(Duration::from_millis(250)).await.is_none() || lively.beats > 0);
    }
    assert!(
        lively.beats >= 2,
        "server heart-beats received: {}",
        lively.beats
    );
    lively.subscribe("hb", "0", "auto").await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_dropped_with_an_error() {
    let ctx = Ctx::new(|c| c.stomp.outbound_queue = 8).await;
    let token = ctx.store("slow", "0501").await;
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.connect(&token).await;
    c.subscribe("slow", "0", "auto").await;
    // Publish far more than the socket buffers hold, without reading.
    let now = chrono::Utc::now();
    for i in 0..40_000 {
        let ev = bizcall::call::CallEvent {
            kind: bizcall::call::EventKind::Call,
            call_id: format!("slow{i}"),
            store: "slow".into(),
            status: bizcall::call::CallStatus::Ringing,
            caller_number: "01000000000".into(),
            virtual_number: None,
            started_at: now,
            answered_at: None,
            ended_at: None,
            published_at: now,
            expires_at: now + chrono::Duration::seconds(60),
            published_us: None,
        };
        ctx.server
            .app
            .bus
            .publish(&BusEvent::Call(ev.clone()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut messages = 0;
    let last = loop {
        match c.next(Duration::from_secs(10)).await {
            Some(f) if f.command == "MESSAGE" => messages += 1,
            other => break other,
        }
    };
    let last = last.expect("an ERROR before the close");
    assert_eq!(last.command, "ERROR");
    assert_eq!(last.get("message"), Some("slow consumer"));
    assert!(messages < 40_000, "{messages}");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_tells_tablets_to_reconnect() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("bye", "0501").await;
    let mut c = Client::open(&ctx.ws(), None, None).await;
    c.connect(&token).await;
    c.subscribe("bye", "0", "auto").await;
    let Ctx { db, server } = ctx;
    let stopping = tokio::spawn(server.stop());
    let err = c.expect("ERROR").await;
    assert_eq!(err.get("message"), Some("server restart"));
    assert!(c.closed_within(Duration::from_secs(5)).await);
    stopping.await.unwrap().unwrap();
    db.cleanup().await;
}
