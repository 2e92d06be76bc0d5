//! HTTP routes: the provider's webhook, health and metrics, the tablet API
//! and page, and the STOMP WebSocket endpoint.

pub mod health;
pub mod webhook;

use axum::routing::{get, on, MethodFilter};
use axum::Router;

use crate::server::App;

pub fn router(app: App) -> Router {
    let webhook_path = app.config.webhook.path.clone();
    Router::new()
        .route(
            &webhook_path,
            on(MethodFilter::GET.or(MethodFilter::POST), webhook::cdr),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(app)
}
