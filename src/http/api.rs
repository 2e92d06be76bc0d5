//! The tablet's HTTP API (SPEC section 5): its store's calls, reservations,
//! the admin view, and the tablet page itself.

use std::collections::HashMap;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::call::{kst_offset, to_kst_string, to_utc_millis_string};
use crate::cdr::normalize_number;
use crate::db::{from_millis, CallRow, NewReservation, Reservation, TokenInfo};
use crate::server::App;
use crate::token;

const MAX_BODY: usize = 16 * 1024;
const TABLET_PAGE: &str = include_str!("../../web/tablet.html");

fn problem(status: StatusCode, error: &str, field: Option<&str>) -> Response {
    let mut body = json!({ "error": error });
    if let Some(f) = field {
        body["field"] = Value::String(f.to_string());
    }
    (status, Json(body)).into_response()
}

fn invalid(field: &str, error: &str) -> Response {
    problem(StatusCode::UNPROCESSABLE_ENTITY, error, Some(field))
}

/// A request field that failed validation: answered 422 naming it.
struct Invalid {
    field: &'static str,
    error: String,
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        invalid(self.field, &self.error)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The tablet token's store must be the one in the path.
async fn authorize(app: &App, headers: &HeaderMap, slug: &str) -> Result<TokenInfo, Response> {
    let Some(presented) = bearer(headers) else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized: Authorization: Bearer <tablet token> required",
            None,
        ));
    };
    match app.db.token_verify(presented).await {
        Ok(Some(info)) if info.store == slug => Ok(info),
        Ok(Some(_)) => Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden: the token belongs to another store",
            None,
        )),
        Ok(None) => Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized: unknown or revoked token",
            None,
        )),
        Err(_) => Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: database",
            None,
        )),
    }
}

fn db_down() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable: database",
        None,
    )
}

/// A stored call as the call list serves it: the call event's fields for
/// its latest state, plus whether a tablet acknowledged it.
pub fn call_json(row: &CallRow, ttl: std::time::Duration) -> Value {
    let event = row.event_at(ttl, from_millis(row.updated_at));
    let mut v = serde_json::to_value(&event).unwrap_or(Value::Null);
    v["acknowledged"] = Value::Bool(row.acknowledged_at.is_some());
    v["acknowledgedAt"] = match row.acknowledged_at {
        Some(ms) => Value::String(to_utc_millis_string(from_millis(ms))),
        None => Value::Null,
    };
    v
}

/// `GET /api/stores/{slug}/calls?since=&limit=`
pub async fn calls(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authorize(&app, &headers, &slug).await {
        return resp;
    }
    let since = match q.get("since") {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                return invalid(
                    "since",
                    "expected an RFC 3339 time such as 2026-11-22T10:00:00+09:00",
                )
            }
        },
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return invalid("limit", "expected a whole number from 1 to 500"),
        },
    };
    match app.db.calls_for_store(&slug, since, limit).await {
        Ok(rows) => {
            let ttl = app.config.bus.message_ttl;
            Json(Value::Array(
                rows.iter().map(|r| call_json(r, ttl)).collect(),
            ))
            .into_response()
        }
        Err(_) => db_down(),
    }
}

fn reservation_json(r: &Reservation) -> Value {
    json!({
        "id": r.id,
        "store": r.store,
        "callId": r.call_id,
        "customerNumber": r.customer_number,
        "carNumber": r.car_number,
        "carModel": r.car_model,
        "service": r.service,
        "reservedAt": to_kst_string(from_millis(r.reserved_at)),
        "memo": r.memo,
        "createdAt": to_utc_millis_string(from_millis(r.created_at)),
    })
}

/// An optional text field of at most `max` characters.
fn optional_text(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, Invalid> {
    let bad = |error: String| Err(Invalid { field, error });
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.trim().to_string())),
        Some(Value::String(_)) => bad(format!("at most {max} characters")),
        Some(_) => bad("expected a string".into()),
    }
}

