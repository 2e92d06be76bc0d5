//! The HTTP API's errors: each becomes a JSON answer `{"error", "field"?}`
//! with its status, and server-side failures are logged where they turn
//! into an answer (a 503 used to leave no trace).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::db::DbError;

/// Why an API request failed.
#[derive(Debug)]
pub enum ApiError {
    /// No, an unknown or a revoked token (401).
    Unauthorized(&'static str),
    /// A valid token of another store (403).
    Forbidden(&'static str),
    /// Too many failed sign-ins from this address (429, `Retry-After`).
    TooManyFailures(Duration),
    NotFound(&'static str),
    /// A request field that failed validation (422, naming it).
    Invalid {
        field: std::borrow::Cow<'static, str>,
        error: String,
    },
    /// The request clashes with what is stored (409, naming the field):
    /// a slug or number another store has.
    Conflict {
        field: &'static str,
        error: String,
    },
    UnsupportedMediaType(&'static str),
    PayloadTooLarge,
    /// The database did not answer (503); logged.
    Unavailable(DbError),
}

impl ApiError {
    pub fn invalid(field: &'static str, error: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            error: error.into(),
        }
    }
}

/// What the data refused is the caller's to correct (409, naming the
/// field); any other database failure is ours (503, logged).
impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Refused(r) => ApiError::Conflict {
                field: r.field(),
                error: r.to_string(),
            },
            other => ApiError::Unavailable(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized(why) => (StatusCode::UNAUTHORIZED, json!({ "error": why })),
            ApiError::Forbidden(why) => (StatusCode::FORBIDDEN, json!({ "error": why })),
            ApiError::TooManyFailures(wait) => {
                let secs = wait.as_secs().max(1);
                let mut resp = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({
                        "error": format!("too many failed sign-ins from this address; try again in {secs} s")
                    })),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return resp;
            }
            ApiError::NotFound(why) => (StatusCode::NOT_FOUND, json!({ "error": why })),
            ApiError::Invalid { field, error } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": error, "field": field }),
            ),
            ApiError::Conflict { field, error } => (
                StatusCode::CONFLICT,
                json!({ "error": error, "field": field }),
            ),
            ApiError::UnsupportedMediaType(want) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": format!("expected Content-Type: {want}") }),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "body over 16 KiB" }),
            ),
            ApiError::Unavailable(e) => {
                tracing::error!(error = %e, "API request failed: database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": "unavailable: database" }),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
