//! The tablet's HTTP API (docs/http-api.md): its store's calls and
//! reservations. The admin API is in `admin`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::auth::{Bearer, Tablet};
use super::body::{media_type, read_limited};
use super::client_ip::ClientAddr;
use super::error::ApiError;
use crate::app::App;
use crate::call::{kst_offset, to_kst_string, to_utc_millis_string};
use crate::db::{from_millis, CallRow, NewReservation, Reservation};

type ApiResult = Result<Response, ApiError>;

/// A stored call as the call list serves it: the call event's fields for
/// its latest state, plus whether a tablet acknowledged it, when, and the
/// label of the tablet that did (`labels`: token id → label).
pub fn call_json(
    row: &CallRow,
    ttl: std::time::Duration,
    labels: &HashMap<String, String>,
) -> Value {
    let event = row.event_at(ttl, from_millis(row.updated_at));
    let mut v = serde_json::to_value(&event).unwrap_or(Value::Null);
    v["acknowledged"] = Value::Bool(row.acknowledged_at.is_some());
    v["acknowledgedAt"] = match row.acknowledged_at {
        Some(ms) => Value::String(to_utc_millis_string(from_millis(ms))),
        None => Value::Null,
    };
    v["acknowledgedBy"] = match (row.acknowledged_at, &row.acknowledged_by) {
        // A tablet without a token is stored as "anonymous".
        (Some(_), Some(id)) => Value::String(labels.get(id).cloned().unwrap_or_else(|| id.clone())),
        _ => Value::Null,
    };
    v["calledBackAt"] = match row.called_back_at {
        Some(ms) => Value::String(to_utc_millis_string(from_millis(ms))),
        None => Value::Null,
    };
    v["calledBackBy"] = match (row.called_back_at, &row.called_back_by) {
        (Some(_), Some(id)) => Value::String(labels.get(id).cloned().unwrap_or_else(|| id.clone())),
        _ => Value::Null,
    };
    v
}

/// `GET /api/stores/{slug}/calls?since=&limit=`
pub async fn calls(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    client: ClientAddr,
    bearer: Bearer,
) -> ApiResult {
    Tablet::authorize(&app, client, bearer, &slug).await?;
    let since = match q.get("since") {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                return Err(ApiError::invalid(
                    "since",
                    "expected an RFC 3339 time such as 2026-11-22T10:00:00+09:00",
                ))
            }
        },
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "expected a whole number from 1 to 500",
                ))
            }
        },
    };
    let rows = app.db.calls_for_store(&slug, since, limit).await?;
    let ttl = app.config.bus.message_ttl;
    let labels: HashMap<String, String> = if rows
        .iter()
        .any(|r| r.acknowledged_at.is_some() || r.called_back_at.is_some())
    {
        app.db
            .token_list(&slug)
            .await?
            .into_iter()
            .map(|t| (t.id, t.label))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(Json(Value::Array(
        rows.iter().map(|r| call_json(r, ttl, &labels)).collect(),
    ))
    .into_response())
}

/// `POST /api/stores/{slug}/calls/{seq}/callback`: a tablet of the store
/// called this (missed) call's customer back. The first note stands; the
/// answer is the call as the list shows it, with who and when.
pub async fn call_back(
    State(app): State<App>,
    Path((slug, seq)): Path<(String, String)>,
    client: ClientAddr,
    bearer: Bearer,
) -> ApiResult {
    let tablet = Tablet::authorize(&app, client, bearer, &slug).await?;
    let Some(row) = app.db.call_back(&seq, &slug, &tablet.0.id).await? else {
        return Err(ApiError::NotFound("no such call of this store"));
    };
    let labels: HashMap<String, String> = app
        .db
        .token_list(&slug)
        .await?
        .into_iter()
        .map(|t| (t.id, t.label))
        .collect();
    Ok(Json(call_json(&row, app.config.bus.message_ttl, &labels)).into_response())
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

/// A customer's number as the reservation form takes it: 2 to 20 digits,
/// with `-` and spaces between them ignored; stored as digits.
pub fn customer_number(value: &str) -> Option<String> {
    if !value
        .chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == ' ')
    {
        return None;
    }
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    (2..=20).contains(&digits.len()).then_some(digits)
}

/// An optional text field of at most `max` characters.
fn optional_text(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    let bad = |error: String| Err(ApiError::invalid(field, error));
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => {
            // A memo may have lines; the other fields are one line.
            if let Some(why) = crate::text::refused_char(s, field == "memo") {
                return bad(why);
            }
            Ok(Some(s.trim().to_string()))
        }
        Some(Value::String(_)) => bad(format!("at most {max} characters")),
        Some(_) => bad("expected a string".into()),
    }
}

