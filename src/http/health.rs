//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::App;

/// 200 while the process runs.
pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when this instance can take CDRs (the database answers). A broker
/// that is down does not make the instance unready: CDRs are still stored.
pub async fn readyz(State(app): State<App>) -> Response {
    // Bounded: a database that stops answering must not hold the probe.
    let db_up = tokio::time::timeout(app.config.database.timeout, app.db.ping())
        .await
        .unwrap_or(false);
    let body = serde_json::json!({
        "database": if db_up { "up" } else { "down" },
        "bus": app.bus.state().as_str(),
        "bus_node": app.bus.node(),
        "draining": app.shutdown.is_cancelled(),
    });
    let status = if db_up && !app.shutdown.is_cancelled() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<App>) -> Response {
    crate::metrics::runtime_tasks(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
