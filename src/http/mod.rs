//! HTTP routes: the provider's webhook, health and metrics, the tablet API
//! and page, and the STOMP WebSocket endpoint.

pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod conn;
pub mod deadline;
pub mod error;
pub mod health;
pub mod json_body;
pub mod pages;
pub mod webhook;
pub mod ws;

use axum::routing::{get, on, MethodFilter};
use axum::Router;

use crate::app::App;

/// The routes of `server.listen` (the server merges SockJS beside them and
/// then adds `security_headers` over both).
pub fn router(app: App) -> Router {
    let webhook_path = app.config.webhook.path.clone();
    let stomp_path = app.config.stomp.path.clone();
    Router::new()
        .route(
            &webhook_path,
            on(MethodFilter::GET.or(MethodFilter::POST), webhook::cdr),
        )
        .route(&stomp_path, get(ws::upgrade))
        .route("/api/stores/{slug}", get(api::store))
        .route("/api/stores/{slug}/calls", get(api::calls))
        .route(
            "/api/stores/{slug}/calls/{seq}/callback",
            axum::routing::post(api::call_back),
        )
        .route("/api/stores/{slug}/customers/{number}", get(api::customer))
        .route(
            "/api/stores/{slug}/reservations",
            get(api::reservations).post(api::reserve),
        )
        .merge(admin_routes())
        .route("/tablet", get(pages::tablet_page))
        .route("/", get(pages::root))
        .route("/favicon.ico", get(pages::favicon))
        .route("/tablet.js", get(pages::tablet_script))
        .route("/tablet/main.js", get(pages::tablet_main))
        .route("/tablet/strings.js", get(pages::tablet_strings))
        .route("/tablet/stomp.js", get(pages::tablet_stomp))
        .route("/tablet/views.js", get(pages::tablet_views))
        .route("/tablet.css", get(pages::tablet_style))
        .route("/sw.js", get(pages::service_worker))
        .route("/manifest.webmanifest", get(pages::manifest))
        .route("/icon-192.png", get(pages::icon_192))
        .route("/icon-512.png", get(pages::icon_512))
        .route("/admin", get(pages::admin_page))
        .route("/admin.js", get(pages::admin_script))
        .route("/admin-strings.js", get(pages::admin_strings))
        .route("/admin.css", get(pages::admin_style))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(app)
}

/// `router` with every answer (the 404 fallback included) carrying the
/// security headers.
pub fn with_security_headers(router: Router) -> Router {
    router.layer(axum::middleware::map_response(security_headers))
}

/// The admin API (docs/http-api.md, "Admin endpoints").
fn admin_routes() -> Router<App> {
    use axum::routing::{delete, post};
    Router::new()
        .route(
            "/api/admin/stores",
            get(admin::stores).post(admin::store_create),
        )
        .route(
            "/api/admin/stores/{slug}",
            get(admin::store_show)
                .patch(admin::store_edit)
                .delete(admin::store_remove),
        )
        .route("/api/admin/stores/{slug}/numbers", post(admin::number_add))
        .route(
            "/api/admin/stores/{slug}/numbers/{number}",
            delete(admin::number_remove),
        )
        .route(
            "/api/admin/stores/{slug}/tokens",
            get(admin::tokens).post(admin::token_issue),
        )
        .route("/api/admin/tokens/{id}", delete(admin::token_revoke))
        .route("/api/admin/instances", get(admin::instances))
        .route("/api/admin/calls", get(admin::calls))
        .route("/api/admin/calls/{seq}", get(admin::call_trail))
        .route("/api/admin/events", get(admin::events))
}

/// Headers every answer carries: no MIME sniffing, no `Referer` leaving
/// the page (tokens travel in URL fragments), and for JSON answers a policy
/// that lets nothing load or frame them. Pages set their own policy.
async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let json = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    resp
}

/// The routes of `webhook.listen`: the provider's webhook, the health
/// checks and the metrics, nothing a flood of tablets or browsers could use.
pub fn webhook_router(app: App) -> Router {
    let webhook_path = app.config.webhook.path.clone();
    Router::new()
        .route(
            &webhook_path,
            on(MethodFilter::GET.or(MethodFilter::POST), webhook::cdr),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}
