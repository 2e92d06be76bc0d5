//! The admin API behind the operator console (docs/http-api.md, "Admin
//! endpoints"): stores, tokens, calls with their delivery trail, the
//! cluster's instances, and a stream of live changes. Every route takes
//! `Authorization: Bearer <admin.token>` and is `404` while it is unset.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, TimeZone};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::api::call_json;
use super::auth::Admin;
use super::error::ApiError;
use super::json_body::JsonBody;
use crate::app::App;
use crate::call::{kst_offset, to_utc_millis_string, CallStatus};
use crate::cdr::normalize_number;
use crate::db::{from_millis, CallFilter};
use crate::presence::alive_since;

type ApiResult = Result<Response, ApiError>;

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| {
        Value::String(to_utc_millis_string(from_millis(ms)))
    })
}

/// `POST /api/admin/stores`
#[derive(Deserialize)]
pub struct NewStore {
    #[serde(default)]
    slug: String,
    name: Option<String>,
    numbers: Option<Vec<String>>,
}

/// `PATCH /api/admin/stores/{slug}`: at least one of them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreEdit {
    name: Option<String>,
    anonymous_tablets: Option<bool>,
}

/// `POST /api/admin/stores/{slug}/numbers`
#[derive(Deserialize)]
pub struct NewNumber {
    number: Option<String>,
}

/// `POST /api/admin/stores/{slug}/tokens`
#[derive(Deserialize)]
pub struct NewToken {
    label: Option<String>,
    base: Option<String>,
}

/// A store's name as the CLI takes it: 1 to 200 characters, trimmed.
fn store_name(name: Option<&str>) -> Result<String, ApiError> {
    let name = name.unwrap_or("").trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "expected 1 to 200 characters"));
    }
    if let Some(why) = crate::text::refused_char(name, false) {
        return Err(ApiError::invalid("name", why));
    }
    Ok(name.to_string())
}

/// A virtual number as the CLI takes it: 1 to 20 digits, `-` allowed.
fn store_number(field: &'static str, raw: &str) -> Result<String, ApiError> {
    normalize_number(raw).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!(
                "{:?}: expected 1 to 20 digits ('-' allowed)",
                raw.chars().take(40).collect::<String>()
            ),
        )
    })
}

async fn store_json(app: &App, slugs: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let stores = app.db.store_list().await?;
    let online = app.db.online_by_store(alive_since()).await?;
    let last = app.db.last_call_by_store().await?;
    let here = app.hub.tablets_by_store();
    let anonymous = app.hub.anonymous_by_store();
    let opted_in = app.db.stores_anonymous().await?;
    Ok(stores
        .iter()
        .filter(|s| slugs.is_none_or(|one| one == s.slug))
        .map(|s| {
            let o = online.get(&s.slug).copied().unwrap_or_default();
            json!({
                "slug": s.slug,
                "name": s.name,
                "numbers": s.numbers,
                "tabletsOnline": o.tablets,
                "anonymousTabletsOnline": o.anonymous,
                "tabletsHere": here.get(&s.slug).copied().unwrap_or(0),
                // Token-less tablets (`compat.anonymous`) that still need
                // the token change.
                "anonymousTabletsHere": anonymous.get(&s.slug).copied().unwrap_or(0),
                // Whether token-less tablets may follow this store at all
                // (with `compat.anonymous`); off until the operator opts in.
                "anonymousTablets": opted_in.contains(&s.slug),
                "lastCallAt": time(last.get(&s.slug).copied()),
            })
        })
        .collect())
}

/// `GET /api/admin/stores`
pub async fn stores(State(app): State<App>, _admin: Admin) -> ApiResult {
    Ok(Json(Value::Array(store_json(&app, None).await?)).into_response())
}

