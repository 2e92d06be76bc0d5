//! The provider's CDR callback (SPEC section 2): access checks, parsing,
//! durable storage, then the call event on the bus.

use std::net::{IpAddr, SocketAddr};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::call::mask_number;
use crate::cdr::{Cdr, FieldError, Params};
use crate::metrics as m;
use crate::server::App;
use crate::token;

/// Largest body (and query string) accepted from the provider.
pub const MAX_BODY: usize = 16 * 1024;

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
    let client = client_address(&app, peer.ip(), &headers);

    if !app.config.webhook.allow_from.is_empty()
        && !app
            .config
            .webhook
            .allow_from
            .iter()
            .any(|n| n.contains(&client))
    {
        m::cdr_received("forbidden");
        tracing::warn!(%client, "CDR from a peer outside webhook.allow_from");
        return text(StatusCode::FORBIDDEN, "forbidden: peer not allowed");
    }
    if !app.config.webhook.key.is_empty() && !key_matches(&app.config.webhook.key, query, &headers)
    {
        m::cdr_received("unauthorized");
        tracing::warn!(%client, "CDR with a missing or wrong key");
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
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            m::cdr_received("too_large");
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large: body over 16 KiB",
            ));
        }
    };
    if method != Method::POST || bytes.is_empty() {
        return Ok(Params::from_urlencoded(query.as_bytes()));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Ok(Params::from_urlencoded(&bytes)),
        "application/json" => Ok(Params::from_json(&bytes)),
        _ => {
            m::cdr_received("unsupported_media_type");
            Err(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported media type: expected application/x-www-form-urlencoded or application/json, got \"{}\"",
                    content_type.chars().take(64).collect::<String>()
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

/// Stores the CDR, answers, and publishes what changed.
async fn ingest(app: &App, cdr: &Cdr) -> Response {
    let row = match app.db.upsert_call(cdr).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            m::cdr_received("repeat");
            // A repeat publishes nothing, unless the change it repeats was
            // never handed to the bus (the instance that stored it died
            // first): then it is published now, while still inside its TTL.
            let ttl = chrono::Duration::from_std(app.config.bus.message_ttl).unwrap_or_default();
            match app.db.unpublished(&cdr.seq, chrono::Utc::now() - ttl).await {
                Ok(Some(row)) => {
                    tracing::info!(seq = %cdr.seq, "CDR repeat of an unpublished change: publishing it");
                    publish(app, &row).await;
                }
                Ok(None) => tracing::debug!(seq = %cdr.seq, "CDR repeat: nothing changed"),
                Err(e) => {
                    tracing::warn!(seq = %cdr.seq, error = %e, "could not check a repeat for an unpublished change")
                }
            }
            return text(StatusCode::OK, "OK");
        }
        Err(e) => return unavailable(cdr, &e),
    };
    let status = row.status();
    m::cdr_received("stored");
    m::call_stored(status.as_str());
    if row.store.is_empty() {
        m::call_unmatched();
        tracing::warn!(
            seq = %cdr.seq,
            caller = %mask_number(&cdr.caller),
            vn = %cdr.virtual_number.as_deref().map(mask_number).unwrap_or_default(),
            ton = %mask_number(&cdr.destination),
            "CDR matches no store: stored without a popup"
        );
        return text(StatusCode::OK, "OK");
    }
    tracing::info!(
        seq = %cdr.seq,
        store = %row.store,
        status = %status,
        caller = %mask_number(&cdr.caller),
        "CDR stored"
    );
    publish(app, &row).await;
    text(StatusCode::OK, "OK")
}

/// Publishes a stored change and records that it reached the bus. A failed
/// publish is kept by the bus and retried there; the row stays pending.
async fn publish(app: &App, row: &crate::db::CallRow) {
    let event = row.event_at(app.config.bus.message_ttl, chrono::Utc::now());
    match app.bus.publish(&event).await {
        Ok(()) => {
            if let Err(e) = app.marks.mark(&row.seq, row.updated_at).await {
                tracing::warn!(seq = %row.seq, error = %e, "could not mark a call event published");
            }
        }
        Err(e) => tracing::warn!(seq = %row.seq, error = %e, "call event not published yet"),
    }
}

fn unavailable(cdr: &Cdr, e: &crate::db::DbError) -> Response {
    m::cdr_received("unavailable");
    tracing::error!(seq = %cdr.seq, error = %e, "CDR not stored: database unavailable");
    text(StatusCode::SERVICE_UNAVAILABLE, "unavailable: database")
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

/// The client's address: the socket peer, or the first `X-Forwarded-For`
/// hop when the peer is a trusted proxy.
pub fn client_address(app: &App, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !app.config.is_trusted_proxy(peer) {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}
