//! The CDR callback over real HTTP, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use bizcall::call::{CallEvent, CallStatus};
use bizcall::db::Db;
use common::{Backend, TestDb};
use tokio::sync::broadcast::error::TryRecvError;

const VN: &str = "05011112222";
const TON: &str = "0212345678";

struct Ctx {
    db: TestDb,
    server: bizcall::server::Server,
    url: String,
    events: tokio::sync::broadcast::Receiver<CallEvent>,
}

async fn setup(backend: Backend, tweak: impl FnOnce(&mut bizcall::config::Config)) -> Ctx {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    pool.store_add("gangnam", "Gangnam", &[VN.to_string()])
        .await
        .unwrap();
    pool.store_add("mapo", "Mapo", &[TON.to_string()])
        .await
        .unwrap();
    pool.close().await;
    let mut config = common::config_for(db.url());
    tweak(&mut config);
    let server = common::start(config).await;
    let url = format!("{}/bizcall/cdr", common::base(server.addr));
    let events = server.app.delivery.watch();
    Ctx {
        db,
        server,
        url,
        events,
    }
}

impl Ctx {
    async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.cleanup().await;
    }

    fn store(&self) -> &Db {
        &self.server.app.db
    }

    async fn get(&self, query: &str) -> (u16, String) {
        let r = common::http()
            .get(format!("{}?{query}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = common::http()
            .post(&self.url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The next event this instance received, waiting briefly.
    async fn next_event(&mut self) -> CallEvent {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event")
            .expect("event channel")
    }

    /// Asserts no further event arrives (after the bus has had time to deliver).
    async fn no_more_events(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(self.events.try_recv(), Err(TryRecvError::Empty)));
    }
}

fn q(seq: &str, extra: &str) -> String {
    format!("seq={seq}&sdt=20261122101500&fromn=010-1234-5678&ton={TON}&vn={VN}{extra}")
}

async fn valid_and_invalid_fields(backend: Backend) {
    let mut ctx = setup(backend, |_| {}).await;
    let (code, body) = ctx.get(&q("F1", "")).await;
    assert_eq!((code, body.as_str()), (200, "OK"));
    let ev = ctx.next_event().await;
    assert_eq!(ev.call_id, "F1");
    assert_eq!(ev.store, "gangnam");
    assert_eq!(ev.status, CallStatus::Ringing);
    assert_eq!(ev.caller_number, "01012345678");
    assert_eq!(ev.virtual_number.as_deref(), Some(VN));
    assert_eq!((ev.expires_at - ev.published_at).num_milliseconds(), 30_000);

    let bad: Vec<(String, &str)> = vec![
        (
            format!("sdt=20261122101500&fromn=0101&ton={TON}"),
            "bad request: seq: ",
        ),
        (
            format!("seq=B1&sdt=2026-11-22&fromn=0101&ton={TON}"),
            "bad request: sdt: yyyyMMddHHmmss (Korea time), got \"2026-11-22\"",
        ),
        (
            format!("seq=B1&sdt=20261122101500&fromn=010abcd&ton={TON}"),
            "bad request: fromn: ",
        ),
        (
            format!(
                "seq={}&sdt=20261122101500&fromn=0101&ton={TON}",
                "s".repeat(33)
            ),
            "bad request: seq: ",
        ),
        (
            format!(
                "seq=B1&sdt=20261122101500&fromn=0101&ton={TON}&memo={}",
                "m".repeat(1001)
            ),
            "bad request: memo: ",
        ),
        (
            format!("seq=B1&sdt=20261122101500&fromn=0101&ton={TON}&edt=2026"),
            "bad request: edt: ",
        ),
        (
            format!("seq=B1&sdt=20261122101500&fromn=0101&ton={TON}&swidt=x"),
            "bad request: swidt: ",
        ),
        (
            format!("seq=B1&sdt=20261122101500&fromn=0101&ton={TON}&vn=05O"),
            "bad request: vn: ",
        ),
        (
            "seq=B1&sdt=20261122101500&fromn=0101".to_string(),
            "bad request: ton: ",
        ),
        (
            format!("seq=B1&seq=B2&sdt=20261122101500&fromn=0101&ton={TON}"),
            "bad request: seq: ",
        ),
        (
            format!("seq=B1&sdt=20261122101500&fromn=0101&ton={TON}&memo=%C3%28"),
            "bad request: memo: ",
        ),
    ];
    for (query, prefix) in &bad {
        let (code, body) = ctx.get(query).await;
        assert_eq!(code, 400, "{query} -> {body}");
        assert!(body.starts_with(prefix), "{query} -> {body}");
        assert!(body.contains(", got \""), "{body}");
    }
    // Nothing of the rejected requests was stored.
    assert_eq!(ctx.store().count_calls().await.unwrap(), 1);

    // Boundaries that are valid: 32-char seq, 1000-char memo, Korean memo.
    let long_seq = "S".repeat(32);
    let (code, _) = ctx
        .get(&q(&long_seq, &format!("&memo={}", "m".repeat(1000))))
        .await;
    assert_eq!(code, 200);
    let (code, _) = ctx
        .get(&q(
            "K1",
            "&memo=%EC%84%B8%EC%B0%A8%20%EC%98%88%EC%95%BD&swidt=&edt=",
        ))
        .await;
    assert_eq!(code, 200);
    let memo: String = match ctx.store() {
        Db::Sqlite(p) => sqlx::query_scalar("SELECT extras FROM calls WHERE seq = 'K1'")
            .fetch_one(p)
            .await
            .unwrap(),
        Db::Postgres(p) => sqlx::query_scalar("SELECT extras FROM calls WHERE seq = 'K1'")
            .fetch_one(p)
            .await
            .unwrap(),
    };
    let extras: serde_json::Value = serde_json::from_str(&memo).unwrap();
    assert_eq!(extras["memo"], "세차 예약");
    ctx.finish().await;
}
on_both_databases!(fields, valid_and_invalid_fields);

async fn get_form_and_json(backend: Backend) {
    let mut ctx = setup(backend, |_| {}).await;
    let (code, _) = ctx.get(&q("G1", "")).await;
    assert_eq!(code, 200);
    let (code, body) = ctx
        .post(
            "application/x-www-form-urlencoded; charset=UTF-8",
            q("P1", "&memo=a+b"),
        )
        .await;
    assert_eq!((code, body.as_str()), (200, "OK"));
    let json = format!(
        r#"{{"seq":"J1","sdt":"20261122101500","fromn":"01012345678","ton":"{TON}","vn":"{VN}","unknown":"x"}}"#
    );
    let (code, body) = ctx.post("application/json", json).await;
    assert_eq!((code, body.as_str()), (200, "OK"));
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        ids.push(ctx.next_event().await.call_id);
    }
    ids.sort();
    assert_eq!(ids, ["G1", "J1", "P1"]);

    let (code, body) = ctx.post("application/json", "[\"seq\"]").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("bad request: body: "), "{body}");
    let (code, body) = ctx.post("application/json", r#"{"seq":["A"]}"#).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("bad request: seq: "), "{body}");
    let (code, body) = ctx.post("text/xml", "<cdr/>").await;
    assert_eq!(code, 415, "{body}");
    let (code, _) = ctx
        .post("application/x-www-form-urlencoded", "x".repeat(17 * 1024))
        .await;
    assert_eq!(code, 413);
    let (code, _) = ctx
        .get(&format!("seq=L1&memo={}", "x".repeat(17 * 1024)))
        .await;
    assert_eq!(code, 413);
    assert_eq!(ctx.store().count_calls().await.unwrap(), 3);
    ctx.finish().await;
}
on_both_databases!(encodings, get_form_and_json);

async fn repeats_updates_and_unknown_stores(backend: Backend) {
    let mut ctx = setup(backend, |_| {}).await;
    // A CDR for no registered number: stored, OK, no popup.
    let (code, body) = ctx
        .get("seq=U1&sdt=20261122101500&fromn=0101&ton=0299998888&vn=05099998888")
        .await;
    assert_eq!((code, body.as_str()), (200, "OK"));
    let row = ctx.store().call("U1").await.unwrap().unwrap();
    assert_eq!(row.store, "");
    // Matched by ton when vn is unknown.
    let (code, _) = ctx
        .get("seq=T1&sdt=20261122101500&fromn=0101&ton=02-1234-5678&vn=05099998888")
        .await;
    assert_eq!(code, 200);
    let ev = ctx.next_event().await;
    assert_eq!((ev.call_id.as_str(), ev.store.as_str()), ("T1", "mapo"));

    // The same record twice: one row, one event.
    assert_eq!(ctx.get(&q("R1", "")).await.0, 200);
    assert_eq!(ctx.get(&q("R1", "")).await.0, 200);
    let ev = ctx.next_event().await;
    assert_eq!(
        (ev.call_id.as_str(), ev.status),
        ("R1", CallStatus::Ringing)
    );
    ctx.no_more_events().await;

    // edt and swidt arrive: the row is updated and one more event published.
    let done = "&swidt=20261122101510&edt=20261122102000";
    assert_eq!(ctx.get(&q("R1", done)).await.0, 200);
    let ev = ctx.next_event().await;
    assert_eq!(
        (ev.call_id.as_str(), ev.status),
        ("R1", CallStatus::Completed)
    );
    assert!(ev.ended_at.is_some());
    // A late ringing does not move the status back, and publishes nothing.
    assert_eq!(ctx.get(&q("R1", "")).await.0, 200);
    ctx.no_more_events().await;
    let row = ctx.store().call("R1").await.unwrap().unwrap();
    assert_eq!(row.status, "completed");
    assert_eq!(ctx.store().count_calls().await.unwrap(), 3);

    // An instance stored a CDR and died before publishing it: the
    // provider's retry (a repeat) publishes it, once.
    let params = bizcall::cdr::Params::from_urlencoded(q("D1", "").as_bytes()).unwrap();
    let cdr = bizcall::cdr::Cdr::from_params(&params).unwrap();
    assert!(matches!(
        ctx.store().upsert_call(&cdr).await.unwrap(),
        bizcall::db::Upsert::Changed(_)
    ));
    ctx.no_more_events().await;
    assert_eq!(ctx.get(&q("D1", "")).await.0, 200);
    assert_eq!(ctx.next_event().await.call_id, "D1");
    assert_eq!(ctx.get(&q("D1", "")).await.0, 200);
    ctx.no_more_events().await;
    ctx.finish().await;
}
on_both_databases!(repeats, repeats_updates_and_unknown_stores);

/// A repeated `seq` cannot move a call to another store, make it vanish or
/// change its caller: the first CDR fixes `vn`, `ton`, `fromn`, `sdt` and
/// the store; a disagreeing repeat is `409` and changes nothing, while
/// status updates still apply.
async fn repeats_cannot_rewrite_a_call(backend: Backend) {
    let mut ctx = setup(backend, |_| {}).await;
    ctx.store()
        .store_add("jongno", "Jongno", &["05033334444".to_string()])
        .await
        .unwrap();
    let done = "&swidt=20261122101510&edt=20261122102000";
    assert_eq!(ctx.get(&q("I1", done)).await.0, 200);
    let ev = ctx.next_event().await;
    assert_eq!(
        (ev.store.as_str(), ev.status),
        ("gangnam", CallStatus::Completed)
    );
    assert!(ctx
        .store()
        .acknowledge_call("I1", "gangnam", "tab")
        .await
        .unwrap());
    let before = ctx.store().call("I1").await.unwrap().unwrap();

    let base = format!("sdt=20261122101500&fromn=010-1234-5678&ton={TON}&vn={VN}{done}");
    let attacks = [
        // Another store's vn: would move the call to jongno.
        ("vn", base.replace(VN, "05033334444")),
        // An unknown vn: would take it out of every list.
        ("vn", base.replace(VN, "05099990000")),
        // No vn at all.
        ("vn", base.replace(&format!("&vn={VN}"), "")),
        ("ton", base.replace(TON, "0299990000")),
        ("fromn", base.replace("010-1234-5678", "010-9999-0000")),
        ("sdt", base.replace("20261122101500", "20261122101501")),
    ];
    for (field, query) in &attacks {
        let r = common::http()
            .get(format!("{}?seq=I1&{query}", ctx.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409, "{query}");
        assert!(r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/plain")));
        let body = r.text().await.unwrap();
        assert!(
            body.starts_with(&format!("conflict: {field}: ")),
            "{query}: {body}"
        );
        assert!(!body.contains("1234"), "no number echoed: {body}");
    }
    // A conflicting repeat that also carries a newer status changes nothing.
    let r = ctx.get(&format!("seq=I1&{}&memo=x", attacks[0].1)).await;
    assert_eq!(r.0, 409);
    ctx.no_more_events().await;
    assert_eq!(ctx.store().call("I1").await.unwrap().unwrap(), before);
    let listed = ctx
        .store()
        .calls_for_store("jongno", None, 10)
        .await
        .unwrap();
    assert!(listed.is_empty());

    // Status, swidt, edt and the free text still update under the rank rules.
    assert_eq!(ctx.get(&q("I2", "")).await.0, 200);
    assert_eq!(ctx.next_event().await.status, CallStatus::Ringing);
    assert_eq!(ctx.get(&q("I2", "&swidt=20261122101510")).await.0, 200);
    assert_eq!(ctx.next_event().await.status, CallStatus::Answered);
    assert_eq!(
        ctx.get(&q("I2", &format!("{done}&memo=late&cause=x")))
            .await
            .0,
        200
    );
    let ev = ctx.next_event().await;
    assert_eq!(
        (ev.store.as_str(), ev.status),
        ("gangnam", CallStatus::Completed)
    );
    // A late ringing with the same identity is an ordinary repeat.
    assert_eq!(ctx.get(&q("I2", "")).await.0, 200);
    ctx.no_more_events().await;

    // Concurrent legitimate updates and forged repeats: the forged ones all
    // fail, whatever the interleaving, and the call stays where it was.
    assert_eq!(ctx.get(&q("I3", "")).await.0, 200);
    ctx.next_event().await;
    let client = common::http();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let query = if i % 2 == 0 {
            format!("seq=I3&{}", base.replace(VN, "05033334444"))
        } else {
            q("I3", done)
        };
        let (client, url) = (client.clone(), format!("{}?{query}", ctx.url));
        tasks.push(tokio::spawn(async move {
            (
                i % 2,
                client.get(url).send().await.unwrap().status().as_u16(),
            )
        }));
    }
    for t in tasks {
        let (kind, code) = t.await.unwrap();
        assert_eq!(code, if kind == 0 { 409 } else { 200 });
    }
    let row = ctx.store().call("I3").await.unwrap().unwrap();
    assert_eq!(
        (row.store.as_str(), row.status.as_str()),
        ("gangnam", "completed")
    );
    assert_eq!(row.virtual_number.as_deref(), Some(VN));

    let metrics = common::get_text(&format!("{}/metrics", common::base(ctx.server.addr))).await;
    let conflicts: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bizcall_cdr_received_total{result=\"conflict\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(conflicts >= 37.0, "conflicts counted: {conflicts}");
    ctx.finish().await;
}
on_both_databases!(identity, repeats_cannot_rewrite_a_call);

async fn key_and_allow_from(backend: Backend) {
    let mut ctx = setup(backend, |c| {
        c.webhook.key = "s3cret".into();
    })
    .await;
    assert_eq!(ctx.get(&q("A1", "")).await.0, 401);
    assert_eq!(ctx.get(&q("A1", "&key=wrong")).await.0, 401);
    assert_eq!(ctx.get(&q("A1", "&key=s3cret")).await.0, 200);
    let r = common::http()
        .post(&ctx.url)
        .header("X-Bizcall-Key", "s3cret")
        .form(&[
            ("seq", "A2"),
            ("sdt", "20261122101500"),
            ("fromn", "0101"),
            ("ton", TON),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = common::http()
        .post(&ctx.url)
        .header("X-Bizcall-Key", "nope")
        .form(&[
            ("seq", "A3"),
            ("sdt", "20261122101500"),
            ("fromn", "0101"),
            ("ton", TON),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(ctx.store().count_calls().await.unwrap(), 2);
    ctx.next_event().await;
    ctx.next_event().await;
    ctx.finish().await;

    // Only 10.0.0.0/8 may call; the test's own address (127.0.0.1) is outside.
    let ctx = setup(backend, |c| {
        c.webhook.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert_eq!(ctx.get(&q("N1", "")).await.0, 403);
    // X-Forwarded-For is not believed from an untrusted peer.
    let r = common::http()
        .get(format!("{}?{}", ctx.url, q("N2", "")))
        .header("X-Forwarded-For", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(ctx.store().count_calls().await.unwrap(), 0);
    ctx.finish().await;

    // Behind a trusted proxy the right-most untrusted hop is the client: a
    // forged left part is never believed.
    let ctx = setup(backend, |c| {
        c.webhook.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for (xff, want) in [
        ("10.1.2.3, 127.0.0.1", 200),
        ("192.168.1.1", 403),
        ("10.1.2.3, 192.168.1.1", 403),
        ("10.1.2.3, 192.168.1.1, 127.0.0.1", 403),
        ("junk", 403),
    ] {
        let r = common::http()
            .get(format!("{}?{}", ctx.url, q("X1", "")))
            .header("X-Forwarded-For", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{xff}");
    }
    ctx.finish().await;
}
on_both_databases!(access, key_and_allow_from);

async fn concurrent_repeats_leave_one_row(backend: Backend) {
    let mut ctx = setup(backend, |_| {}).await;
    let client = common::http();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = format!("{}?{}", ctx.url, q("C1", ""));
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(ctx.store().count_calls().await.unwrap(), 1);
    assert_eq!(ctx.next_event().await.call_id, "C1");
    ctx.no_more_events().await;
    ctx.finish().await;
}
on_both_databases!(concurrency, concurrent_repeats_leave_one_row);

async fn retention_deletes_old_calls(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    let old = bizcall::db::millis(chrono::Utc::now() - chrono::Duration::days(10));
    let insert =
        "INSERT INTO calls (seq, store, status, status_rank, started_at, caller, destination, \
                  extras, fingerprint, received_at, updated_at) \
                  VALUES ($1, 's', 'ringing', 0, $2, '0101', '02', '{}', 'f', $2, $2)";
    for (seq, at) in [
        ("old", old),
        ("new", bizcall::db::millis(chrono::Utc::now())),
    ] {
        match &pool {
            Db::Sqlite(p) => sqlx::query(insert)
                .bind(seq)
                .bind(at)
                .execute(p)
                .await
                .map(|_| ()),
            Db::Postgres(p) => sqlx::query(insert)
                .bind(seq)
                .bind(at)
                .execute(p)
                .await
                .map(|_| ()),
        }
        .unwrap();
    }
    let mut config = common::config_for(db.url());
    config.database.retention_days = 7;
    let server = common::start(config).await;
    common::eventually(Duration::from_secs(10), "old call deleted", || async {
        pool.call("old").await.unwrap().is_none()
    })
    .await;
    assert!(pool.call("new").await.unwrap().is_some());
    pool.close().await;
    server.stop().await.unwrap();
    db.cleanup().await;
}
on_both_databases!(retention, retention_deletes_old_calls);