/// `POST /api/admin/stores` `{"slug", "name", "numbers": [..]}`
pub async fn store_create(
    State(app): State<App>,
    _admin: Admin,
    JsonBody(body): JsonBody<NewStore>,
) -> ApiResult {
    let slug = body.slug.as_str();
    if !crate::slug::is_valid(slug) {
        return Err(ApiError::invalid(
            "slug",
            format!("expected {}", crate::slug::RULE),
        ));
    }
    let name = store_name(body.name.as_deref())?;
    let raw = body.numbers.unwrap_or_default();
    if raw.len() > 50 {
        return Err(ApiError::invalid("numbers", "at most 50 numbers"));
    }
    let mut numbers = Vec::new();
    for n in &raw {
        let d = store_number("numbers", n)?;
        if !numbers.contains(&d) {
            numbers.push(d);
        }
    }
    app.db.store_add(slug, &name, &numbers).await?;
    tracing::info!(store = %slug, "admin: store added");
    let one = store_json(&app, Some(slug)).await?;
    Ok((StatusCode::CREATED, Json(one.into_iter().next())).into_response())
}

/// `GET /api/admin/stores/{slug}`: the store, and what removing it takes.
pub async fn store_show(
    State(app): State<App>,
    Path(slug): Path<String>,
    _admin: Admin,
) -> ApiResult {
    let Some(mut one) = store_json(&app, Some(&slug)).await?.into_iter().next() else {
        return Err(ApiError::NotFound("no such store"));
    };
    let f = app.db.store_footprint(&slug).await?;
    one["removal"] = json!({
        "numbers": f.numbers,
        "activeTokens": f.live_tokens,
        "callsKept": f.calls,
    });
    Ok(Json(one).into_response())
}

/// `PATCH /api/admin/stores/{slug}` `{"name"?, "anonymousTablets"?}`: at
/// least one of them.
pub async fn store_edit(
    State(app): State<App>,
    Path(slug): Path<String>,
    _admin: Admin,
    JsonBody(body): JsonBody<StoreEdit>,
) -> ApiResult {
    let anonymous = body.anonymous_tablets;
    let name = match body.name.as_deref() {
        None if anonymous.is_some() => None,
        name => Some(store_name(name)?),
    };
    if let Some(name) = name {
        if !app.db.store_rename(&slug, &name).await? {
            return Err(ApiError::NotFound("no such store"));
        }
        tracing::info!(store = %slug, "admin: store renamed");
    }
    if let Some(allowed) = anonymous {
        if !app.db.store_set_anonymous(&slug, allowed).await? {
            return Err(ApiError::NotFound("no such store"));
        }
        tracing::info!(store = %slug, allowed, "admin: token-less tablets for this store set");
    }
    let one = store_json(&app, Some(&slug)).await?;
    Ok(Json(one.into_iter().next()).into_response())
}

/// `DELETE /api/admin/stores/{slug}`: removes the store, its numbers and
/// its tokens (its tablets drop within seconds); its calls stay.
pub async fn store_remove(
    State(app): State<App>,
    Path(slug): Path<String>,
    _admin: Admin,
) -> ApiResult {
    let f = app.db.store_footprint(&slug).await?;
    if !app.db.store_remove(&slug).await? {
        return Err(ApiError::NotFound("no such store"));
    }
    tracing::info!(store = %slug, "admin: store removed");
    Ok(Json(json!({
        "removed": slug,
        "numbers": f.numbers,
        "activeTokens": f.live_tokens,
        "callsKept": f.calls,
    }))
    .into_response())
}

/// `POST /api/admin/stores/{slug}/numbers` `{"number"}`
pub async fn number_add(
    State(app): State<App>,
    Path(slug): Path<String>,
    _admin: Admin,
    JsonBody(body): JsonBody<NewNumber>,
) -> ApiResult {
    let Some(raw) = body.number.as_deref() else {
        return Err(ApiError::invalid("number", "required"));
    };
    let number = store_number("number", raw)?;
    if !app.db.store_exists(&slug).await? {
        return Err(ApiError::NotFound("no such store"));
    }
    app.db.store_number_add(&slug, &number).await?;
    tracing::info!(store = %slug, "admin: number added");
    let one = store_json(&app, Some(&slug)).await?;
    Ok((StatusCode::CREATED, Json(one.into_iter().next())).into_response())
}

