//! The admin API behind the operator console, on SQLite and PostgreSQL:
//! stores, numbers, tokens (issue with QR, revoke drops the tablet), calls
//! with their delivery trail, live events, and what it refuses: no or a
//! wrong token, malformed, oversized, duplicated and hostile input. Then
//! cluster-wide presence across real `bizcall serve` processes on RabbitMQ
//! and PostgreSQL, with one of them killed.

mod common;

use std::time::Duration;

use common::stomp::Client;
use common::{Backend, Broker, Instance, TestDb};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-9f3k";

struct Ctx {
    db: TestDb,
    server: bizcall::server::Server,
}

impl Ctx {
    async fn new(backend: Backend) -> Ctx {
        Ctx::with(backend, |_| {}).await
    }

    async fn with(backend: Backend, tweak: impl FnOnce(&mut bizcall::config::Config)) -> Ctx {
        let db = TestDb::new(backend).await;
        let mut config = common::config_for(db.url());
        config.admin.token = ADMIN.into();
        tweak(&mut config);
        let server = common::start(config).await;
        Ctx { db, server }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", common::base(self.server.addr))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = common::http().request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, Some(ADMIN), None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            "POST",
            path,
            Some(ADMIN),
            Some(("application/json", body.to_string())),
        )
        .await
    }

    async fn store(&self, slug: &str) -> Value {
        let (code, list) = self.get("/api/admin/stores").await;
        assert_eq!(code, 200);
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["slug"] == slug)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn token_row(&self, slug: &str, id: &str) -> Value {
        let (code, list) = self.get(&format!("/api/admin/stores/{slug}/tokens")).await;
        assert_eq!(code, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn cleanup(self) {
        let _ = self.server.stop().await;
        self.db.cleanup().await;
    }
}

/// Every admin route, with a body where it takes one.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/admin/stores"),
    ("POST", "/api/admin/stores"),
    ("GET", "/api/admin/stores/s1"),
    ("PATCH", "/api/admin/stores/s1"),
    ("DELETE", "/api/admin/stores/s1"),
    ("POST", "/api/admin/stores/s1/numbers"),
    ("DELETE", "/api/admin/stores/s1/numbers/0501"),
    ("GET", "/api/admin/stores/s1/tokens"),
    ("POST", "/api/admin/stores/s1/tokens"),
    ("DELETE", "/api/admin/tokens/tok_000000000000"),
    ("GET", "/api/admin/instances"),
    ("GET", "/api/admin/calls"),
    ("GET", "/api/admin/calls/x1"),
    ("GET", "/api/admin/events"),
];

