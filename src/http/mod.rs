//! HTTP routes: the provider's webhook, health and metrics, the tablet API
//! and page, and the STOMP WebSocket endpoint.

pub mod api;
pub mod health;
pub mod webhook;
pub mod ws;

use axum::routing::{get, on, MethodFilter};
use axum::Router;

use crate::server::App;

pub fn router(app: App) -> Router {
    let webhook_path = app.config.webhook.path.clone();
    let stomp_path = app.config.stomp.path.clone();
    Router::new()
        .route(
            &webhook_path,
            on(MethodFilter::GET.or(MethodFilter::POST), webhook::cdr),
        )
        .route(&stomp_path, get(ws::upgrade))
        .route("/api/stores/{slug}/calls", get(api::calls))
        .route(
            "/api/stores/{slug}/reservations",
            get(api::reservations).post(api::reserve),
        )
        .route("/api/admin/stores", get(api::admin_stores))
        .route("/tablet", get(api::tablet_page))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(app)
}
