//! The SockJS endpoint against an in-process server on a real socket,
//! spoken by hand (reqwest and tokio-tungstenite) so each protocol rule is
//! checked on the wire: greeting, info, CORS, every transport carrying a
//! real STOMP session, and hostile input.

mod common;

use std::time::Duration;

use common::Single as Ctx;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const PAD: &str = "https://pad.example.com";

impl Ctx {
    fn sockjs(&self) -> String {
        format!("http://{}/ws/v1/offline-store-pad", self.server.addr)
    }

    async fn call(&self, seq: &str, number: &str) {
        assert_eq!(common::post_call(&self.base(), seq, number).await, 200);
    }

    async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.cleanup().await;
    }
}

fn session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One xhr-polling session, spoken by hand.
struct Xhr {
    url: String,
    origin: Option<&'static str>,
}

impl Xhr {
    fn new(ctx: &Ctx) -> Xhr {
        Xhr {
            url: format!("{}/000/{}", ctx.sockjs(), session_id()),
            origin: None,
        }
    }

    async fn post(&self, transport: &str, body: &str) -> reqwest::Response {
        let mut req = common::http()
            .post(format!("{}/{transport}", self.url))
            .body(body.to_string());
        if let Some(o) = self.origin {
            req = req.header("Origin", o);
        }
        req.send().await.unwrap()
    }

    async fn poll(&self) -> String {
        let r = self.post("xhr", "").await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Polls until a message frame comes; returns its messages.
    async fn messages(&self) -> Vec<String> {
        for _ in 0..5 {
            let body = self.poll().await;
            if let Some(a) = body.strip_prefix('a') {
                return serde_json::from_str(a.trim_end()).unwrap();
            }
            assert_eq!(body, "h\n", "only heart-beats may come between");
        }
        panic!("no message frame");
    }

    async fn send(&self, messages: &[&str]) -> u16 {
        let body = serde_json::to_string(messages).unwrap();
        self.post("xhr_send", &body).await.status().as_u16()
    }
}

fn command(frame: &str) -> &str {
    frame.trim_start_matches('\n').lines().next().unwrap_or("")
}

fn body(frame: &str) -> serde_json::Value {
    let (_, b) = frame.split_once("\n\n").unwrap();
    serde_json::from_str(b.trim_end_matches('\0')).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_info_cors_and_unknown_urls() {
    let ctx = Ctx::new(|_| {}).await;
    let http = common::http();
    for url in [ctx.sockjs(), format!("{}/", ctx.sockjs())] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=UTF-8");
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(r.text().await.unwrap(), "Welcome to SockJS!\n");
    }

    let mut entropies = Vec::new();
    for _ in 0..2 {
        let r = http
            .get(format!("{}/info", ctx.sockjs()))
            .header("Origin", "http://tablet.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/json; charset=UTF-8");
        assert_eq!(
            h["cache-control"],
            "no-store, no-cache, no-transform, must-revalidate, max-age=0"
        );
        assert_eq!(h["access-control-allow-origin"], "http://tablet.test");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let info: serde_json::Value = r.json().await.unwrap();
        assert_eq!(info["websocket"], true);
        assert_eq!(info["cookie_needed"], false);
        assert_eq!(info["origins"], serde_json::json!(["*:*"]));
        entropies.push(info["entropy"].as_u64().expect("entropy is a number"));
    }
    assert_ne!(entropies[0], entropies[1]);
    let r = http
        .get(format!("{}/info", ctx.sockjs()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());

    for (path, methods) in [
        ("/info", "OPTIONS, GET"),
        ("/abc/abc/xhr", "OPTIONS, POST"),
        ("/abc/abc/xhr_send", "OPTIONS, POST"),
        ("/abc/abc/xhr_streaming", "OPTIONS, POST"),
    ] {
        let r = http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", ctx.sockjs()))
            .header("Origin", "null")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "a, b")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "null");
        assert_eq!(h["access-control-allow-methods"], methods);
        assert_eq!(h["access-control-allow-headers"], "a, b");
        assert_eq!(h["access-control-max-age"], "31536000");
        assert!(h["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000"));
        assert!(h.contains_key("expires"));
    }

