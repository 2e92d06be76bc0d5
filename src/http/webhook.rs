//! The provider's CDR callback (docs/webhook.md): access checks and
//! parsing; the CDR is then accepted by `intake`, and its outcome answered.

use crate::log_budget::LogBudget;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::body::{media_type, read_limited};
use crate::app::App;
use crate::cdr::{Cdr, FieldError, Params};
use crate::intake::{self, Outcome};
use crate::metrics as m;
use crate::token;

pub use super::body::MAX_BODY;

/// What a `503` asks the provider to wait before its retry, in seconds.
const RETRY_AFTER_SECS: u32 = 5;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// `GET|POST <webhook.path>`.
pub async fn cdr(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = uri.query().unwrap_or("");
    let client =
        super::client_ip::client_address(&app.config.server.trusted_proxies, peer.ip(), &headers);

    if !app.config.webhook.allow_from.is_empty()
        && !app
            .config
            .webhook
            .allow_from
            .iter()
            .any(|n| n.contains(&client))
    {
        m::cdr_received("forbidden");
        static LOG: LogBudget = LogBudget::new("CDR from a peer outside webhook.allow_from");
        if LOG.admit() {
            tracing::warn!(%client, "CDR from a peer outside webhook.allow_from");
        }
        return text(StatusCode::FORBIDDEN, "forbidden: peer not allowed");
    }
    if !app.config.webhook.key.is_empty() && !key_matches(&app.config.webhook.key, query, &headers)
    {
        m::cdr_received("unauthorized");
        static LOG: LogBudget = LogBudget::new("CDR with a missing or wrong key");
        if LOG.admit() {
            tracing::warn!(%client, "CDR with a missing or wrong key");
        }
        return text(
            StatusCode::UNAUTHORIZED,
            "unauthorized: missing or wrong key",
        );
    }
    if query.len() > MAX_BODY {
        m::cdr_received("too_large");
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large: over 16 KiB",
        );
    }

    let params = match read_params(method, query, &headers, body).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let cdr = match params.and_then(|p| Cdr::from_params(&p)) {
        Ok(cdr) => cdr,
        Err(e) => return bad_request(&e),
    };
    ingest(&app, &cdr).await
}

/// Reads the CDR's parameters from the query (GET, or a POST without a
/// body) or the body (form or JSON).
async fn read_params(
    method: Method,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Result<Params, FieldError>, Response> {
    let Some(bytes) = read_limited(body).await else {
        m::cdr_received("too_large");
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large: body over 16 KiB",
        ));
    };
    if method != Method::POST || bytes.is_empty() {
        return Ok(Params::from_urlencoded(query.as_bytes()));
    }
    match media_type(headers).as_str() {
        "application/x-www-form-urlencoded" => Ok(Params::from_urlencoded(&bytes)),
        "application/json" => Ok(Params::from_json(&bytes)),
        _ => {
            m::cdr_received("unsupported_media_type");
            Err(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported media type: expected application/x-www-form-urlencoded or application/json, got \"{}\"",
                    headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .chars()
                        .take(64)
                        .collect::<String>()
                ),
            ))
        }
    }
}

fn bad_request(e: &FieldError) -> Response {
    m::cdr_received("bad_request");
    // The value may be a caller's number: log only which field failed.
    tracing::info!(field = %e.field, "CDR rejected");
    text(StatusCode::BAD_REQUEST, format!("bad request: {e}"))
}

/// Accepts the CDR and answers how it went.
async fn ingest(app: &App, cdr: &Cdr) -> Response {
    match intake::accept(&app.intake, cdr).await {
        Outcome::Stored(_) | Outcome::Unmatched(_) => {
            m::cdr_received("stored");
            text(StatusCode::OK, "OK")
        }
        Outcome::Repeat => {
            m::cdr_received("repeat");
            text(StatusCode::OK, "OK")
        }
        Outcome::Conflict(c) => {
            m::cdr_received("conflict");
            text(StatusCode::CONFLICT, format!("conflict: {c}"))
        }
        Outcome::Unavailable(_) => {
            m::cdr_received("unavailable");
            let mut answer = text(StatusCode::SERVICE_UNAVAILABLE, "unavailable: database");
            // Nothing was stored: the provider's retry will store it.
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
            answer
        }
    }
}

fn key_matches(expected: &str, query: &str, headers: &HeaderMap) -> bool {
    if let Some(v) = headers.get("x-bizcall-key").and_then(|v| v.to_str().ok()) {
        return token::secret_matches(v, expected);
    }
    let from_query = form_urlencoded_value(query, "key");
    from_query.is_some_and(|v| token::secret_matches(&v, expected))
}

fn form_urlencoded_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