/// `POST /api/stores/{slug}/reservations`
pub async fn reserve(
    State(app): State<App>,
    Path(slug): Path<String>,
    client: ClientAddr,
    bearer: Bearer,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    Tablet::authorize(&app, client, bearer, &slug).await?;
    if media_type(&headers) != "application/json" {
        return Err(ApiError::UnsupportedMediaType("application/json"));
    }
    let bytes = read_limited(body).await.ok_or(ApiError::PayloadTooLarge)?;
    let obj = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::invalid("body", "expected a JSON object")),
        Err(e) => return Err(ApiError::invalid("body", format!("invalid JSON: {e}"))),
    };
    let customer_number = match obj.get("customerNumber") {
        Some(Value::String(s)) => customer_number(s).ok_or_else(|| {
            ApiError::invalid(
                "customerNumber",
                "expected 2 to 20 digits ('-' and spaces allowed)",
            )
        })?,
        None | Some(Value::Null) => return Err(ApiError::invalid("customerNumber", "required")),
        Some(_) => return Err(ApiError::invalid("customerNumber", "expected a string")),
    };
    let reserved_at = match obj.get("reservedAt") {
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                return Err(ApiError::invalid(
                    "reservedAt",
                    "expected an RFC 3339 time such as 2026-11-22T14:00:00+09:00",
                ))
            }
        },
        None | Some(Value::Null) => return Err(ApiError::invalid("reservedAt", "required")),
        Some(_) => return Err(ApiError::invalid("reservedAt", "expected a string")),
    };
    let call_id = optional_text(&obj, "callId", 32)?;
    let car_number = optional_text(&obj, "carNumber", 20)?;
    let car_model = optional_text(&obj, "carModel", 100)?;
    let service = optional_text(&obj, "service", 100)?;
    let memo = optional_text(&obj, "memo", 1000)?;
    if let Some(id) = &call_id {
        match app.db.call(id).await? {
            Some(row) if row.store == slug => {}
            _ => return Err(ApiError::invalid("callId", "no such call for this store")),
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
    let r = app.db.reservation_add(&slug, &new).await?;
    tracing::info!(store = %slug, id = r.id, "reservation saved");
    Ok((StatusCode::CREATED, Json(reservation_json(&r))).into_response())
}

/// `GET /api/stores/{slug}/reservations?date=YYYY-MM-DD` (a Korea-time day;
/// today when absent).
pub async fn reservations(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    client: ClientAddr,
    bearer: Bearer,
) -> ApiResult {
    Tablet::authorize(&app, client, bearer, &slug).await?;
    let bad_date = || ApiError::invalid("date", "expected YYYY-MM-DD");
    let day = match q.get("date") {
        None => Utc::now().with_timezone(&kst_offset()).date_naive(),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad_date())?,
    };
    let from = day
        .and_hms_opt(0, 0, 0)
        .and_then(|t| kst_offset().from_local_datetime(&t).single())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(bad_date)?;
    let to = from + chrono::Duration::days(1);
    let list = app.db.reservations_between(&slug, from, to).await?;
    Ok(Json(Value::Array(list.iter().map(reservation_json).collect())).into_response())
}

/// `GET /api/stores/{slug}`: the store as its tablet shows it (its name
/// for the page's header).
pub async fn store(
    State(app): State<App>,
    Path(slug): Path<String>,
    client: ClientAddr,
    bearer: Bearer,
) -> ApiResult {
    Tablet::authorize(&app, client, bearer, &slug).await?;
    let name = app
        .db
        .store_name(&slug)
        .await?
        .ok_or(ApiError::NotFound("no such store"))?;
    Ok(Json(json!({ "slug": slug, "name": name })).into_response())
}

/// `GET /api/stores/{slug}/customers/{number}?before=<RFC 3339>`: what the
/// store knows of a caller, for the popup (docs/http-api.md, "Customers").
pub async fn customer(
    State(app): State<App>,
    Path((slug, number)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    client: ClientAddr,
    bearer: Bearer,
) -> ApiResult {
    Tablet::authorize(&app, client, bearer, &slug).await?;
    let number = customer_number(&number).ok_or_else(|| {
        ApiError::invalid("number", "expected 2 to 20 digits ('-' and spaces allowed)")
    })?;
    let before = match q.get("before") {
        None => Utc::now() + chrono::Duration::days(1),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::invalid(
                    "before",
                    "expected an RFC 3339 time such as 2026-11-22T10:00:00+09:00",
                )
            })?,
    };
    let c = app.db.customer(&slug, &number, before).await?;
    Ok(Json(json!({
        "number": number,
        "calls": c.calls,
        "lastCallAt": c.last_call_at.map(|ms| to_kst_string(from_millis(ms))),
        "reservations": c.reservations,
        "lastReservation": c.last_reservation.as_ref().map(reservation_json),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_number_accepts_what_the_readme_says() {
        for (input, want) in [
            ("01012345678", Some("01012345678")),
            ("010-1234-5678", Some("01012345678")),
            ("010 1234 5678", Some("01012345678")),
            ("02", Some("02")),
            ("12345678901234567890", Some("12345678901234567890")),
        ] {
            assert_eq!(customer_number(input).as_deref(), want, "{input:?}");
        }
        for input in [
            "",
            "1",
            "--",
            "- 1 -",
            "123456789012345678901",
            "+821012345678",
            "(02)1234",
            "010.1234.5678",
            "010\t1234",
            "０１０１２３４",
            "010-1234-567x",
        ] {
            assert_eq!(customer_number(input), None, "{input:?}");
        }
    }
}