/// `DELETE /api/admin/stores/{slug}/numbers/{number}`
pub async fn number_remove(
    State(app): State<App>,
    Path((slug, raw)): Path<(String, String)>,
    _admin: Admin,
) -> ApiResult {
    let number = store_number("number", &raw)?;
    if !app.db.store_number_remove(&slug, &number).await? {
        return Err(ApiError::NotFound("no such number for this store"));
    }
    tracing::info!(store = %slug, "admin: number removed");
    let one = store_json(&app, Some(&slug)).await?;
    Ok(Json(one.into_iter().next()).into_response())
}

/// `GET /api/admin/stores/{slug}/tokens`
pub async fn tokens(State(app): State<App>, Path(slug): Path<String>, _admin: Admin) -> ApiResult {
    if !app.db.store_exists(&slug).await? {
        return Err(ApiError::NotFound("no such store"));
    }
    let list = app.db.tokens_of(&slug).await?;
    let online = app.db.online_by_token(&slug, alive_since()).await?;
    let names = app.db.instance_names().await?;
    let out: Vec<Value> = list
        .iter()
        .map(|t| {
            let on = online.get(&t.id).cloned().unwrap_or_default();
            let n: i64 = on.iter().map(|(_, n)| n).sum();
            json!({
                "id": t.id,
                "label": t.label,
                "createdAt": time(Some(t.created_at)),
                "revokedAt": time(t.revoked_at),
                "lastSeenAt": time(t.last_seen_at),
                "online": n,
                "instances": on.iter().map(|(id, n)| json!({
                    "id": id,
                    "name": names.get(id).cloned().unwrap_or_default(),
                    "tablets": n,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)).into_response())
}

/// The page address a tablet signs in with: `<base>/tablet#token=<token>`.
/// `base` is the console's own origin as the browser sees it (behind a
/// balancer the server cannot know it); without one, `http://<Host>`.
fn tablet_url(base: Option<&str>, headers: &HeaderMap, token: &str) -> Result<String, ApiError> {
    let base = match base {
        Some(b) => {
            let bad = || {
                ApiError::invalid(
                    "base",
                    "expected an http(s) origin such as https://bizcall.example.com",
                )
            };
            if b.len() > 200 {
                return Err(bad());
            }
            let u = url::Url::parse(b).map_err(|_| bad())?;
            if !matches!(u.scheme(), "http" | "https")
                || u.host_str().is_none()
                || u.query().is_some()
                || u.fragment().is_some()
                || !u.username().is_empty()
            {
                return Err(bad());
            }
            u.as_str().trim_end_matches('/').to_string()
        }
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| {
                    !h.is_empty()
                        && h.len() <= 200
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                })
                .unwrap_or("127.0.0.1");
            format!("http://{host}")
        }
    };
    Ok(format!("{base}/tablet#token={token}"))
}

/// `POST /api/admin/stores/{slug}/tokens` `{"label", "base"?}`: the token,
/// shown this once, its sign-in address and that address as a QR code.
pub async fn token_issue(
    State(app): State<App>,
    Path(slug): Path<String>,
    _admin: Admin,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult {
    let label = body.label.as_deref().unwrap_or("").trim().to_string();
    if let Some(why) = crate::text::refused_char(&label, false) {
        return Err(ApiError::invalid("label", why));
    }
    if label.chars().count() > 200 {
        return Err(ApiError::invalid("label", "at most 200 characters"));
    }
    let base = body.base.as_deref();
    // Checked before the token exists, so a bad base issues nothing.
    tablet_url(base, &headers, "x")?;
    if !app.db.store_exists(&slug).await? {
        return Err(ApiError::NotFound("no such store"));
    }
    let (id, token) = app.db.token_issue(&slug, &label).await?;
    let url = tablet_url(base, &headers, &token)?;
    let qr = qrcode::QrCode::new(url.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(240, 240)
                .build()
        })
        .unwrap_or_default();
    tracing::info!(store = %slug, token = %id, "admin: token issued");
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "id": id,
            "store": slug,
            "label": label,
            "token": token,
            "tabletUrl": url,
            "qrSvg": qr,
        })),
    )
        .into_response())
}

