//! The HTTP API: auth, the call list, reservations, admin, health and
//! metrics, on SQLite and PostgreSQL.

mod common;

use common::{Backend, TestDb};
use serde_json::{json, Value};

struct Ctx {
    db: TestDb,
    server: bizcall::server::Server,
    token_a: String,
    token_b: String,
}

async fn setup(backend: Backend) -> Ctx {
    let db = TestDb::new(backend).await;
    let mut config = common::config_for(db.url());
    config.admin.token = "admin-secret".into();
    let server = common::start(config).await;
    let app = &server.app;
    app.db
        .store_add("a", "Store A", &["0501".into()])
        .await
        .unwrap();
    app.db
        .store_add("b", "Store B", &["0502".into()])
        .await
        .unwrap();
    let token_a = app.db.token_issue("a", "t").await.unwrap().1;
    let token_b = app.db.token_issue("b", "t").await.unwrap().1;
    Ctx {
        db,
        server,
        token_a,
        token_b,
    }
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", common::base(self.server.addr))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = common::http().get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn reserve(&self, token: &str, body: &str) -> (u16, Value) {
        let r = common::http()
            .post(self.url("/api/stores/a/reservations"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.cleanup().await;
    }
}

async fn call_list(backend: Backend) {
    let ctx = setup(backend).await;
    for (seq, sdt) in [
        ("c1", "20261122090000"),
        ("c2", "20261122100000"),
        ("c3", "20261122110000"),
    ] {
        let code = common::post_cdr(
            &common::base(ctx.server.addr),
            &[
                ("seq", seq),
                ("sdt", sdt),
                ("fromn", "010-1111-2222"),
                ("ton", "02"),
                ("vn", "0501"),
            ],
        )
        .await;
        assert_eq!(code, 200);
    }
    common::post_cdr(
        &common::base(ctx.server.addr),
        &[
            ("seq", "other"),
            ("sdt", "20261122100000"),
            ("fromn", "0101"),
            ("ton", "02"),
            ("vn", "0502"),
        ],
    )
    .await;

    let (code, list) = ctx.get("/api/stores/a/calls", Some(&ctx.token_a)).await;
    assert_eq!(code, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c3", "c2", "c1"], "newest first, only this store's");
    let first = &list[0];
    assert_eq!(first["type"], "call");
    assert_eq!(first["store"], "a");
    assert_eq!(first["status"], "ringing");
    assert_eq!(first["callerNumber"], "01011112222");
    assert_eq!(first["startedAt"], "2026-11-22T11:00:00+09:00");
    assert_eq!(first["acknowledged"], false);
    assert_eq!(first["acknowledgedAt"], Value::Null);

    let (_, list) = ctx
        .get(
            "/api/stores/a/calls?since=2026-11-22T10:00:00%2B09:00&limit=1",
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["callId"], "c3");
    let (_, list) = ctx
        .get(
            "/api/stores/a/calls?since=2026-11-22T01:00:00Z",
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
    ] {
        let (code, body) = ctx
            .get(&format!("/api/stores/a/calls?{query}"), Some(&ctx.token_a))
            .await;
        assert_eq!(code, 422, "{query}");
        assert_eq!(body["field"], field, "{query}");
        assert!(body["error"].is_string());
    }
    // Auth: none, unknown, another store's token.
    assert_eq!(ctx.get("/api/stores/a/calls", None).await.0, 401);
    assert_eq!(
        ctx.get("/api/stores/a/calls", Some("bzc_forged")).await.0,
        401
    );
    assert_eq!(
        ctx.get("/api/stores/a/calls", Some(&ctx.token_b)).await.0,
        403
    );
    assert_eq!(
        ctx.get("/api/stores/nosuch/calls", Some(&ctx.token_a))
            .await
            .0,
        403
    );
    ctx.finish().await;
}
on_both_databases!(calls, call_list);

async fn reservations(backend: Backend) {
    let ctx = setup(backend).await;
    common::post_cdr(
        &common::base(ctx.server.addr),
        &[
            ("seq", "rc1"),
            ("sdt", "20261122090000"),
            ("fromn", "0101"),
            ("ton", "02"),
            ("vn", "0501"),
        ],
    )
    .await;
    common::post_cdr(
        &common::base(ctx.server.addr),
        &[
            ("seq", "rcb"),
            ("sdt", "20261122090000"),
            ("fromn", "0101"),
            ("ton", "02"),
            ("vn", "0502"),
        ],
    )
    .await;
    let body = json!({
        "callId": "rc1", "customerNumber": "010-1234-5678", "carNumber": "12가3456",
        "carModel": "Sonata", "service": "full wash", "reservedAt": "2026-11-23T14:00:00+09:00",
        "memo": "세차 예약"
    });
    let (code, r) = ctx.reserve(&ctx.token_a, &body.to_string()).await;
    assert_eq!(code, 201, "{r}");
    assert!(r["id"].as_i64().unwrap() > 0);
    assert_eq!(r["customerNumber"], "01012345678");
    assert_eq!(r["carNumber"], "12가3456");
    assert_eq!(r["reservedAt"], "2026-11-23T14:00:00+09:00");
    assert_eq!(r["callId"], "rc1");
    let (code, _) = ctx
        .reserve(
            &ctx.token_a,
            r#"{"customerNumber":"0101","reservedAt":"2026-11-23T23:30:00+09:00"}"#,
        )
        .await;
    assert_eq!(code, 201);
    // Late on the 23rd in Korea is still the 23rd; the 24th is empty.
    let (code, list) = ctx
        .get(
            "/api/stores/a/reservations?date=2026-11-23",
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, list) = ctx
        .get(
            "/api/stores/a/reservations?date=2026-11-24",
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    let (_, list) = ctx
        .get(
            "/api/stores/b/reservations?date=2026-11-23",
            Some(&ctx.token_b),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 0, "another store sees none");
    let (code, body) = ctx
        .get(
            "/api/stores/a/reservations?date=23-11-2026",
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!((code, body["field"].as_str()), (422, Some("date")));

    let bad: Vec<(String, &str)> = vec![
        ("{}".into(), "customerNumber"),
        (
            r#"{"customerNumber":"abc","reservedAt":"2026-11-23T14:00:00+09:00"}"#.into(),
            "customerNumber",
        ),
        (
            r#"{"customerNumber":12,"reservedAt":"2026-11-23T14:00:00+09:00"}"#.into(),
            "customerNumber",
        ),
        (r#"{"customerNumber":"0101"}"#.into(), "reservedAt"),
        (
            r#"{"customerNumber":"0101","reservedAt":"tomorrow"}"#.into(),
            "reservedAt",
        ),
        (
            format!(
                r#"{{"customerNumber":"0101","reservedAt":"2026-11-23T14:00:00Z","memo":"{}"}}"#,
                "m".repeat(1001)
            ),
            "memo",
        ),
        (
            r#"{"customerNumber":"0101","reservedAt":"2026-11-23T14:00:00Z","carModel":[1]}"#
                .into(),
            "carModel",
        ),
        (
            r#"{"customerNumber":"0101","reservedAt":"2026-11-23T14:00:00Z","callId":"nope"}"#
                .into(),
            "callId",
        ),
        (
            r#"{"customerNumber":"0101","reservedAt":"2026-11-23T14:00:00Z","callId":"rcb"}"#
                .into(),
            "callId",
        ),
        ("[1,2]".into(), "body"),
        ("{not json".into(), "body"),
    ];
    for (body, field) in bad {
        let (code, resp) = ctx.reserve(&ctx.token_a, &body).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(resp["field"], field, "{body}");
    }
    let r = common::http()
        .post(ctx.url("/api/stores/a/reservations"))
        .bearer_auth(&ctx.token_a)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (code, _) = ctx
        .reserve(
            &ctx.token_a,
            &format!("{{\"memo\":\"{}\"}}", "x".repeat(17 * 1024)),
        )
        .await;
    assert_eq!(code, 413);
    let (code, _) = ctx
        .reserve(
            &ctx.token_b,
            r#"{"customerNumber":"0101","reservedAt":"2026-11-23T14:00:00Z"}"#,
        )
        .await;
    assert_eq!(code, 403);
    ctx.finish().await;
}
on_both_databases!(reservation, reservations);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_metrics_and_page() {
    let ctx = setup(Backend::Sqlite).await;
    assert_eq!(ctx.get("/api/admin/stores", None).await.0, 401);
    assert_eq!(ctx.get("/api/admin/stores", Some("wrong")).await.0, 401);
    let (code, stores) = ctx.get("/api/admin/stores", Some("admin-secret")).await;
    assert_eq!(code, 200);
    assert_eq!(stores[0]["slug"], "a");
    assert_eq!(stores[0]["numbers"][0], "0501");
    assert_eq!(stores[0]["tabletsHere"], 0);

    let r = common::http()
        .get(ctx.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (code, ready) = ctx.get("/readyz", None).await;
    assert_eq!(code, 200);
    assert_eq!(ready["database"], "up");
    assert_eq!(ready["bus"], "up");

    common::post_cdr(
        &common::base(ctx.server.addr),
        &[
            ("seq", "m1"),
            ("sdt", "20261122090000"),
            ("fromn", "0101"),
            ("ton", "02"),
            ("vn", "0501"),
        ],
    )
    .await;
    let text = common::http()
        .get(ctx.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "bizcall_cdr_received_total",
        "bizcall_calls_total",
        "bizcall_events_published_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let page = common::http().get(ctx.url("/tablet")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<html") && !html.contains("http://") && !html.contains("https://"),
        "self-contained page"
    );
    ctx.finish().await;

    // Admin endpoints are off without a token configured.
    let db = TestDb::new(Backend::Sqlite).await;
    let server = common::start(common::config_for(db.url())).await;
    let r = common::http()
        .get(format!("{}/api/admin/stores", common::base(server.addr)))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    server.stop().await.unwrap();
    db.cleanup().await;
}
