//! A typed JSON request body: at most `MAX_BODY` bytes of
//! `application/json`, one object, read into `T`. A field of the wrong
//! type, or a required one missing, is answered `422` naming that field,
//! as every other invalid field is.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::body::{media_type, read_limited};
use super::error::ApiError;

/// The request body as `T` (see the module docs).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if media_type(req.headers()) != "application/json" {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        let bytes = read_limited(req.into_body())
            .await
            .ok_or(ApiError::PayloadTooLarge)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("body", "expected a JSON object"));
        }
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                // The top-level field: `numbers` for `numbers[2]`; a missing
                // one is named only in serde's message.
                let path = e.path().to_string();
                let message = e.inner().to_string();
                let missing = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next());
                let field = path
                    .split(['.', '['])
                    .next()
                    .filter(|f| !f.is_empty() && *f != "?")
                    .or(missing)
                    .unwrap_or("body")
                    .to_string();
                ApiError::Invalid {
                    field: field.into(),
                    error: e.inner().to_string(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        #[serde(default)]
        numbers: Vec<String>,
    }

    async fn read(body: &str) -> Result<Sample, (String, String)> {
        let req = Request::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        match JsonBody::<Sample>::from_request(req, &()).await {
            Ok(JsonBody(s)) => Ok(s),
            Err(ApiError::Invalid { field, error }) => Err((field.into_owned(), error)),
            Err(other) => Err(("?".into(), format!("{other:?}"))),
        }
    }

    #[tokio::test]
    async fn the_failing_field_is_named() {
        assert!(read(r#"{"name":"a"}"#).await.is_ok());
        assert_eq!(read(r#"{"name":1}"#).await.unwrap_err().0, "name");
        assert_eq!(read(r#"{}"#).await.unwrap_err().0, "name");
        assert_eq!(
            read(r#"{"name":"a","numbers":["1",2]}"#)
                .await
                .unwrap_err()
                .0,
            "numbers"
        );
        assert_eq!(read(r#"[1]"#).await.unwrap_err().0, "body");
        assert_eq!(read(r#"{"name":"#).await.unwrap_err().0, "body");
    }
}