/// `DELETE /api/admin/tokens/{id}`: revokes a token; its tablets, on any
/// instance, are dropped within seconds.
pub async fn token_revoke(
    State(app): State<App>,
    Path(id): Path<String>,
    _admin: Admin,
) -> ApiResult {
    let Some(store) = app.db.token_store(&id).await? else {
        return Err(ApiError::NotFound("no such token"));
    };
    let revoked = app.db.token_revoke(&id).await?;
    tracing::info!(store = %store, token = %id, revoked, "admin: token revoked");
    Ok(Json(json!({ "id": id, "store": store, "revoked": true })).into_response())
}

/// `GET /api/admin/instances`: the instances alive now and their tablets.
pub async fn instances(State(app): State<App>, _admin: Admin) -> ApiResult {
    let list = app.db.instances_alive(alive_since()).await?;
    let out: Vec<Value> = list
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "name": i.name,
                "startedAt": time(Some(i.started_at)),
                "heartbeatAt": time(Some(i.heartbeat_at)),
                "self": i.id == app.identity.id,
            })
        })
        .collect();
    Ok(Json(json!({
        "staleAfterSeconds": crate::presence::STALE.as_secs(),
        "instances": out,
    }))
    .into_response())
}

/// `GET /api/admin/calls?store=&status=&date=YYYY-MM-DD&limit=`
pub async fn calls(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    _admin: Admin,
) -> ApiResult {
    let mut f = CallFilter {
        limit: 100,
        ..CallFilter::default()
    };
    if let Some(s) = q.get("store").filter(|s| !s.is_empty()) {
        if !crate::slug::is_valid(s) {
            return Err(ApiError::invalid("store", "expected a store slug"));
        }
        f.store = Some(s.clone());
    }
    if let Some(s) = q.get("status").filter(|s| !s.is_empty()) {
        let status: CallStatus = s.parse().map_err(|_| {
            ApiError::invalid("status", "expected ringing, answered, missed or completed")
        })?;
        f.status = Some(status.as_str().to_string());
    }
    if let Some(s) = q.get("date").filter(|s| !s.is_empty()) {
        let bad = || ApiError::invalid("date", "expected YYYY-MM-DD (a day in Korea time)");
        let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
        let from = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| kst_offset().from_local_datetime(&t).single())
            .ok_or_else(bad)?;
        f.from = Some(from.timestamp_millis());
        f.to = Some((from + chrono::Duration::days(1)).timestamp_millis());
    }
    if let Some(s) = q.get("limit") {
        f.limit = match s.parse::<u32>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "expected a whole number from 1 to 500",
                ))
            }
        };
    }
    let rows = app.db.calls_filtered(&f).await?;
    let ttl = app.config.bus.message_ttl;
    let mut ackers: Vec<String> = rows
        .iter()
        .flat_map(|r| [r.acknowledged_by.clone(), r.called_back_by.clone()])
        .flatten()
        .collect();
    ackers.sort();
    ackers.dedup();
    let labels: HashMap<String, String> = app
        .db
        .token_labels(&ackers)
        .await?
        .into_iter()
        .map(|(id, (_, label))| (id, label))
        .collect();
    let out: Vec<Value> = rows.iter().map(|r| call_json(r, ttl, &labels)).collect();
    Ok(Json(Value::Array(out)).into_response())
}