    // Transports we do not serve, and malformed session URLs: a fast 404.
    for suffix in [
        "/a",
        "/a.html",
        "//",
        "/a/a",
        "/iframe.html",
        "/iframe-1.1.0.html",
        "/000/abc/eventsource",
        "/000/abc/htmlfile?c=x",
        "/000/abc/jsonp?c=x",
        "/000/abc/jsonp_send",
        "/a./a/xhr",
        "/a/a./xhr",
        "/a/a/a/xhr",
    ] {
        let r = http
            .post(format!("{}{suffix}", ctx.sockjs()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "POST {suffix}");
        let r = http
            .get(format!("{}{suffix}", ctx.sockjs()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "GET {suffix}");
    }
    // The websocket transport wants an upgrade.
    let r = http
        .get(format!("{}/0/0/websocket", ctx.sockjs()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{}/0/0/websocket", ctx.sockjs()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_only_and_sockjs_can_be_turned_off() {
    let ctx = Ctx::new(|c| c.stomp.allowed_origins = vec![PAD.into()]).await;
    let http = common::http();
    for path in [
        "/info",
        "/000/abc/xhr",
        "/000/abc/xhr_streaming",
        "/000/abc/xhr_send",
    ] {
        let method = if path == "/info" {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let r = http
            .request(method, format!("{}{path}", ctx.sockjs()))
            .header("Origin", "https://evil.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = http
        .get(format!("{}/info", ctx.sockjs()))
        .header("Origin", PAD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], PAD);
    ctx.finish().await;

    let ctx = Ctx::new(|c| c.compat.sockjs_path = String::new()).await;
    let r = http
        .get(format!("{}/info", ctx.sockjs()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The protocol suite's services exist only when the test flag is set.
    for path in ["/echo/info", "/close/info", "/disabled_websocket_echo/info"] {
        let r = http
            .get(format!("{}{path}", ctx.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xhr_polling_carries_a_stomp_session() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("gangnam", "0501").await;
    let x = Xhr::new(&ctx);
    let r = x.post("xhr", "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/javascript; charset=UTF-8"
    );
    assert_eq!(
        r.headers()["cache-control"],
        "no-store, no-cache, no-transform, must-revalidate, max-age=0"
    );
    assert_eq!(r.text().await.unwrap(), "o\n");

    let connect = format!("CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:0,0\n\n\0");
    let r = x
        .post("xhr_send", &serde_json::to_string(&[connect]).unwrap())
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=UTF-8");
    let got = x.messages().await;
    assert_eq!(command(&got[0]), "CONNECTED");
    assert!(
        got[0].ends_with('\0'),
        "the NUL travels escaped and arrives"
    );

    // Two frames in one xhr_send, each a message.
    assert_eq!(
        x.send(&[
            "SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/gangnam\nack:client-individual\n\n\0",
            "SUBSCRIBE\nid:1\ndestination:/topic/call-store/gangnam\nreceipt:r1\n\n\0",
        ])
        .await,
        204
    );
    assert_eq!(command(&x.messages().await[0]), "RECEIPT");

    ctx.call("X1", "0501").await;
    let mut got = x.messages().await;
    if got.len() < 2 {
        got.extend(x.messages().await);
    }
    let legacy = got
        .iter()
        .find(|f| f.contains("destination:/ws/v1/topic/call-store/gangnam"))
        .expect("legacy MESSAGE");
    let b = body(legacy);
    assert_eq!(b["fromNumber"], "01022223333");
    assert_eq!(b["stardDate"], "2026-11-22T10:15:00");
    let ack = legacy
        .lines()
        .find_map(|l| l.strip_prefix("ack:"))
        .expect("ack header")
        .to_string();
    assert_eq!(
        x.send(&[&format!("ACK\nid:{ack}\nreceipt:a\n\n\0")]).await,
        204
    );
    assert_eq!(command(&x.messages().await[0]), "RECEIPT");
    let list = common::get_json(&format!("{}/api/stores/gangnam/calls", ctx.base()), &token).await;
    assert_eq!(list[0]["acknowledged"], true);

    // A second receiver while one waits: 2010, and the first is unharmed.
    let waiting = {
        let url = format!("{}/xhr", x.url);
        tokio::spawn(async move {
            common::http()
                .post(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        x.poll().await,
        "c[2010,\"Another connection still open\"]\n"
    );
    ctx.call("X2", "0501").await;
    let first = waiting.await.unwrap();
    assert!(first.starts_with("a[") && first.contains("X2"), "{first}");

    // DISCONNECT ends the STOMP session; the session then says Go away.
    assert_eq!(x.send(&["DISCONNECT\nreceipt:bye\n\n\0"]).await, 204);
    assert_eq!(command(&x.messages().await[0]), "RECEIPT");
    assert_eq!(x.poll().await, "c[3000,\"Go away!\"]\n");
    assert_eq!(x.poll().await, "c[3000,\"Go away!\"]\n");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xhr_send_refuses_bad_payloads() {
    let ctx = Ctx::new(|_| {}).await;
    let x = Xhr::new(&ctx);
    // Unknown session.
    assert_eq!(x.send(&["x"]).await, 404);
    assert_eq!(x.poll().await, "o\n");
    let r = x.post("xhr_send", "").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "Payload expected.");
    for broken in ["[\"x", "{\"a\":1}", "[1,2]", "\"x\"", "[\"\\ud800\"]"] {
        let r = x.post("xhr_send", broken).await;
        assert_eq!(r.status(), 500, "{broken}");
        assert_eq!(r.text().await.unwrap(), "Broken JSON encoding.");
    }
    // Empty batches are fine (clients send them as keep-alives).
    assert_eq!(x.post("xhr_send", "[]").await.status(), 204);
    // A huge body is refused before it is read whole.
    let huge = format!("[\"{}\"]", "x".repeat(2 * 1024 * 1024));
    assert_eq!(x.post("xhr_send", &huge).await.status(), 413);
    // A STOMP frame over stomp.max_frame in one message: ERROR, then close.
    let big = format!(
        "CONNECT\naccept-version:1.2\nx:{}\n\n\0",
        "y".repeat(70_000)
    );
    assert_eq!(x.send(&[&big]).await, 204);
    let got = x.messages().await;
    assert_eq!(command(&got[0]), "ERROR");
    assert_eq!(x.poll().await, "c[3000,\"Go away!\"]\n");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_address_and_reused_ids_join_the_session() {
    let ctx = Ctx::new(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let x = Xhr::new(&ctx);
    assert_eq!(x.poll().await, "o\n");
    // The same id from another client address is an unknown session.
    let r = common::http()
        .post(format!("{}/xhr_send", x.url))
        .header("X-Forwarded-For", "203.0.113.9")
        .body("[\"x\"]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = common::http()
        .post(format!("{}/xhr", x.url))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The server id is ignored: the same session under another one.
    let other = x.url.replacen("/000/", "/999/", 1);
    let r = common::http()
        .post(format!("{other}/xhr_send"))
        .body("[\"CONNECT\\naccept-version:1.2\\n\\n\\u0000\"]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = x.messages().await;
    assert_eq!(command(&got[0]), "ERROR", "no token: {got:?}");
    assert!(got[0].contains("message:unauthorized"));
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xhr_streaming_prelude_frames_and_limit() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("gangnam", "0501").await;
    let x = Xhr::new(&ctx);
    let mut r = x.post("xhr_streaming", "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/javascript; charset=UTF-8"
    );
    let mut got = String::new();
    let next = async |r: &mut reqwest::Response, got: &mut String| -> String {
        loop {
            if let Some(i) = got.find('\n') {
                return got.drain(..=i).collect();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .expect("a chunk in time")
                .unwrap()
                .expect("stream open");
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    assert_eq!(
        next(&mut r, &mut got).await,
        format!("{}\n", "h".repeat(2048))
    );
    assert_eq!(next(&mut r, &mut got).await, "o\n");

    // A second streaming receiver: prelude, 2010, end.
    let r2 = x.post("xhr_streaming", "").await;
    let text = r2.text().await.unwrap();
    assert!(
        text.ends_with("h\nc[2010,\"Another connection still open\"]\n"),
        "{text}"
    );

    let connect = format!("CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:0,0\n\n\0");
    assert_eq!(x.send(&[&connect]).await, 204);
    let line = next(&mut r, &mut got).await;
    assert!(line.starts_with("a[\"CONNECTED\\u000a"), "{line}");
    assert_eq!(
        x.send(&["SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/gangnam\n\n\0"])
            .await,
        204
    );
    ctx.call("S1", "0501").await;
    let line = next(&mut r, &mut got).await;
    assert!(
        line.contains("\\\"stardDate\\\":\\\"2026-11-22T10:15:00\\\""),
        "{line}"
    );

    // After 128 KiB a response ends and the client opens another; the
    // session goes on. Output: RECEIPTs with long ids, about 1 KiB each.
    let frames: Vec<String> = (0..100)
        .map(|i| format!("ACK\nid:none\nreceipt:{i:03}-{}\n\n\0", "z".repeat(1000)))
        .collect();
    let refs: Vec<&str> = frames.iter().map(String::as_str).collect();
    assert_eq!(x.send(&refs).await, 204);
    assert_eq!(x.send(&refs).await, 204);
    let mut total = got.len();
    let mut receipts = got.matches("RECEIPT").count();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the response ends in time")
    {
        total += chunk.len();
        receipts += std::str::from_utf8(&chunk)
            .unwrap()
            .matches("RECEIPT")
            .count();
    }
    assert!(total >= 128 * 1024, "ended after {total} bytes");
    assert!(total < 200 * 1024, "ended after {total} bytes");
    // The next streaming request continues the session: no `o`, the rest.
    let mut r = x.post("xhr_streaming", "").await;
    let mut rest = String::new();
    while receipts < 200 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("the rest in time")
            .unwrap()
            .expect("open");
        let text = std::str::from_utf8(&chunk).unwrap().to_string();
        assert!(!text.starts_with("o\n"));
        receipts += text.matches("RECEIPT").count();
        rest.push_str(&text);
    }
    assert_eq!(receipts, 200);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport_and_raw_websocket() {
    let ctx = Ctx::new(|_| {}).await;
    let token = ctx.store("gangnam", "0501").await;
    let ws_base = ctx.sockjs().replacen("http://", "ws://", 1);
    let url = format!("{ws_base}/000/{}/websocket", session_id());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let recv = async |ws: &mut common::stomp::Socket| -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(Message::Close(c)))) => return format!("CLOSE {c:?}"),
                Ok(Some(Ok(_))) => continue,
                other => return format!("END {other:?}"),
            }
        }
    };
    assert_eq!(recv(&mut ws).await, "o");
    // Empty messages and empty arrays are ignored.
    ws.send(Message::Text("".into())).await.unwrap();
    ws.send(Message::Text("[]".into())).await.unwrap();
    let connect = format!("CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:0,0\n\n\0");
    ws.send(Message::Text(
        serde_json::to_string(&[connect]).unwrap().into(),
    ))
    .await
    .unwrap();
    let a = recv(&mut ws).await;
    let frames: Vec<String> = serde_json::from_str(&a[1..]).unwrap();
    assert_eq!(command(&frames[0]), "CONNECTED");
    // A single JSON string is a message too.
    let sub = serde_json::to_string(
        "SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/gangnam\nreceipt:r\n\n\0",
    )
    .unwrap();
    ws.send(Message::Text(sub.into())).await.unwrap();
    let a = recv(&mut ws).await;
    assert!(a.starts_with("a[\"RECEIPT"), "{a}");
    ctx.call("W1", "0501").await;
    let a = recv(&mut ws).await;
    let frames: Vec<String> = serde_json::from_str(&a[1..]).unwrap();
    assert_eq!(body(&frames[0])["fromNumber"], "01022223333");
    // The same session id on a second WebSocket is a session of its own.
    let (mut ws2, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(recv(&mut ws2).await, "o");
    // Broken JSON ends the connection.
    ws2.send(Message::Text("[\"a".into())).await.unwrap();
    let end = recv(&mut ws2).await;
    assert!(
        end.starts_with("a[\"ERROR")
            || end.starts_with("c[")
            || end.starts_with("CLOSE")
            || end.starts_with("END"),
        "{end}"
    );
    // DISCONNECT: the close frame, then the WebSocket close.
    ws.send(Message::Text("[\"DISCONNECT\\n\\n\\u0000\"]".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await, "c[3000,\"Go away!\"]");
    assert!(recv(&mut ws).await.starts_with("CLOSE"));

    // The raw WebSocket is plain STOMP, as on /ws.
    let mut raw = common::stomp::Client::open(&format!("{ws_base}/websocket"), None, None).await;
    raw.connect(&token).await;
    raw.send_raw("SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/gangnam\nreceipt:r\n\n\0")
        .await;
    raw.expect("RECEIPT").await;
    ctx.call("W2", "0501").await;
    assert_eq!(
        raw.expect("MESSAGE").await.json()["fromNumber"],
        "01022223333"
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_tablets_over_sockjs_need_a_listed_origin() {
    let ctx = Ctx::new(|c| {
        c.compat.anonymous = true;
        c.stomp.allowed_origins = vec![PAD.into()];
    })
    .await;
    ctx.store("gangnam", "0501").await;
    ctx.server
        .app
        .db
        .store_set_anonymous("gangnam", true)
        .await
        .unwrap();
    let connect = "CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0";
    // No Origin: allowed through the door, refused at CONNECT.
    let x = Xhr::new(&ctx);
    assert_eq!(x.poll().await, "o\n");
    assert_eq!(x.send(&[connect]).await, 204);
    let got = x.messages().await;
    assert!(got[0].contains("message:unauthorized"), "{got:?}");
    // From the pad's origin: a tablet of any store's legacy destination.
    let mut x = Xhr::new(&ctx);
    x.origin = Some(PAD);
    assert_eq!(x.poll().await, "o\n");
    assert_eq!(x.send(&[connect]).await, 204);
    assert_eq!(command(&x.messages().await[0]), "CONNECTED");
    assert_eq!(
        x.send(&["SUBSCRIBE\nid:0\ndestination:/ws/v1/topic/call-store/gangnam\nreceipt:r\n\n\0"])
            .await,
        204
    );
    assert_eq!(command(&x.messages().await[0]), "RECEIPT");
    ctx.call("N1", "0501").await;
    assert_eq!(
        body(&x.messages().await[0])["stardDate"],
        "2026-11-22T10:15:00"
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_sessions_are_bounded_and_forgotten() {
    let ctx = Ctx::new(|_| {}).await;
    let http = common::http();
    let mut opened = 0;
    let mut refused = 0;
    for _ in 0..2000 {
        let r = http
            .post(format!("{}/000/{}/xhr", ctx.sockjs(), session_id()))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => opened += 1,
            503 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    // One address holds at most 256 sessions at once.
    assert!(
        opened >= 256 && refused > 0,
        "opened {opened}, refused {refused}"
    );
    // Without a receiver a session lives 5 s, then is forgotten 5 s later:
    // the address may open sessions again. (The sessions gauge is shared
    // by every server of this test process, so the cap is what is checked.)
    common::eventually(Duration::from_secs(30), "sessions forgotten", || async {
        common::http()
            .post(format!("{}/000/{}/xhr", ctx.sockjs(), session_id()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(ctx.server.app.hub.counts().0, 0);
    ctx.finish().await;
}

/// A client that aborts its receiver request and opens the next at once
/// is not refused with 2010 because the server had not yet seen the abort:
/// the next request learns the session was interrupted (1002), as the
/// sockjs-protocol suite's HandlingClose expects. Twenty times per
/// transport, over raw TCP so the abort is a real close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_receiver_does_not_make_the_next_request_another_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let ctx = Ctx::new(|_| {}).await;
    let addr = ctx.server.addr;
    async fn open(addr: std::net::SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }
    /// What arrives until a close or message frame (or `o`) is in it.
    async fn answer(s: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let done = |t: &str| {
            let body = t.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            body.contains("c[") || body.contains("a[") || body.contains("o\n")
        };
        while !done(&String::from_utf8_lossy(&got)) {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("no answer: {other:?} {}", String::from_utf8_lossy(&got)),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    for transport in ["xhr_streaming", "xhr"] {
        for _ in 0..20 {
            let path = format!("/ws/v1/offline-store-pad/000/{}/{transport}", session_id());
            let mut first = open(addr, &path).await;
            assert!(answer(&mut first).await.contains("o\n"));
            if transport == "xhr" {
                // The polling session's receiver: the next poll, waiting.
                first = open(addr, &path).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(first);
            let mut next = open(addr, &path).await;
            let got = answer(&mut next).await;
            assert!(!got.contains("2010"), "{transport}: {got}");
            assert!(
                got.contains("c[1002,\"Connection interrupted\"]"),
                "{transport}: {got}"
            );
        }
    }
    ctx.finish().await;
}
