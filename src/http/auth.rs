//! Who is calling the API: the bearer token, read once for every route,
//! checked against its store, with failed sign-ins counted per address.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::client_ip::ClientAddr;
use super::error::ApiError;
use crate::app::App;
use crate::auth::{bearer_token, Surface};
use crate::db::TokenInfo;
use crate::token;

/// The token of `Authorization: Bearer <token>` (any case of the scheme),
/// if the request carries one.
#[derive(Debug, Clone, Default)]
pub struct Bearer(pub Option<String>);

impl Bearer {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Bearer(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .map(str::to_string),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Bearer::from_headers(&parts.headers))
    }
}

/// A tablet signed in to the store in the path.
pub struct Tablet(pub TokenInfo);

impl Tablet {
    /// Checks the bearer token of a request for store `slug`.
    pub async fn authorize(
        app: &App,
        client: ClientAddr,
        bearer: Bearer,
        slug: &str,
    ) -> Result<Tablet, ApiError> {
        let ClientAddr(client) = client;
        app.logins
            .check(Surface::Api, client)
            .map_err(ApiError::TooManyFailures)?;
        let Some(presented) = bearer.0 else {
            app.logins.failed(Surface::Api, client, "no bearer token");
            return Err(ApiError::Unauthorized(
                "unauthorized: Authorization: Bearer <tablet token> required",
            ));
        };
        match app.db.token_verify(&presented).await? {
            Some(info) if info.store == slug => Ok(Tablet(info)),
            Some(_) => Err(ApiError::Forbidden(
                "forbidden: the token belongs to another store",
            )),
            None => {
                app.logins
                    .failed(Surface::Api, client, "unknown or revoked token");
                Err(ApiError::Unauthorized(
                    "unauthorized: unknown or revoked token",
                ))
            }
        }
    }
}

/// An operator signed in with `admin.token`, as an extractor: the admin
/// routes take this instead of checking the token themselves. `404` while
/// `admin.token` is unset.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    App: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = <App as axum::extract::FromRef<S>>::from_ref(state);
        let expected = &app.config.admin.token;
        if expected.is_empty() {
            return Err(ApiError::NotFound(
                "admin endpoints are off (admin.token is not set)",
            ));
        }
        let Ok(ClientAddr(client)) = ClientAddr::from_request_parts(parts, state).await;
        app.logins
            .check(Surface::Admin, client)
            .map_err(ApiError::TooManyFailures)?;
        if Bearer::from_headers(&parts.headers)
            .0
            .is_some_and(|t| token::secret_matches(&t, expected))
        {
            return Ok(Admin);
        }
        app.logins
            .failed(Surface::Admin, client, "missing or wrong admin token");
        Err(ApiError::Unauthorized("unauthorized"))
    }
}