/// `GET /api/admin/calls/{seq}`: the call and its delivery trail.
pub async fn call_trail(
    State(app): State<App>,
    Path(seq): Path<String>,
    _admin: Admin,
) -> ApiResult {
    if seq.is_empty() || seq.len() > 64 {
        return Err(ApiError::NotFound("no such call"));
    }
    let Some(row) = app.db.call(&seq).await? else {
        return Err(ApiError::NotFound("no such call"));
    };
    let (received_at, published) = app.db.call_received(&seq).await?.unwrap_or((0, false));
    let trail = app.db.trail(&seq).await?;
    let names = app.db.instance_names().await?;
    let alive: std::collections::HashSet<String> = app
        .db
        .instances_alive(alive_since())
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    let mut token_ids: Vec<String> = trail
        .iter()
        .flat_map(|r| serde_json::from_str::<Vec<String>>(&r.token_ids).unwrap_or_default())
        .collect();
    token_ids.extend(row.acknowledged_by.clone());
    token_ids.sort();
    token_ids.dedup();
    let labels = app.db.token_labels(&token_ids).await?;
    let label = |id: &str| labels.get(id).map(|(_, l)| l.clone());
    let instances: Vec<Value> = trail
        .iter()
        .map(|r| {
            let tokens: Vec<String> = serde_json::from_str(&r.token_ids).unwrap_or_default();
            json!({
                "instance": r.instance_id,
                "name": names.get(&r.instance_id).cloned().unwrap_or_default(),
                "alive": alive.contains(&r.instance_id),
                "receivedAt": time(r.received_at),
                "publishedAt": time(r.published_at),
                "reachedAt": time(r.reached_at),
                "lastEventAt": time(r.last_at),
                "events": r.events,
                "tablets": r.tablets,
                "outcome": r.outcome,
                "shownOn": tokens.iter().map(|t| json!({
                    "tokenId": t,
                    "label": label(t),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let acknowledged = row.acknowledged_at.is_some();
    let first_ack = row.acknowledged_at.map(|at| {
        let by = row.acknowledged_by.clone().unwrap_or_default();
        json!({ "at": time(Some(at)), "tokenId": by, "label": label(&by) })
    });
    let by_label: HashMap<String, String> = labels
        .iter()
        .map(|(id, (_, l))| (id.clone(), l.clone()))
        .collect();
    let mut call = call_json(&row, app.config.bus.message_ttl, &by_label);
    call["receivedAt"] = time(Some(received_at));
    Ok(Json(json!({
        "call": call,
        "trail": {
            "stored": time(Some(received_at)),
            "published": published,
            "bus": match app.config.bus.kind {
                crate::config::BusKind::Local => "local",
                crate::config::BusKind::Amqp => "amqp",
            },
            "instances": instances,
            "firstAck": first_ack,
            "verdict": crate::trail::verdict(acknowledged, published, &trail).as_str(),
        },
    }))
    .into_response())
}

/// How often the live stream looks at presence for changes.
const PRESENCE_EVERY: Duration = Duration::from_secs(2);

/// `GET /api/admin/events`: server-sent events. `call` for every call
/// event this instance receives (every instance receives them all), and
/// `presence` whenever tablets online per store change across the cluster
/// (and once at the start). The page reads it with `fetch`, which can send
/// the `Authorization` header (`EventSource` cannot).
pub async fn events(State(app): State<App>, _admin: Admin) -> ApiResult {
    struct Live {
        app: App,
        calls: tokio::sync::broadcast::Receiver<crate::call::CallEvent>,
        last: Option<Value>,
        tick: tokio::time::Interval,
    }
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        calls: app.delivery.watch(),
        app,
        last: None,
        tick,
    };
    let stream = futures::stream::unfold(live, |mut live| async move {
        loop {
            tokio::select! {
                _ = live.app.shutdown.cancelled() => return None,
                got = live.calls.recv() => match got {
                    Ok(e) => {
                        let data = json!({
                            "callId": e.call_id,
                            "store": e.store,
                            "status": e.status.as_str(),
                        });
                        let ev = Event::default().event("call").data(data.to_string());
                        return Some((Ok::<_, Infallible>(ev), live));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                },
                _ = live.tick.tick() => {
                    let Ok(online) = live.app.db.online_by_store(alive_since()).await else {
                        continue;
                    };
                    let map: Map<String, Value> = online
                        .into_iter()
                        .map(|(s, o)| (s, json!(o.tablets + o.anonymous)))
                        .collect();
                    let now = Value::Object(map);
                    if live.last.as_ref() != Some(&now) {
                        live.last = Some(now.clone());
                        let ev = Event::default().event("presence").data(now.to_string());
                        return Some((Ok(ev), live));
                    }
                }
            }
        }
    });
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response())
}