async fn refuses_without_the_admin_token(backend: Backend) {
    // Every attempt answered 401 (not refused as guessing after ten).
    let ctx = Ctx::with(backend, |c| c.server.auth_fail_limit = 0).await;
    let body = || {
        Some((
            "application/json",
            json!({"slug": "zz", "name": "Z"}).to_string(),
        ))
    };
    for (method, path) in ROUTES {
        for token in [None, Some("wrong"), Some(""), Some("admin-secret-9f3")] {
            let (code, _) = ctx.send(method, path, token, body()).await;
            assert_eq!(code, 401, "{method} {path} with {token:?}");
        }
    }
    // Nothing was created by those attempts.
    let (_, list) = ctx.get("/api/admin/stores").await;
    assert_eq!(list, json!([]));
    ctx.cleanup().await;
}
on_both_databases!(
    without_or_with_a_wrong_token,
    refuses_without_the_admin_token
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_404_while_admin_token_is_unset() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = common::start(common::config_for(db.url())).await;
    for (method, path) in ROUTES {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = common::http()
            .request(method, format!("{}{path}", common::base(server.addr)))
            .bearer_auth("")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    let _ = server.stop().await;
    db.cleanup().await;
}

async fn stores_and_numbers(backend: Backend) {
    let ctx = Ctx::new(backend).await;
    let (code, s) = ctx
        .post(
            "/api/admin/stores",
            json!({"slug": "gangnam", "name": "  강남 세차  ", "numbers": ["050-1111-2222", "05011112222", "0212345678"]}),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["name"], "강남 세차");
    assert_eq!(
        s["numbers"],
        json!(["0212345678", "05011112222"]),
        "deduplicated digits"
    );
    assert_eq!(s["tabletsOnline"], 0);
    assert_eq!(s["lastCallAt"], Value::Null);

    // What the CLI refuses, with the field named.
    for (body, code, field) in [
        (json!({"slug": "gangnam", "name": "x"}), 409, "slug"),
        (
            json!({"slug": "other", "name": "x", "numbers": ["0501111-2222"]}),
            409,
            "number",
        ),
        (json!({"slug": "Bad Slug", "name": "x"}), 422, "slug"),
        (json!({"slug": "-lead", "name": "x"}), 422, "slug"),
        (json!({"slug": "a".repeat(64), "name": "x"}), 422, "slug"),
        (json!({"slug": "ok", "name": "   "}), 422, "name"),
        (json!({"slug": "ok", "name": "n".repeat(201)}), 422, "name"),
        (
            json!({"slug": "ok", "name": "x", "numbers": ["12ab"]}),
            422,
            "numbers",
        ),
        (
            json!({"slug": "ok", "name": "x", "numbers": ["1".repeat(21)]}),
            422,
            "numbers",
        ),
        (
            json!({"slug": "ok", "name": "x", "numbers": "0501"}),
            422,
            "numbers",
        ),
        (
            json!({"slug": "ok", "name": "x", "numbers": [5]}),
            422,
            "numbers",
        ),
        (
            json!({"slug": "ok", "name": "x", "numbers": vec!["1"; 51]}),
            422,
            "numbers",
        ),
        (json!({"slug": 7, "name": "x"}), 422, "slug"),
        (
            json!({"slug": "ok'); DROP TABLE stores;--", "name": "x"}),
            422,
            "slug",
        ),
    ] {
        let (got, err) = ctx.post("/api/admin/stores", body.clone()).await;
        assert_eq!(got, code, "{body} → {err}");
        assert_eq!(err["field"], field, "{body} → {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (_, err) = ctx
        .post(
            "/api/admin/stores",
            json!({"slug": "other", "name": "x", "numbers": ["05011112222"]}),
        )
        .await;
    assert_eq!(
        err["error"], "number 05011112222 is already registered to store gangnam",
        "the CLI's message"
    );
    // Malformed, the wrong type, oversized, a duplicated key.
    for (ct, body, code) in [
        ("application/json", "{".to_string(), 422),
        ("application/json", "[1,2]".to_string(), 422),
        ("application/json", "null".to_string(), 422),
        (
            "text/plain",
            json!({"slug": "ok", "name": "x"}).to_string(),
            415,
        ),
        (
            "application/json",
            json!({"slug": "ok", "name": "x".repeat(17 * 1024)}).to_string(),
            413,
        ),
    ] {
        let (got, _) = ctx
            .send(
                "POST",
                "/api/admin/stores",
                Some(ADMIN),
                Some((ct, body.clone())),
            )
            .await;
        assert_eq!(got, code, "{ct} {}", &body[..body.len().min(60)]);
    }
    let (code, s) = ctx
        .send(
            "POST",
            "/api/admin/stores",
            Some(ADMIN),
            Some((
                "application/json",
                r#"{"slug":"dup","slug":"dup2","name":"D"}"#.into(),
            )),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(
        s["slug"], "dup2",
        "the last of a repeated key, as JSON parsers do"
    );
    let (_, list) = ctx.get("/api/admin/stores").await;
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        ["dup2", "gangnam"],
        "refused requests created nothing"
    );

    // Edit the name; add and remove numbers.
    let (code, s) = ctx
        .send(
            "PATCH",
            "/api/admin/stores/gangnam",
            Some(ADMIN),
            Some((
                "application/json",
                json!({"name": "Gangnam Wash"}).to_string(),
            )),
        )
        .await;
    assert_eq!((code, &s["name"]), (200, &json!("Gangnam Wash")));
    let (code, _) = ctx
        .send(
            "PATCH",
            "/api/admin/stores/nope",
            Some(ADMIN),
            Some(("application/json", json!({"name": "x"}).to_string())),
        )
        .await;
    assert_eq!(code, 404);
    let (code, s) = ctx
        .post(
            "/api/admin/stores/gangnam/numbers",
            json!({"number": "050-9999-0000"}),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    assert!(s["numbers"]
        .as_array()
        .unwrap()
        .contains(&json!("05099990000")));
    let (code, err) = ctx
        .post(
            "/api/admin/stores/dup2/numbers",
            json!({"number": "05099990000"}),
        )
        .await;
    assert_eq!(
        (code, err["field"].as_str()),
        (409, Some("number")),
        "{err}"
    );
    let (code, _) = ctx
        .post(
            "/api/admin/stores/gangnam/numbers",
            json!({"number": "call me"}),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = ctx
        .post("/api/admin/stores/gangnam/numbers", json!({}))
        .await;
    assert_eq!(code, 422);
    let (code, _) = ctx
        .post("/api/admin/stores/nope/numbers", json!({"number": "0509"}))
        .await;
    assert_eq!(code, 404);
    let (code, s) = ctx
        .send(
            "DELETE",
            "/api/admin/stores/gangnam/numbers/050-9999-0000",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert!(!s["numbers"]
        .as_array()
        .unwrap()
        .contains(&json!("05099990000")));
    let (code, _) = ctx
        .send(
            "DELETE",
            "/api/admin/stores/gangnam/numbers/05099990000",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 404, "already gone");
    let (code, _) = ctx
        .send(
            "DELETE",
            "/api/admin/stores/gangnam/numbers/%3Cscript%3E",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 422);

    // Removal says what goes; calls stay.
    let token = ctx
        .post("/api/admin/stores/dup2/tokens", json!({"label": "desk"}))
        .await
        .1;
    assert!(token["token"].as_str().is_some());
    let (code, show) = ctx.get("/api/admin/stores/dup2").await;
    assert_eq!(code, 200);
    assert_eq!(
        show["removal"],
        json!({"numbers": 0, "activeTokens": 1, "callsKept": 0})
    );
    let (code, gone) = ctx
        .send("DELETE", "/api/admin/stores/dup2", Some(ADMIN), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(gone["activeTokens"], 1);
    assert_eq!(ctx.get("/api/admin/stores/dup2").await.0, 404);
    assert_eq!(
        ctx.send("DELETE", "/api/admin/stores/dup2", Some(ADMIN), None)
            .await
            .0,
        404
    );
    let (code, _) = ctx
        .get(&format!("/api/admin/stores/{}", "%00".repeat(50)))
        .await;
    assert_eq!(code, 404);
    ctx.cleanup().await;
}
on_both_databases!(stores, stores_and_numbers);

/// Reads a server-sent event stream until `want` appears in it.
async fn sse_until(resp: &mut reqwest::Response, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(want) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in the stream: {seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn tokens_calls_and_trail(backend: Backend) {
    let ctx = Ctx::new(backend).await;
    let base = common::base(ctx.server.addr);
    ctx.post(
        "/api/admin/stores",
        json!({"slug": "s1", "name": "S1", "numbers": ["0501"]}),
    )
    .await;
    ctx.post(
        "/api/admin/stores",
        json!({"slug": "s2", "name": "S2", "numbers": ["0502"]}),
    )
    .await;
    let mut events = common::http()
        .get(ctx.url("/api/admin/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = String::new();
    sse_until(&mut events, &mut stream, "event: presence").await;

    // Issue: the token once, its sign-in address, and that as a QR code.
    for (body, field) in [
        (json!({"label": "x".repeat(201)}), "label"),
        (json!({"label": "x", "base": "javascript:alert(1)"}), "base"),
        (
            json!({"label": "x", "base": "https://evil.example/?q=1"}),
            "base",
        ),
        (
            json!({"label": "x", "base": "https://u:p@evil.example"}),
            "base",
        ),
        (json!({"label": 5}), "label"),
    ] {
        let (code, err) = ctx.post("/api/admin/stores/s1/tokens", body.clone()).await;
        assert_eq!((code, err["field"].as_str()), (422, Some(field)), "{body}");
    }
    let (code, _) = ctx
        .post("/api/admin/stores/nope/tokens", json!({"label": "x"}))
        .await;
    assert_eq!(code, 404);
    let (_, list) = ctx.get("/api/admin/stores/s1/tokens").await;
    assert_eq!(list, json!([]), "refused requests issued nothing");
    let (code, issued) = ctx
        .post(
            "/api/admin/stores/s1/tokens",
            json!({"label": "프런트", "base": "https://bizcall.example.com/"}),
        )
        .await;
    assert_eq!(code, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert_eq!(
        issued["tabletUrl"],
        format!("https://bizcall.example.com/tablet#token={token}")
    );
    assert!(issued["qrSvg"].as_str().unwrap().contains("<svg"));
    let row = ctx.token_row("s1", &id).await;
    assert_eq!(row["label"], "프런트");
    assert_eq!(row["online"], 0);
    assert!(
        row.get("token").is_none(),
        "a token is shown only when issued"
    );
    assert!(!row.to_string().contains(&token));

    // A tablet signs in: online across the cluster (here, one instance).
    let mut tablet = Client::open(&format!("ws://{}/ws", ctx.server.addr), None, None).await;
    tablet.connect(&token).await;
    tablet.subscribe("s1", "sub-0", "client-individual").await;
    common::eventually(Duration::from_secs(20), "tablet online", || async {
        ctx.store("s1").await["tabletsOnline"] == 1
    })
    .await;
    let row = ctx.token_row("s1", &id).await;
    assert_eq!(row["online"], 1);
    assert!(row["lastSeenAt"].is_string(), "{row}");
    assert_eq!(
        row["instances"][0]["id"],
        ctx.server.app.identity.id.as_str()
    );
    sse_until(&mut events, &mut stream, r#""s1":1"#).await;

    // A call arrives: its trail fills in up to the first ACK.
    let cdr = |seq: &'static str, vn: &'static str| {
        vec![
            ("seq", seq),
            ("sdt", "20261122101500"),
            ("fromn", "01012345678"),
            ("ton", "0211112222"),
            ("vn", vn),
        ]
    };
    assert_eq!(common::post_cdr(&base, &cdr("c1", "0501")).await, 200);
    sse_until(&mut events, &mut stream, r#""callId":"c1""#).await;
    let msg = tablet.expect("MESSAGE").await;
    assert_eq!(msg.json()["callId"], "c1");
    let trail = |seq: &'static str| {
        let ctx = &ctx;
        async move {
            let (code, t) = ctx.get(&format!("/api/admin/calls/{seq}")).await;
            assert_eq!(code, 200, "{t}");
            t
        }
    };
    common::eventually(Duration::from_secs(20), "trail shows delivery", || async {
        trail("c1").await["trail"]["verdict"] == "shown-not-acknowledged"
    })
    .await;
    let t = trail("c1").await;
    let me = &t["trail"]["instances"][0];
    assert_eq!(me["instance"], ctx.server.app.identity.id.as_str());
    assert!(
        me["receivedAt"].is_string() && me["publishedAt"].is_string(),
        "{t}"
    );
    assert_eq!(me["tablets"], 1);
    assert_eq!(me["outcome"], "delivered");
    assert_eq!(me["shownOn"][0]["label"], "프런트");
    assert_eq!(t["trail"]["published"], true);
    assert_eq!(
        t["call"]["callerNumber"], "01012345678",
        "the console is not masked"
    );
    let ack_id = msg.get("ack").unwrap().to_string();
    tablet.send_raw(&format!("ACK\nid:{ack_id}\n\n\0")).await;
    common::eventually(Duration::from_secs(20), "trail shows the ACK", || async {
        trail("c1").await["trail"]["verdict"] == "acknowledged"
    })
    .await;
    let t = trail("c1").await;
    assert_eq!(t["trail"]["firstAck"]["label"], "프런트");
    assert_eq!(t["trail"]["firstAck"]["tokenId"], id.as_str());

    // A call for a store with no tablet says why no popup came.
    assert_eq!(common::post_cdr(&base, &cdr("c2", "0502")).await, 200);
    common::eventually(Duration::from_secs(20), "no tablet online", || async {
        trail("c2").await["trail"]["verdict"] == "no-tablet-online"
    })
    .await;

    // The call list: all, per store, by status and day; hostile filters.
    let (_, all) = ctx.get("/api/admin/calls").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, one) = ctx.get("/api/admin/calls?store=s2").await;
    assert_eq!(one[0]["callId"], "c2");
    assert_eq!(one.as_array().unwrap().len(), 1);
    let (_, ringing) = ctx
        .get("/api/admin/calls?status=ringing&date=2026-11-22")
        .await;
    assert_eq!(ringing.as_array().unwrap().len(), 2);
    let (_, other_day) = ctx.get("/api/admin/calls?date=2026-11-23").await;
    assert_eq!(other_day, json!([]));
    let (_, done) = ctx.get("/api/admin/calls?status=completed").await;
    assert_eq!(done, json!([]));
    for q in [
        "status=bogus",
        "date=2026-13-01",
        "date=yesterday",
        "limit=0",
        "limit=501",
        "limit=-1",
        "store=s1'%20OR%20'1'='1",
        "store=S1",
    ] {
        let (code, err) = ctx.get(&format!("/api/admin/calls?{q}")).await;
        assert_eq!(code, 422, "{q}: {err}");
    }
    assert_eq!(ctx.get("/api/admin/calls/nope").await.0, 404);
    assert_eq!(
        ctx.get(&format!("/api/admin/calls/{}", "9".repeat(1000)))
            .await
            .0,
        404
    );
    let (code, st) = ctx.get("/api/admin/stores").await;
    assert_eq!(code, 200);
    assert!(st[0]["lastCallAt"].is_string(), "{st}");

    // Revoke: the tablet drops within seconds, and goes offline.
    let (code, _) = ctx
        .send(
            "DELETE",
            &format!("/api/admin/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert!(
        tablet.closed_within(Duration::from_secs(30)).await,
        "revoked tablet closed"
    );
    common::eventually(Duration::from_secs(20), "tablet offline", || async {
        ctx.store("s1").await["tabletsOnline"] == 0
    })
    .await;
    assert!(ctx.token_row("s1", &id).await["revokedAt"].is_string());
    let (code, _) = ctx
        .send("DELETE", "/api/admin/tokens/tok_nope", Some(ADMIN), None)
        .await;
    assert_eq!(code, 404);
    ctx.cleanup().await;
}
on_both_databases!(tokens_and_trail, tokens_calls_and_trail);

/// Three `bizcall serve` processes on one PostgreSQL and RabbitMQ: each
/// counts the tablets of all; a SIGKILLed one's tablets drop out once its
/// last heart-beat is older than the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_a_killed_instance_drops_out() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = Broker::new();
    let mut env = broker.env();
    env.push(("BIZCALL_DATABASE__URL".into(), db.url().to_string()));
    env.push(("BIZCALL_ADMIN__TOKEN".into(), ADMIN.into()));
    let (code, _, err) = common::run_cli(
        &["store", "add", "p1", "--name", "P1", "--number", "0503"],
        &common::env_refs(&env),
    );
    assert_eq!(code, 0, "{err}");
    let (_, token, _) = common::run_cli(
        &["token", "issue", "p1", "--label", "bay"],
        &common::env_refs(&env),
    );
    let token = token.trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance::spawn(dir.path(), &common::env_refs(&env)))
        .collect();
    let admin_get = |url: String| async move { common::get_json(&url, ADMIN).await };
    let online = |base: String| async move {
        let list = admin_get(format!("{base}/api/admin/stores")).await;
        list[0]["tabletsOnline"].as_i64().unwrap()
    };
    // One tablet on instance 0, two on instance 1; instance 2 has none.
    let mut tablets = Vec::new();
    for i in [0, 1, 1] {
        let mut t = Client::open(&format!("ws://{}/ws", instances[i].addr), None, None).await;
        t.connect(&token).await;
        tablets.push(t);
    }
    let third = instances[2].base();
    common::eventually(
        Duration::from_secs(30),
        "3 tablets online on instance 2",
        || {
            let f = online(third.clone());
            async move { f.await == 3 }
        },
    )
    .await;
    let listed = admin_get(format!("{third}/api/admin/instances")).await;
    assert_eq!(listed["instances"].as_array().unwrap().len(), 3, "{listed}");
    let stale = listed["staleAfterSeconds"].as_i64().unwrap();
    assert_eq!(stale, bizcall::presence::STALE.as_secs() as i64);

    // A call received by instance 2 for the store whose tablets (all
    // subscribed) are on instances 0 and 1: its trail has a row for the
    // instance that received it and one for each that showed it.
    for t in tablets.iter_mut() {
        t.subscribe("p1", "0", "auto").await;
    }
    let call = [
        ("seq", "trail-3"),
        ("sdt", "20261122101500"),
        ("fromn", "01012345678"),
        ("ton", "0200000000"),
        ("vn", "0503"),
    ];
    assert_eq!(common::post_cdr(&third, &call).await, 200);
    for t in tablets.iter_mut() {
        assert_eq!(t.expect("MESSAGE").await.json()["callId"], "trail-3");
    }
    let trail_of = |seq: &'static str| admin_get(format!("{third}/api/admin/calls/{seq}"));
    let outcomes = |t: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = t["trail"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["instance"].as_str().unwrap().to_string(),
                    r["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    // `listed` came from instance 2, the one that receives the calls.
    let receiver = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["self"] == true)
        .and_then(|i| i["id"].as_str())
        .unwrap()
        .to_string();
    common::eventually(Duration::from_secs(20), "the trail's 3 rows", || async {
        outcomes(&trail_of("trail-3").await).len() == 3
    })
    .await;
    let t = trail_of("trail-3").await;
    let rows = outcomes(&t);
    let by_outcome = |o: &str| rows.iter().filter(|(_, x)| x == o).count();
    assert_eq!(by_outcome("delivered"), 2, "{t}");
    assert_eq!(by_outcome("no-tablet"), 1, "{t}");
    assert!(
        rows.contains(&(receiver.clone(), "no-tablet".into())),
        "{t}"
    );
    // A store with no tablet anywhere: only the receiving instance writes
    // a row (the others keep their "no tablet here" in memory), and the
    // verdict says why no popup came.
    let (code, _, err) = common::run_cli(
        &["store", "add", "p2", "--name", "P2", "--number", "0504"],
        &common::env_refs(&env),
    );
    assert_eq!(code, 0, "{err}");
    let mut lonely = call;
    lonely[0] = ("seq", "trail-none");
    lonely[4] = ("vn", "0504");
    assert_eq!(common::post_cdr(&third, &lonely).await, 200);
    common::eventually(Duration::from_secs(20), "no tablet online", || async {
        trail_of("trail-none").await["trail"]["verdict"] == "no-tablet-online"
    })
    .await;
    // Past two more trail batches, still only the receiver's row.
    tokio::time::sleep(bizcall::trail::FLUSH_EVERY * 3).await;
    let t = trail_of("trail-none").await;
    assert_eq!(
        outcomes(&t),
        vec![(receiver.clone(), "no-tablet".into())],
        "{t}"
    );

    // A tablet that comes and goes is counted, then no longer counted,
    // by the instance it was on (only the changed count is written).
    let first = instances[0].addr;
    let mut extra = Client::open(&format!("ws://{first}/ws"), None, None).await;
    extra.connect(&token).await;
    common::eventually(Duration::from_secs(30), "4 tablets online", || {
        let f = online(third.clone());
        async move { f.await == 4 }
    })
    .await;
    drop(extra);
    common::eventually(Duration::from_secs(30), "3 tablets online again", || {
        let f = online(third.clone());
        async move { f.await == 3 }
    })
    .await;

    // SIGKILL instance 1: no goodbye, its rows stay, its heart-beat stops.
    let killed = instances.remove(1);
    let pid = killed.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    drop(killed);
    let pool = db.connect().await;
    let bizcall::db::Db::Postgres(pg) = &pool else {
        unreachable!()
    };
    // Its last heart-beat, read once it can no longer change.
    let alive: Vec<String> = {
        let r = admin_get(format!("{third}/api/admin/instances")).await;
        r["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let beats: Vec<(String, i64)> = sqlx::query_as("SELECT id, heartbeat_at FROM instances")
        .fetch_all(pg)
        .await
        .unwrap();
    assert!(alive.len() >= 2);
    // The killed one is the instance whose heart-beat stopped: wait past
    // the bound from the newest heart-beat any instance wrote before the
    // kill, then it must be out.
    let last_before_kill = beats.iter().map(|(_, at)| *at).max().unwrap();
    let out_at = last_before_kill + stale * 1000 + 1000;
    let now = chrono::Utc::now().timestamp_millis();
    if out_at > now {
        tokio::time::sleep(Duration::from_millis((out_at - now) as u64)).await;
    }
    let after = online(third.clone()).await;
    assert_eq!(
        after, 1,
        "the killed instance's 2 tablets are gone {stale} s after its last heart-beat"
    );
    // Its two tablets lost their connection.
    for t in tablets.iter_mut().skip(1) {
        assert!(t.closed_within(Duration::from_secs(10)).await);
    }
    let r = admin_get(format!("{third}/api/admin/instances")).await;
    assert_eq!(r["instances"].as_array().unwrap().len(), 2, "{r}");

    // A graceful stop removes an instance's presence at once.
    instances[0].terminate();
    common::eventually(Duration::from_secs(30), "instance 0's tablet gone", || {
        let f = online(third.clone());
        async move { f.await == 0 }
    })
    .await;
    drop(instances);
    pool.close().await;
    broker.cleanup().await;
    db.cleanup().await;
}

/// The console page is served like the tablet page: the same policy, its
/// script and style as files of this server, nothing inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_has_the_tablet_pages_security_headers() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let r = common::http().get(ctx.url("/admin")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        common::header(&r, "content-security-policy"),
        bizcall::http::pages::TABLET_CSP
    );
    assert_eq!(common::header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(common::header(&r, "referrer-policy"), "no-referrer");
    let html = r.text().await.unwrap();
    for s in html.split("<script").skip(1) {
        let tag = s.split('>').next().unwrap();
        assert!(
            tag.contains("src=\"/"),
            "inline or foreign script: <script{tag}>"
        );
        assert!(s.split('>').nth(1).unwrap().starts_with("</script"), "{s}");
    }
    assert!(!html.contains("<style") && !html.contains(" style="));
    assert!(!html.contains(" onclick=") && !html.contains(" onsubmit="));
    for (path, kind) in [("/admin.js", "text/javascript"), ("/admin.css", "text/css")] {
        let r = common::http().get(ctx.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(
            common::header(&r, "content-type").starts_with(kind),
            "{path}"
        );
        assert_eq!(common::header(&r, "x-content-type-options"), "nosniff");
    }
    // The script builds the page from text only: no HTML from the API.
    let js = common::get_text(&ctx.url("/admin.js")).await;
    assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML"));
    ctx.cleanup().await;
}

/// The revocation check asks about the tokens it is given, on both
/// databases: revoked ones, ones whose store was removed and unknown ones
/// come back; live ones (and live tokens it was not asked about) do not.
async fn revocation_check_reads_the_given_tokens(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = test_db.connect().await;
    db.store_add("wash-rv", "Wash RV", &["05011110001".into()])
        .await
        .unwrap();
    db.store_add("wash-gone", "Wash Gone", &["05011110002".into()])
        .await
        .unwrap();
    let (live, _) = db.token_issue("wash-rv", "front").await.unwrap();
    let (other_live, _) = db.token_issue("wash-rv", "back").await.unwrap();
    let (revoked, _) = db.token_issue("wash-rv", "old").await.unwrap();
    let (of_gone_store, _) = db.token_issue("wash-gone", "front").await.unwrap();
    assert!(db.token_revoke(&revoked).await.unwrap());
    assert!(db.store_remove("wash-gone").await.unwrap());

    let asked = vec![
        live.clone(),
        revoked.clone(),
        of_gone_store.clone(),
        "no-such-token".to_string(),
        "x' OR '1'='1".to_string(),
    ];
    let mut dead = db.tokens_not_live(&asked).await.unwrap();
    dead.sort();
    let mut want = vec![
        revoked,
        of_gone_store,
        "no-such-token".to_string(),
        "x' OR '1'='1".to_string(),
    ];
    want.sort();
    assert_eq!(dead, want);
    assert!(!dead.contains(&other_live));
    assert!(db.tokens_not_live(&[]).await.unwrap().is_empty());
    // More ids than one statement carries.
    let many: Vec<String> = (0..12_000)
        .map(|i| format!("t-{i}"))
        .chain([live.clone()])
        .collect();
    let dead = db.tokens_not_live(&many).await.unwrap();
    assert_eq!(dead.len(), 12_000);
    assert!(!dead.contains(&live));
    db.close().await;
    test_db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_check_reads_the_given_tokens_on_sqlite() {
    revocation_check_reads_the_given_tokens(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_check_reads_the_given_tokens_on_postgresql() {
    revocation_check_reads_the_given_tokens(Backend::Postgres).await;
}
