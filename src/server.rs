//! Wiring: open the database, start the bus and the hub, serve HTTP, run
//! the retention job, and stop gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::local::LocalBus;
use crate::bus::{EventHandler, SharedBus};
use crate::config::{BusKind, Config};
use crate::db::{Db, PublishMarks};
use crate::hub::Hub;

/// How often the retention job looks for old calls.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub db: Db,
    /// Writes "handed to the bus" marks in shared transactions.
    pub marks: PublishMarks,
    pub bus: SharedBus,
    pub hub: Arc<Hub>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the instance starts to stop.
    pub shutdown: CancellationToken,
}

/// A running instance.
pub struct Server {
    pub addr: SocketAddr,
    pub app: App,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Asks the instance to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.app.shutdown.cancel();
        self.task.await?
    }

    /// Waits until the instance stops (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Raises the open-file soft limit to the hard limit: every tablet is a
/// socket. Returns the resulting cap.
pub fn raise_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Opens the database (running migrations), starts the bus and serves.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    match raise_file_limit() {
        Some(cap) => tracing::info!(
            open_files = cap,
            "open-file limit raised to the hard limit: about {} tablets per instance",
            cap.saturating_sub(64)
        ),
        None => tracing::warn!("could not read or raise the open-file limit"),
    }
    let config = Arc::new(config);
    let db = Db::connect(&config.database.url).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open database {}: {e}",
            redact_url(&config.database.url)
        )
    })?;
    db.migrate().await?;
    let metrics = crate::metrics::install();
    let shutdown = CancellationToken::new();
    let hub = Arc::new(Hub::new(config.clone(), db.clone()));
    let handler: Arc<dyn EventHandler> = hub.clone();
    let bus: SharedBus = match config.bus.kind {
        BusKind::Local => Arc::new(LocalBus::start(handler)),
        BusKind::Amqp => crate::bus::amqp::AmqpBus::start(&config, handler).await?,
    };
    let app = App {
        config: config.clone(),
        db: db.clone(),
        marks: PublishMarks::start(db.clone()),
        bus,
        hub,
        metrics,
        shutdown: shutdown.clone(),
    };

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "bizcall {} listening on http://{addr} (database {}, bus {:?})",
        env!("CARGO_PKG_VERSION"),
        db.kind(),
        config.bus.kind
    );

    tokio::spawn(retention(app.clone()));
    tokio::spawn(revocation(app.clone()));
    // On stop, every tablet is told to reconnect (to another instance).
    let closing = app.clone();
    tokio::spawn(async move {
        closing.shutdown.cancelled().await;
        closing.hub.close_all("server restart").await;
    });

    let router = crate::http::router(app.clone());
    let served = app.clone();
    let task = tokio::spawn(async move {
        let stop = served.shutdown.clone();
        // Popups and webhook answers are small writes that must leave at
        // once: no Nagle delay on any connection.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let result = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
        // Give tablets a moment to receive their ERROR and go.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while served.hub.counts().0 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served.bus.shutdown().await;
        served.db.close().await;
        tracing::info!("bizcall stopped");
        result.map_err(anyhow::Error::from)
    });
    Ok(Server { addr, app, task })
}

/// Deletes calls older than `database.retention_days`, now and hourly.
async fn retention(app: App) {
    loop {
        let days = i64::from(app.config.database.retention_days);
        let cutoff = Utc::now() - chrono::Duration::days(days);
        match app.db.delete_calls_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                crate::metrics::calls_deleted(n);
                tracing::info!(deleted = n, days, "retention: old calls deleted");
            }
            Err(e) => tracing::warn!(error = %e, "retention job failed; will try again"),
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

/// How often connected tablets' tokens are checked for revocation.
const REVOCATION_EVERY: Duration = Duration::from_secs(2);

/// Closes the connections of tablets whose token was revoked (or whose
/// store was removed) since they connected.
async fn revocation(app: App) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(REVOCATION_EVERY) => {}
        }
        let connected: Vec<String> = app.hub.token_ids().into_iter().collect();
        if connected.is_empty() {
            continue;
        }
        match app.db.tokens_not_live(&connected).await {
            Ok(dead) if !dead.is_empty() => {
                let live: std::collections::HashSet<String> = connected
                    .into_iter()
                    .filter(|id| !dead.contains(id))
                    .collect();
                let closed = app.hub.close_revoked(&live);
                tracing::info!(closed, "closed tablets whose token was revoked");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "revocation check failed"),
        }
    }
}

/// A URL fit for logs: any password replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
