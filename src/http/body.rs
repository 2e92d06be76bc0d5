//! What the webhook and the API share about request bodies: one size limit
//! and one reading of `Content-Type`.

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap};

/// Largest body (and webhook query string) accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// The media type of `Content-Type`, lower-cased, without parameters
/// (`application/json; charset=utf-8` → `application/json`); "" when absent.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The body, or `None` when it is over `MAX_BODY` (or the read failed).
pub async fn read_limited(body: Body) -> Option<Bytes> {
    to_bytes(body, MAX_BODY).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn media_type_ignores_case_parameters_and_spaces() {
        assert_eq!(media_type(&with("application/json")), "application/json");
        assert_eq!(
            media_type(&with(" Application/JSON ; charset=utf-8")),
            "application/json"
        );
        assert_eq!(media_type(&with("application/jsonx")), "application/jsonx");
        assert_eq!(media_type(&HeaderMap::new()), "");
    }
}
