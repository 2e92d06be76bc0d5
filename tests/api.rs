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

/// A missed call's follow-up: a tablet says it called the customer back;
/// the first note stands, the list shows who and when, and another store's
/// token, a missing token and an unknown call are refused.
async fn call_back(backend: Backend) {
    let ctx = setup(backend).await;
    let base = common::base(ctx.server.addr);
    let missed = [
        ("seq", "cb-1"),
        ("sdt", "20261122101500"),
        ("edt", "20261122101530"),
        ("fromn", "010-3333-4444"),
        ("ton", "02"),
        ("vn", "0501"),
    ];
    assert_eq!(common::post_cdr(&base, &missed).await, 200);
    let back = |token: Option<String>, seq: &'static str| {
        let url = ctx.url(&format!("/api/stores/a/calls/{seq}/callback"));
        async move {
            let mut req = common::http().post(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, list) = ctx.get("/api/stores/a/calls", Some(&ctx.token_a)).await;
    assert_eq!(list[0]["status"], "missed");
    assert_eq!(list[0]["calledBackAt"], Value::Null);

    assert_eq!(back(None, "cb-1").await.0, 401);
    assert_eq!(back(Some(ctx.token_b.clone()), "cb-1").await.0, 403);
    assert_eq!(back(Some(ctx.token_a.clone()), "nosuch").await.0, 404);
    let (code, call) = back(Some(ctx.token_a.clone()), "cb-1").await;
    assert_eq!(code, 200, "{call}");
    assert_eq!(call["calledBackBy"], "t");
    let first_at = call["calledBackAt"].as_str().unwrap().to_string();
    // A second tablet's note does not move the first.
    let second = ctx.server.app.db.token_issue("a", "bay 2").await.unwrap().1;
    let (code, again) = back(Some(second), "cb-1").await;
    assert_eq!(code, 200);
    assert_eq!(again["calledBackBy"], "t");
    assert_eq!(again["calledBackAt"], first_at.as_str());
    let (_, list) = ctx.get("/api/stores/a/calls", Some(&ctx.token_a)).await;
    assert_eq!(list[0]["calledBackBy"], "t");
    assert_eq!(list[0]["calledBackAt"], first_at.as_str());
    ctx.finish().await;
}

on_both_databases!(calls_called_back, call_back);

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

/// The popup's history: earlier calls from a number, the last reservation;
/// and the store's name for the page's header.
async fn customer_history(backend: Backend) {
    let ctx = setup(backend).await;
    let base = common::base(ctx.server.addr);
    for (seq, sdt, from, vn) in [
        ("k1", "20261120090000", "010-7777-8888", "0501"),
        ("k2", "20261121100000", "010-7777-8888", "0501"),
        ("k3", "20261122110000", "010-7777-8888", "0501"),
        ("k4", "20261122110000", "010-1111-0000", "0501"),
        ("kb", "20261122120000", "010-7777-8888", "0502"),
    ] {
        let fields = [
            ("seq", seq),
            ("sdt", sdt),
            ("fromn", from),
            ("ton", "02"),
            ("vn", vn),
        ];
        assert_eq!(common::post_cdr(&base, &fields).await, 200);
    }
    for (at, car, service) in [
        ("2026-11-20T10:00:00+09:00", "12가3456", "손세차"),
        ("2026-11-21T15:30:00+09:00", "34나5678", "실내 크리닝"),
    ] {
        let body = json!({"customerNumber": "010-7777-8888", "reservedAt": at,
                          "carNumber": car, "carModel": "쏘나타", "service": service});
        assert_eq!(ctx.reserve(&ctx.token_a, &body.to_string()).await.0, 201);
    }
    // Store B's reservation for the same number is not store A's history.
    let r = common::http()
        .post(ctx.url("/api/stores/b/reservations"))
        .bearer_auth(&ctx.token_b)
        .header("content-type", "application/json")
        .body(r#"{"customerNumber":"01077778888","reservedAt":"2026-11-25T10:00:00+09:00","carNumber":"99다9999"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    // Calls before the popup's own start: k1 and k2 (k3 is the call ringing).
    let before = "before=2026-11-22T11:00:00%2B09:00";
    let (code, c) = ctx
        .get(
            &format!("/api/stores/a/customers/010-7777-8888?{before}"),
            Some(&ctx.token_a),
        )
        .await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["number"], "01077778888");
    assert_eq!(c["calls"], 2, "{c}");
    assert_eq!(c["lastCallAt"], "2026-11-21T10:00:00+09:00");
    assert_eq!(c["reservations"], 2);
    let last = &c["lastReservation"];
    assert_eq!(last["carNumber"], "34나5678", "{c}");
    assert_eq!(last["carModel"], "쏘나타");
    assert_eq!(last["service"], "실내 크리닝");
    assert_eq!(last["reservedAt"], "2026-11-21T15:30:00+09:00");
    // Without `before`: every call of the number to this store.
    let (_, c) = ctx
        .get("/api/stores/a/customers/01077778888", Some(&ctx.token_a))
        .await;
    assert_eq!(c["calls"], 3, "{c}");
    // A stranger: nothing known, still 200.
    let (code, c) = ctx
        .get("/api/stores/a/customers/0212345678", Some(&ctx.token_a))
        .await;
    assert_eq!(code, 200);
    assert_eq!(c["calls"], 0);
    assert_eq!(c["lastCallAt"], Value::Null);
    assert_eq!(c["reservations"], 0);
    assert_eq!(c["lastReservation"], Value::Null);

    // Another store's token: 403; none or a bad one: 401.
    let path = "/api/stores/a/customers/01077778888";
    assert_eq!(ctx.get(path, Some(&ctx.token_b)).await.0, 403);
    assert_eq!(ctx.get(path, None).await.0, 401);
    assert_eq!(ctx.get(path, Some("bzc_nope")).await.0, 401);
    // Store B's own view of the number holds only its own.
    let (_, c) = ctx
        .get("/api/stores/b/customers/01077778888", Some(&ctx.token_b))
        .await;
    assert_eq!(c["calls"], 1, "{c}");
    assert_eq!(c["lastReservation"]["carNumber"], "99다9999");

    // Hostile and malformed numbers and times: 422 naming the field.
    let long = "1".repeat(21);
    let huge = "9".repeat(5000);
    for bad in [
        "abc",
        "1",
        long.as_str(),
        huge.as_str(),
        "010%2712%27%20OR%201=1",
        "%00%00",
        "0101%0A2222",
        "+821077778888",
        "%EF%BC%90%EF%BC%91",
        "..%2F..%2Fetc",
    ] {
        let (code, body) = ctx
            .get(
                &format!("/api/stores/a/customers/{bad}"),
                Some(&ctx.token_a),
            )
            .await;
        assert_eq!(code, 422, "{bad}: {body}");
        assert_eq!(body["field"], "number", "{bad}");
    }
    for bad in ["yesterday", "2026-11-22", "", "2026-13-01T00:00:00Z"] {
        let (code, body) = ctx
            .get(
                &format!("/api/stores/a/customers/0101?before={bad}"),
                Some(&ctx.token_a),
            )
            .await;
        assert_eq!(code, 422, "{bad}: {body}");
        assert_eq!(body["field"], "before");
    }
    // A repeated query key: the first is taken, or refused; never a 500.
    let (code, _) = ctx
        .get(
            "/api/stores/a/customers/0101?before=2026-11-22T00:00:00Z&before=x",
            Some(&ctx.token_a),
        )
        .await;
    assert!(code == 200 || code == 422, "{code}");
    // An unknown slug with a valid token of another store: 403, no leak.
    assert_eq!(
        ctx.get("/api/stores/zz/customers/0101", Some(&ctx.token_a))
            .await
            .0,
        403
    );

    // The store's name, for the page's header; 403 for another store.
    let (code, s) = ctx.get("/api/stores/a", Some(&ctx.token_a)).await;
    assert_eq!(code, 200);
    assert_eq!(s, json!({"slug": "a", "name": "Store A"}));
    assert_eq!(ctx.get("/api/stores/a", Some(&ctx.token_b)).await.0, 403);
    assert_eq!(ctx.get("/api/stores/a", None).await.0, 401);
    ctx.finish().await;
}
on_both_databases!(customer, customer_history);

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
    let text = common::get_text(&ctx.url("/metrics")).await;
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
