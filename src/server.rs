//! Wiring: open the database, start the bus and the hub, serve HTTP, run
//! the retention job, and stop gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http::conn::{Conn, Limits, Timeouts, Tracked};
use crate::http::deadline::{ServedBody, TimedBody};

use crate::app::App;
use crate::auth::LoginGuard;
use crate::bus::local::LocalBus;
use crate::bus::{EventHandler, SharedBus};
use crate::config::{BusKind, Config};
use crate::db::{Db, PublishMarks};
use crate::delivery::Delivery;
use crate::hub::Hub;

/// How often the retention job looks for old calls.
/// The longest a stopping instance waits for tablets to go and requests
/// to finish before it closes its listeners.
const DRAIN_FOR: Duration = Duration::from_secs(3);
/// The longest a stopping instance waits for its background jobs (a
/// retention delete under way, the presence goodbye).
const JOBS_WITHIN: Duration = Duration::from_secs(10);

/// A running instance.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `webhook.listen` bound, when set.
    pub webhook_addr: Option<SocketAddr>,
    pub app: App,
    /// The SockJS HTTP-transport sessions of tablets on this instance.
    pub sockjs: Arc<crate::sockjs::session::Registry>,
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

/// Descriptors kept back from `server.max_connections` when it is derived
/// from the open-file limit: for the database pool, the broker, log files,
/// and the webhook listener's own share when there is one.
fn derived_max_connections(open_files: Option<u64>, config: &Config) -> usize {
    let files = open_files.unwrap_or(1024) as usize;
    let webhook = config
        .webhook
        .listen
        .map_or(0, |_| config.webhook.max_connections);
    let headroom = (files / 50).max(256) + webhook;
    files.saturating_sub(headroom).max(16)
}