/// `POST /api/stores/{slug}/reservations`
pub async fn reserve(
    State(app): State<App>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(resp) = authorize(&app, &headers, &slug).await {
        return resp;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
            None,
        );
    }
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "body over 16 KiB", None);
    };
    let obj = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return invalid("body", "expected a JSON object"),
        Err(e) => return invalid("body", &format!("invalid JSON: {e}")),
    };
    let customer_number = match obj.get("customerNumber") {
        Some(Value::String(s)) => match normalize_number(s) {
            Some(d) if d.len() >= 2 => d,
            _ => return invalid("customerNumber", "expected 2 to 20 digits ('-' allowed)"),
        },
        None | Some(Value::Null) => return invalid("customerNumber", "required"),
        Some(_) => return invalid("customerNumber", "expected a string"),
    };
    let reserved_at = match obj.get("reservedAt") {
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                return invalid(
                    "reservedAt",
                    "expected an RFC 3339 time such as 2026-11-22T14:00:00+09:00",
                )
            }
        },
        None | Some(Value::Null) => return invalid("reservedAt", "required"),
        Some(_) => return invalid("reservedAt", "expected a string"),
    };
    let fields = (|| {
        Ok::<_, Invalid>((
            optional_text(&obj, "callId", 32)?,
            optional_text(&obj, "carNumber", 20)?,
            optional_text(&obj, "carModel", 100)?,
            optional_text(&obj, "service", 100)?,
            optional_text(&obj, "memo", 1000)?,
        ))
    })();
    let (call_id, car_number, car_model, service, memo) = match fields {
        Ok(f) => f,
        Err(bad) => return bad.into_response(),
    };
    if let Some(id) = &call_id {
        match app.db.call(id).await {
            Ok(Some(row)) if row.store == slug => {}
            Ok(_) => return invalid("callId", "no such call for this store"),
            Err(_) => return db_down(),
        }
    }
    let new = NewReservation {
        call_id,
        customer_number,
        car_number,
        car_model,
        service,
        reserved_at,
        memo,
    };
    match app.db.reservation_add(&slug, &new).await {
        Ok(r) => {
            tracing::info!(store = %slug, id = r.id, "reservation saved");
            (StatusCode::CREATED, Json(reservation_json(&r))).into_response()
        }
        Err(_) => db_down(),
    }
}

/// `GET /api/stores/{slug}/reservations?date=YYYY-MM-DD` (a Korea-time day;
/// today when absent).
pub async fn reservations(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authorize(&app, &headers, &slug).await {
        return resp;
    }
    let day = match q.get("date") {
        None => Utc::now().with_timezone(&kst_offset()).date_naive(),
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => return invalid("date", "expected YYYY-MM-DD"),
        },
    };
    let Some(from) = day
        .and_hms_opt(0, 0, 0)
        .and_then(|t| kst_offset().from_local_datetime(&t).single())
        .map(|t| t.with_timezone(&Utc))
    else {
        return invalid("date", "expected YYYY-MM-DD");
    };
    let to = from + chrono::Duration::days(1);
    match app.db.reservations_between(&slug, from, to).await {
        Ok(list) => Json(Value::Array(list.iter().map(reservation_json).collect())).into_response(),
        Err(_) => db_down(),
    }
}

/// `GET /api/admin/stores`: every store, its numbers and the tablets
/// connected to this instance. Off unless `admin.token` is set.
pub async fn admin_stores(State(app): State<App>, headers: HeaderMap) -> Response {
    let expected = &app.config.admin.token;
    if expected.is_empty() {
        return problem(
            StatusCode::NOT_FOUND,
            "admin endpoints are off (admin.token is not set)",
            None,
        );
    }
    if !bearer(&headers).is_some_and(|t| token::secret_matches(t, expected)) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    let Ok(stores) = app.db.store_list().await else {
        return db_down();
    };
    let here = app.hub.tablets_by_store();
    let list: Vec<Value> = stores
        .iter()
        .map(|s| {
            json!({
                "slug": s.slug,
                "name": s.name,
                "numbers": s.numbers,
                "tabletsHere": here.get(&s.slug).copied().unwrap_or(0),
            })
        })
        .collect();
    Json(Value::Array(list)).into_response()
}

/// `GET /tablet`: the page, self-contained (no network beyond this server).
pub async fn tablet_page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; media-src 'self' data:",
            ),
        ],
        Html(TABLET_PAGE),
    )
        .into_response()
}