/// Opens the database (running migrations), starts the bus and serves.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let open_files = raise_file_limit();
    if open_files.is_none() {
        tracing::warn!("could not read or raise the open-file limit");
    }
    config.check_webhook_exposure()?;
    if config.webhook_is_open() {
        tracing::warn!(
            "the webhook {} is open to anybody (no webhook.key, no webhook.allow_from){}: anyone who can reach it can store calls; set one of them",
            config.webhook.path,
            if config.webhook.open { ", as webhook.open = true says" } else { "" }
        );
    }
    if config.compat.anonymous {
        tracing::warn!(
            origins = ?config.stomp.allowed_origins,
            "compat.anonymous is on: browsers on stomp.allowed_origins may connect without a token and follow the calls (read-only) of stores opted in for anonymous tablets; give those tablets tokens and turn it off"
        );
    }
    let max_connections = config
        .server
        .max_connections
        .unwrap_or_else(|| derived_max_connections(open_files, &config));
    tracing::info!(
        open_files = open_files.unwrap_or(0),
        max_connections,
        "connection cap on {}: {max_connections} (server.max_connections{})",
        config.server.listen,
        if config.server.max_connections.is_some() {
            ""
        } else {
            ", derived from the open-file limit"
        }
    );
    let config = Arc::new(config);
    let db = Db::connect_sized(&config.database.url, config.database.pool_size).await?;
    db.migrate().await?;
    let metrics = crate::metrics::install();
    let shutdown = CancellationToken::new();
    // Event times follow the database's clock (clock.rs), from the first.
    if !matches!(db, Db::Sqlite(_)) {
        crate::clock::follow(db.clone(), shutdown.clone()).await;
    }
    let hub = Arc::new(Hub::new(config.clone()));
    // Background jobs, waited for on stop before the bus and the database
    // close (handled events being published are among them).
    let jobs = TaskTracker::new();
    let delivery = Arc::new(Delivery::new(
        config.clone(),
        db.clone(),
        hub.clone(),
        jobs.clone(),
    ));
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}{}",
                config.server.listen,
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another program has that port; server.listen, or BIZCALL_SERVER__LISTEN=127.0.0.1:8081, picks another)"
                } else {
                    ""
                }
            )
        })?;
    let addr = listener.local_addr()?;
    let identity = Arc::new(crate::presence::Identity::new(addr.port()));
    let trail = crate::trail::Trail::start(db.clone(), identity.id.clone(), shutdown.clone());
    delivery.attach_trail(trail.clone());
    let handler: Arc<dyn EventHandler> = delivery.clone();
    if config.bus.kind == BusKind::Amqp {
        same_routing_as_live_instances(&db, &config).await?;
    }
    let bus: SharedBus = match config.bus.kind {
        BusKind::Local => Arc::new(LocalBus::start(handler)),
        BusKind::Amqp => crate::bus::amqp::AmqpBus::start(&config, handler).await?,
    };
    delivery.attach_bus(&bus);
    // Store-routed delivery binds a store while it has tablets here.
    let follows = Arc::downgrade(&bus);
    hub.on_interest(move |change| {
        if let Some(bus) = follows.upgrade() {
            bus.interest(change);
        }
    });
    let app = App {
        config: config.clone(),
        db: db.clone(),
        bus: bus.clone(),
        hub,
        delivery,
        logins: Arc::new(LoginGuard::grouped(
            config.server.auth_fail_limit,
            config.server.auth_fail_window,
            config.server.address_group(),
        )),
        metrics,
        shutdown: shutdown.clone(),
        identity: identity.clone(),
        intake: crate::intake::Intake {
            config: config.clone(),
            db: db.clone(),
            bus: bus.clone(),
            marks: PublishMarks::start(db.clone()),
            trail: trail.clone(),
            tasks: jobs.clone(),
        },
    };
    // The SockJS HTTP-transport sessions of tablets on this instance (a
    // stopping instance waits for them).
    let sockjs = Arc::new(crate::sockjs::session::Registry::new(
        config.server.address_group(),
    ));
    let served_sessions = sockjs.clone();

    let webhook_listener = match config.webhook.listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {at} (webhook.listen): {e}"))?,
        ),
        None => None,
    };
    let webhook_addr = match &webhook_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    if let Some(at) = webhook_addr {
        tracing::info!(
            max_connections = config.webhook.max_connections,
            "webhook listener on http://{at} (webhook and health checks only)"
        );
    }
    tracing::info!(
        instance = %app.identity.id,
        "bizcall {} listening on http://{addr} (database: {} {}; bus: {})",
        env!("CARGO_PKG_VERSION"),
        db.kind(),
        without_password(&config.database.url),
        describe_bus(&config),
    );

    jobs.spawn(crate::fleet_jobs::run(app.clone()));
    jobs.spawn(revocation(app.clone()));
    jobs.spawn(crate::presence::run(
        config.clone(),
        db.clone(),
        app.hub.clone(),
        app.identity.clone(),
        shutdown.clone(),
    ));
    // Several instances: the database carries what the bus does not.
    if config.bus.kind == BusKind::Amqp {
        jobs.spawn(crate::relay::run(
            crate::relay::Parts {
                config: config.clone(),
                db: db.clone(),
                hub: app.hub.clone(),
                delivery: app.delivery.clone(),
                bus: bus.clone(),
            },
            shutdown.clone(),
        ));
    }
    // On stop, every tablet is told to reconnect (to another instance).
    let closing = app.clone();
    jobs.spawn(async move {
        closing.shutdown.cancelled().await;
        closing.hub.close_all();
    });

    let timeouts = Timeouts {
        header: config.server.header_timeout,
        idle: config.server.idle_timeout,
        body: config.server.body_timeout,
    };
    let main = Listener {
        name: "main",
        limits: Limits::new(max_connections, config.server.max_pending_per_address),
        router: main_routes(&app, &sockjs),
        timeouts,
    };
    // Listeners keep accepting while the instance drains, so a polling
    // SockJS tablet between two polls still fetches its ERROR; `closed`
    // ends them when the drain is over.
    let closed = CancellationToken::new();
    let webhook = webhook_listener.map(|l| {
        let side = Listener {
            name: "webhook",
            // The provider's connections are not tablets: no per-address share.
            limits: Limits::new(config.webhook.max_connections, 0),
            router: crate::http::webhook_router(app.clone()),
            timeouts,
        };
        let limits = side.limits.clone();
        let closed = closed.clone();
        let trusted = config.clone();
        let task = tokio::spawn(async move { side.accept_loop(l, &trusted, closed).await });
        (task, limits)
    });
    let served = app.clone();
    let task = tokio::spawn(async move {
        let limits = main.limits.clone();
        let config = served.config.clone();
        let accepting = {
            let closed = closed.clone();
            tokio::spawn(async move { main.accept_loop(listener, &config, closed).await })
        };
        served.shutdown.cancelled().await;
        // Give tablets a moment to receive their ERROR and go, SockJS
        // sessions a moment to have what they queued fetched, and requests
        // under way a moment to finish.
        let busy = || {
            served.hub.counts().0 > 0
                || sockjs.undelivered() > 0
                || sockjs.running() > 0
                || limits.requests() > 0
                || webhook.as_ref().is_some_and(|(_, l)| l.requests() > 0)
        };
        settle(DRAIN_FOR, busy).await;
        closed.cancel();
        let _ = accepting.await;
        if let Some((w, _)) = webhook {
            let _ = w.await;
        }
        // Idle connections close at once, others as their answer is written.
        settle(Duration::from_secs(1), || limits.open() > 0).await;
        jobs.close();
        if tokio::time::timeout(JOBS_WITHIN, jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "background jobs still running {JOBS_WITHIN:?} after the stop; stopping anyway"
            );
        }
        trail.flush().await;
        served.bus.shutdown().await;
        served.db.close().await;
        tracing::info!("bizcall stopped");
        Ok(())
    });
    Ok(Server {
        addr,
        webhook_addr,
        app,
        sockjs: served_sessions,
        task,
    })
}

/// Waits while `busy` says so, at most `within`.
async fn settle(within: Duration, busy: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while busy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The routes of `server.listen`: the HTTP API, pages and `/ws`, and the
/// SockJS endpoint beside them when `compat.sockjs_path` is set; every
/// answer carries the security headers.
fn main_routes(app: &App, sockjs: &Arc<crate::sockjs::session::Registry>) -> Router {
    let mut routes = crate::http::router(app.clone());
    let sockjs_path = &app.config.compat.sockjs_path;
    if !sockjs_path.is_empty() {
        routes = routes.merge(crate::sockjs::router(
            app.clone(),
            sockjs_path,
            sockjs.clone(),
        ));
    }
    crate::http::with_security_headers(routes)
}

/// One listening socket: its routes, caps and timeouts.
struct Listener {
    name: &'static str,
    limits: Arc<Limits>,
    router: Router,
    timeouts: Timeouts,
}

/// Answers a connection refused at accept without reading from it.
fn refuse(stream: TcpStream, status: &str, why: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    // A fresh socket's send buffer is empty: this does not block.
    let _ = stream.try_write(answer.as_bytes());
}

impl Listener {
    /// Accepts until `stop`; refuses at once what is over a cap.
    async fn accept_loop(self, listener: TcpListener, config: &Config, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut last_warning: Option<Instant> = None;
        let mut warn = |what: &str| {
            // At most one line every ten seconds for a flood.
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_warning = Some(Instant::now());
                tracing::warn!(listener = this.name, "{what}");
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or memory: wait for some to free.
                        warn(&format!("accept error: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = this.limits.try_open() else {
                crate::metrics::connection_refused("cap");
                warn(&format!(
                    "connection cap of {} reached: refusing new connections",
                    this.limits.max_open()
                ));
                refuse(stream, "503 Service Unavailable", "too many connections");
                continue;
            };
            // Behind a trusted proxy the client is known only from the
            // request; the WebSocket upgrade counts it then.
            let pending = if this.name == "main" && !config.is_trusted_proxy(peer.ip()) {
                match this.limits.try_pending(peer.ip()) {
                    Some(p) => Some(p),
                    None => {
                        crate::metrics::connection_refused("address");
                        warn(&format!(
                            "too many connections from {} that are not connected tablets",
                            peer.ip()
                        ));
                        refuse(
                            stream,
                            "429 Too Many Requests",
                            "too many connections from this address",
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            crate::metrics::connections_open(this.name, this.limits.open());
            let conn = Conn::new(peer, this.limits.clone(), pending);
            let served = this.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                served.serve(stream, conn, slot, stop).await;
                crate::metrics::connections_open(served.name, served.limits.open());
            });
        }
    }

    /// Serves one connection's HTTP requests (and its WebSocket upgrade),
    /// closing it when a header or idle timeout passes.
    async fn serve(
        &self,
        stream: TcpStream,
        conn: Arc<Conn>,
        slot: crate::http::conn::OpenSlot,
        stop: CancellationToken,
    ) {
        // Popups and webhook answers are small writes that must leave at
        // once: no Nagle delay on any connection.
        let _ = stream.set_nodelay(true);
        let peer = conn.peer;
        let io = TokioIo::new(Tracked::new(stream, conn.clone(), slot));
        let router = self.router.clone();
        let in_service = conn.clone();
        let body_timeout = self.timeouts.body;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            in_service.request_started();
            let expired = Arc::new(AtomicBool::new(false));
            let mut req = req.map(|body| {
                axum::body::Body::new(TimedBody::new(body, body_timeout, expired.clone()))
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(in_service.clone());
            let router = router.clone();
            let conn = in_service.clone();
            async move {
                let answer = router.oneshot(req).await;
                answer.map(|resp| {
                    let resp = if expired.load(Ordering::Acquire) {
                        crate::metrics::connection_timed_out();
                        tracing::debug!(%peer, "request body not received within server.body_timeout");
                        (
                            axum::http::StatusCode::REQUEST_TIMEOUT,
                            [(axum::http::header::CONNECTION, "close")],
                            "request body not received in time\n",
                        )
                            .into_response()
                    } else {
                        resp
                    };
                    // Served once its body has been sent, not its head.
                    resp.map(|body| axum::body::Body::new(ServedBody::new(body, conn)))
                })
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Header and idle timeouts are ours (`Conn::deadline`): hyper's own
        // header timeout would also cut kept-alive connections short.
        builder.timer(TokioTimer::new()).header_read_timeout(None);
        let connection = builder.serve_connection(io, service).with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            let deadline = conn.deadline(self.timeouts);
            let wake = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep_until(wake) => {
                    if conn.deadline(self.timeouts).is_some_and(|d| Instant::now() >= d) {
                        crate::metrics::connection_timed_out();
                        tracing::debug!(%peer, "HTTP connection closed: header or idle timeout");
                        return;
                    }
                }
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
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
        let connected: Vec<String> = app
            .hub
            .presence()
            .tokens()
            .iter()
            .map(|t| t.to_string())
            .collect();
        if connected.is_empty() {
            continue;
        }
        match app.db.tokens_not_live(&connected).await {
            Ok(dead) if !dead.is_empty() => {
                let dead: std::collections::HashSet<String> = dead.into_iter().collect();
                let closed = app.hub.close_revoked(&dead);
                tracing::info!(closed, "closed tablets whose token was revoked");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "revocation check failed"),
        }
    }
}

/// Fanout and store-routed instances do not see each other's events
/// (docs/rabbitmq.md, "Store-routed delivery"): an instance whose
/// `amqp.routing` differs from a live instance's refuses to start.
async fn same_routing_as_live_instances(db: &Db, config: &Config) -> anyhow::Result<()> {
    let mine = config.bus_mode();
    let live = match db.instances_alive(crate::presence::alive_since()).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the live instances' routing");
            return Ok(());
        }
    };
    let other = live.iter().find(|i| {
        i.bus
            .as_deref()
            .is_some_and(|b| (b == "fanout" || b == "store") && b != mine)
    });
    if let Some(other) = other {
        let theirs = other.bus.as_deref().unwrap_or_default();
        let ago = (crate::db::now_millis() - other.heartbeat_at).max(0) / 1000;
        anyhow::bail!(
            "amqp.routing is \"{mine}\" but instance {} (heard from {ago} s ago) uses \"{theirs}\": \
             the two never see each other's calls, so every instance must use the same routing; \
             stop the {theirs} instances first (or set amqp.routing = \"{theirs}\")",
            other.name
        );
    }
    Ok(())
}

/// The bus as the start-up line names it.
pub fn describe_bus(config: &Config) -> String {
    match config.bus.kind {
        BusKind::Local => "in-process (one instance)".into(),
        BusKind::Amqp => format!(
            "RabbitMQ {}, {}",
            config
                .amqp
                .nodes()
                .iter()
                .map(|n| without_password(n))
                .collect::<Vec<_>>()
                .join(", "),
            match config.amqp.routing {
                crate::config::Routing::Fanout => format!("exchange {}", config.amqp.exchange),
                crate::config::Routing::Store =>
                    format!("store-routed, exchange {}", config.amqp.routed_exchange()),
            }
        ),
    }
}

/// A URL with its password left out altogether (`amqp://guest@host`).
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}
