//! The RabbitMQ bus (docs/rabbitmq.md): a durable fanout exchange, one
//! exclusive auto-delete queue per instance, per-message TTL, publisher
//! confirms, ack modes, retry with backoff, optional dead-lettering, and a
//! reconnect loop of our own that declares the topology afresh each time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::AsyncTcpStream;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use tokio::sync::{mpsc, RwLock};
use tokio_util::sync::CancellationToken;

use super::tls::{self, Tls};
use super::{Bus, BusError, BusState, EventHandler, Handled, Interest};
use crate::call::{BusEvent, CallEvent, HandledEvent};
use crate::config::{AckMode, AmqpConfig, Config, QueueType, Routing};
use crate::metrics as m;

/// How long a publish waits for the broker's confirm before it counts as
/// failed (the event then waits in the outbox).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept for republishing while the broker is away; the oldest go
/// first (they are the nearest to expiry anyway).
const OUTBOX_CAPACITY: usize = 10_000;
/// Reconnect delays: exponential from the first to the cap, with jitter.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// Time one node has to accept a connection, finish TLS and AMQP's
/// handshake; then the next node is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not be used, each with its own line for people.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("RabbitMQ exchange '{exchange}' exists with type '{current}' but bizcall needs '{needed}': delete it on the broker (for vhost /: rabbitmqctl eval 'rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{exchange}\">>), false, <<\"cli\">>).') or choose another {setting}")]
    ExchangeType {
        exchange: String,
        current: String,
        needed: &'static str,
        setting: &'static str,
    },
    #[error("RabbitMQ at {broker} refused the credentials in amqp.url: check the user name and password")]
    Credentials { broker: String },
    #[error("RabbitMQ at {broker}: {detail}")]
    Refused { broker: String, detail: String },
    #[error("RabbitMQ at {broker}: {detail}")]
    Tls { broker: String, detail: String },
    #[error("amqp.tls: {0}")]
    TlsSettings(String),
    #[error("RabbitMQ unreachable at {broker}: {detail}; retrying")]
    Unreachable { broker: String, detail: String },
}

impl LinkError {
    /// Errors that retrying will not fix: the instance stops at start.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, LinkError::Unreachable { .. })
    }
}

/// The broker address from an AMQP URL, without credentials, for messages.
pub fn broker_address(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 })
        ),
        Err(_) => "the broker in amqp.url".into(),
    }
}

pub(crate) fn classify(err: &lapin::Error, config: &AmqpConfig, node: &str) -> LinkError {
    let broker = broker_address(node);
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind() {
        let text = amqp.get_message().to_string();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if text.contains("Login was refused") =>
            {
                return LinkError::Credentials { broker };
            }
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                if text.contains("inequivalent arg 'type'") =>
            {
                let current = quoted_after(&text, "current is '").unwrap_or("another type");
                let routed = config.routed_exchange();
                let (exchange, needed, setting) =
                    if quoted_after(&text, "for exchange '") == Some(routed.as_str()) {
                        (routed.clone(), "direct", "amqp.routed_exchange")
                    } else {
                        (config.exchange.clone(), "fanout", "amqp.exchange")
                    };
                return LinkError::ExchangeType {
                    exchange,
                    current: current.to_string(),
                    needed,
                    setting,
                };
            }
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {}
            _ => {
                return LinkError::Refused {
                    broker,
                    detail: text,
                };
            }
        }
    }
    LinkError::Unreachable {
        broker,
        detail: err.to_string(),
    }
}

/// The text between `marker` and the next `'` in a broker's message.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let (_, rest) = text.split_once(marker)?;
    rest.split('\'').next()
}

/// One live connection and its channels.
struct Link {
    conn: Connection,
    publish: Channel,
    consume: Channel,
    /// Binds and unbinds stores (`amqp.routing = "store"`), so a refused
    /// one never closes the consuming channel.
    binds: Channel,
    queue: String,
    /// The node's address, without credentials (`amqp://host:port`).
    node: String,
}

struct Inner {
    config: AmqpConfig,
    tls: Option<Arc<Tls>>,
    /// `amqp.url`'s nodes, rotated by a random offset so that instances
    /// with the same list spread over the cluster.
    nodes: Vec<String>,
    /// The node tried first next time: the one after the last in use.
    cursor: AtomicUsize,
    handler: Arc<dyn EventHandler>,
    link: RwLock<Option<Arc<Link>>>,
    /// The node of the live link, for `/readyz`.
    node: Mutex<Option<String>>,
    connected: AtomicBool,
    /// Events whose publish failed, republished on reconnection while live.
    outbox: Mutex<VecDeque<BusEvent>>,
    /// `bus.message_ttl`: a handled event expires this long after `at`.
    ttl: Duration,
    /// Where events are published, and with which routing key.
    routing: Routing,
    publish_exchange: String,
    /// Store-routed delivery: which stores are wanted and bound.
    bindings: tokio::sync::Mutex<Bindings>,
    stop: CancellationToken,
}

/// Store-routed delivery's bindings (docs/rabbitmq.md, "Store-routed
/// delivery"): the stores with a tablet here, those whose last tablet left
/// less than `amqp.unbind_grace` ago, and those bound on the live link.
#[derive(Default)]
struct Bindings {
    /// Store → `None` while it has tablets here, or when its grace ends.
    wanted: HashMap<String, Option<tokio::time::Instant>>,
    /// The link the stores in `bound` are bound on; `None` between links.
    link: Option<Arc<Link>>,
    bound: HashSet<String>,
}

impl Bindings {
    /// The end of the first grace still running.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.wanted.values().flatten().min().copied()
    }
}

pub struct AmqpBus {
    inner: Arc<Inner>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Store-routed delivery's changes of interest, for the binder task.
    interest: Option<mpsc::UnboundedSender<Interest>>,
}

impl AmqpBus {
    /// Connects (a clash of exchange types or refused credentials stop the
    /// start with one line; an unreachable broker is retried in the
    /// background) and starts consuming.
    pub async fn start(
        config: &Config,
        handler: Arc<dyn EventHandler>,
    ) -> anyhow::Result<Arc<dyn Bus>> {
        let tls = load_tls(&config.amqp).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut nodes = config.amqp.nodes();
        let offset = rand::rng().random_range(0..nodes.len().max(1));
        nodes.rotate_left(offset);
        let inner = Arc::new(Inner {
            config: config.amqp.clone(),
            tls,
            nodes,
            cursor: AtomicUsize::new(0),
            handler,
            link: RwLock::new(None),
            node: Mutex::new(None),
            connected: AtomicBool::new(false),
            outbox: Mutex::new(VecDeque::new()),
            ttl: config.bus.message_ttl,
            routing: config.amqp.routing,
            publish_exchange: match config.amqp.routing {
                Routing::Fanout => config.amqp.exchange.clone(),
                Routing::Store => config.amqp.routed_exchange(),
            },
            bindings: tokio::sync::Mutex::new(Bindings::default()),
            stop: CancellationToken::new(),
        });
        m::bus_connected(false);
        for node in &inner.nodes {
            m::bus_node(&broker_address(node), false);
        }
        // At start every node is tried once: the first that answers is
        // used; when none does, a setting no retry can fix (credentials,
        // TLS, the exchange's type) stops the start, anything else is
        // retried in the background.
        let first = match inner.connect_any(true).await {
            Ok(link) => Some(link),
            Err(e) if e.is_fatal() => return Err(anyhow::anyhow!("{e}")),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        };
        let interest = (inner.routing == Routing::Store).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(bind_loop(inner.clone(), rx));
            tx
        });
        let supervisor = tokio::spawn(supervise(inner.clone(), first));
        Ok(Arc::new(AmqpBus {
            inner,
            supervisor: Mutex::new(Some(supervisor)),
            interest,
        }))
    }
}

/// The TLS settings, loaded once: an unusable one stops the start.
pub(crate) fn load_tls(config: &AmqpConfig) -> Result<Option<Arc<Tls>>, LinkError> {
    Tls::load(config)
        .map_err(|e| LinkError::TlsSettings(e.trim_start_matches("amqp.tls: ").to_string()))
}

/// Opens a connection to the first of `config`'s nodes that answers and a
/// channel on it (the `bizcall dlq` commands).
pub(crate) async fn open(config: &AmqpConfig) -> Result<(Connection, Channel), LinkError> {
    let tls = load_tls(config)?;
    let mut first_error = None;
    for node in config.nodes() {
        match open_node(&node, config, tls.as_ref()).await {
            Ok(conn) => {
                let channel = conn
                    .create_channel()
                    .await
                    .map_err(|e| classify(&e, config, &node))?;
                return Ok((conn, channel));
            }
            Err(e) => {
                tracing::debug!("{e}");
                if first_error
                    .as_ref()
                    .is_none_or(|f: &LinkError| !f.is_fatal())
                {
                    first_error = Some(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| LinkError::Unreachable {
        broker: "amqp.url".into(),
        detail: "no node listed".into(),
    }))
}

/// Opens a connection to one node: TCP, TLS for `amqps://` (amqp.tls),
/// then AMQP's handshake, all within `CONNECT_TIMEOUT`. A connection
/// closed right after the broker asked for a client certificate we do not
/// have is tried once more: twice in a row, it is the broker refusing it
/// (a setting to change, so the start stops); once, the broker going away.
pub(crate) async fn open_node(
    node: &str,
    config: &AmqpConfig,
    tls: Option<&Arc<Tls>>,
) -> Result<Connection, LinkError> {
    match open_node_once(node, config, tls).await {
        Err(Attempt::ResetAfterCertificateRequest(_)) => {
            match open_node_once(node, config, tls).await {
                Ok(conn) => Ok(conn),
                Err(Attempt::Failed(e)) => Err(e),
                Err(Attempt::ResetAfterCertificateRequest(broker)) => Err(LinkError::Tls {
                    broker,
                    detail: tls::RESET_AFTER_CERTIFICATE_REQUEST.into(),
                }),
            }
        }
        Err(Attempt::Failed(e)) => Err(e),
        Ok(conn) => Ok(conn),
    }
}

/// How one connection attempt failed.
enum Attempt {
    Failed(LinkError),
    /// Closed after the broker asked for a client certificate we do not
    /// have (the broker's address).
    ResetAfterCertificateRequest(String),
}

impl From<LinkError> for Attempt {
    fn from(e: LinkError) -> Self {
        Attempt::Failed(e)
    }
}

async fn open_node_once(
    node: &str,
    config: &AmqpConfig,
    tls: Option<&Arc<Tls>>,
) -> Result<Connection, Attempt> {
    let broker = broker_address(node);
    let uri: AMQPUri = node.parse().map_err(|e: String| LinkError::Refused {
        broker: broker.clone(),
        detail: format!("amqp.url is not a usable URL ({})", e.replace(node, "…")),
    })?;
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    let session = match uri.scheme {
        AMQPScheme::AMQP => None,
        AMQPScheme::AMQPS => {
            let tls = tls.ok_or_else(|| {
                LinkError::TlsSettings("no TLS configuration could be loaded".into())
            })?;
            Some(Arc::new(
                tls.session(&host).map_err(LinkError::TlsSettings)?,
            ))
        }
    };
    let tls_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let runtime = lapin::runtime::default_runtime().map_err(|e| LinkError::Unreachable {
        broker: broker.clone(),
        detail: e.to_string(),
    })?;
    let props = ConnectionProperties::default()
        .with_connection_name(format!("bizcall {}", env!("CARGO_PKG_VERSION")).into());
    let connect = {
        let session = session.clone();
        let tls_failure = tls_failure.clone();
        let host = host.clone();
        async move |_uri: AMQPUri, runtime| {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            match &session {
                None => Ok(stream),
                Some(s) => match stream.into_rustls(&s.connector, &s.server_name).await {
                    Ok(stream) => Ok(stream),
                    Err(e) => {
                        if let Some(why) = tls::explain(&e, s) {
                            *tls_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        }
                        Err(e.into())
                    }
                },
            }
        }
    };
    let attempt = Connection::connector(uri, runtime, connect, props);
    let result = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
    let recorded = tls_failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(detail) = recorded {
        return Err(LinkError::Tls { broker, detail }.into());
    }
    let err = match result {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => e,
        Err(_) => {
            if session.is_none() && speaks_tls(&host, port, tls).await {
                return Err(expects_tls(broker).into());
            }
            return Err(LinkError::Unreachable {
                broker,
                detail: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            }
            .into());
        }
    };
    // TLS trouble that shows only after the handshake: a TLS 1.3 broker
    // refuses a missing client certificate with its first record.
    if let (Some(s), lapin::ErrorKind::IOError(io)) = (&session, err.kind()) {
        if let Some(detail) = tls::explain(io, s) {
            return Err(LinkError::Tls { broker, detail }.into());
        }
        if tls::reset_after_certificate_request(io, s) {
            return Err(Attempt::ResetAfterCertificateRequest(broker));
        }
    }
    let classified = classify(&err, config, node);
    if session.is_none()
        && matches!(classified, LinkError::Unreachable { .. })
        && speaks_tls(&host, port, tls).await
    {
        return Err(expects_tls(broker).into());
    }
    Err(classified.into())
}

/// A refusal of rights (ACCESS_REFUSED): no retry fixes it.
fn is_access_refused(e: &LinkError) -> bool {
    matches!(e, LinkError::Refused { detail, .. } if detail.contains("ACCESS_REFUSED"))
}

fn expects_tls(broker: String) -> LinkError {
    LinkError::Tls {
        broker,
        detail: "that port speaks TLS: use amqps:// (or the broker's plain port, usually 5672)"
            .into(),
    }
}

/// Whether a TLS handshake at `host:port` gets as far as the server's
/// answer (asked after an `amqp://` connection failed there).
async fn speaks_tls(host: &str, port: u16, tls: Option<&Arc<Tls>>) -> bool {
    let Some(session) = tls.and_then(|t| t.session(host).ok()) else {
        return false;
    };
    let probe = async {
        let runtime = lapin::runtime::default_runtime().ok()?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await.ok()?;
        Some(
            match stream
                .into_rustls(&session.connector, &session.server_name)
                .await
            {
                Ok(_) => true,
                Err(e) => tls::tls_error(&e).is_some_and(|e| {
                    !matches!(
                        e,
                        rustls_connector::rustls::Error::InvalidMessage(_)
                            | rustls_connector::rustls::Error::InappropriateMessage { .. }
                    )
                }),
            },
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Some(true))
    )
}

/// Opens a connection to `node` and declares the whole topology.
async fn connect(inner: &Inner, node: &str) -> Result<Link, LinkError> {
    let config = &inner.config;
    let fail = |e: lapin::Error| classify(&e, config, node);
    let conn = open_node(node, config, inner.tls.as_ref()).await?;
    let publish = conn.create_channel().await.map_err(fail)?;
    match config.routing {
        Routing::Fanout => declare_exchange(&publish, config).await,
        Routing::Store => declare_routed_exchange(&publish, config).await,
    }
    .map_err(fail)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail)?;

    let mut args = FieldTable::default();
    if config.dead_letter {
        // A quorum queue answers only while a majority of its nodes is up:
        // popups must not wait for it, so a slow or failed declaration is
        // logged and the link goes on (dead letters still reach the
        // exchange, and its queue once declared).
        match tokio::time::timeout(CONFIRM_TIMEOUT, declare_dead_letter(&conn, config)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let e = fail(e);
                if is_access_refused(&e) {
                    return Err(e);
                }
                tracing::warn!(queue = %config.dead_letter_queue, broker = %broker_address(node), "dead-letter queue not declared now: {e}");
            }
            Err(_) => tracing::warn!(
                queue = %config.dead_letter_queue,
                broker = %broker_address(node),
                "dead-letter queue not declared now: no answer within {}s (is a majority of its nodes up?)",
                CONFIRM_TIMEOUT.as_secs()
            ),
        }
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(config.dead_letter_exchange.as_str().into()),
        );
    }
    let consume = conn.create_channel().await.map_err(fail)?;
    // A new name on every connection: an old queue of ours that the broker
    // has not yet dropped must not lock us out.
    let queue = format!("{}-{}", config.queue_prefix, uuid::Uuid::new_v4());
    consume
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                durable: false,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(fail)?;
    // Store-routed queues are bound store by store (`bind_wanted`).
    if config.routing == Routing::Fanout {
        consume
            .queue_bind(
                queue.as_str().into(),
                config.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail)?;
    }
    consume
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(fail)?;
    let binds = conn.create_channel().await.map_err(fail)?;
    Ok(Link {
        conn,
        publish,
        consume,
        binds,
        queue,
        node: broker_address(node),
    })
}

/// The durable fanout exchange every instance publishes to.
pub async fn declare_exchange(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The durable direct exchange of store-routed delivery: events carry
/// their store's slug as routing key.
pub async fn declare_routed_exchange(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    channel
        .exchange_declare(
            config.routed_exchange().as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The durable dead-letter exchange (fanout) and queue, bound together,
/// on a channel of their own. The queue is a quorum queue unless
/// `amqp.dead_letter_queue_type = "classic"`; one that already exists with
/// the other type is kept as it is (docs/rabbitmq.md, "Dead letters").
pub async fn declare_dead_letter(conn: &Connection, config: &AmqpConfig) -> lapin::Result<()> {
    let mut channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            config.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    if config.dead_letter_queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    let declared = channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    match declared {
        Ok(_) => {}
        Err(e) if is_queue_type_clash(&e) => {
            // The queue was declared with the other type (an older bizcall
            // made classic ones): keep it rather than refuse to start.
            tracing::warn!(
                queue = %config.dead_letter_queue,
                wanted = ?config.dead_letter_queue_type,
                "the dead-letter queue exists with another type and is kept as it is; \
                 to change it, empty it (bizcall dlq replay or purge), delete it on the broker \
                 and restart, or set amqp.dead_letter_queue_type to its type"
            );
            channel = conn.create_channel().await?;
        }
        Err(e) => return Err(e),
    }
    channel
        .queue_bind(
            config.dead_letter_queue.as_str().into(),
            config.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// A declaration refused because the queue exists with another type.
fn is_queue_type_clash(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
            && amqp.get_message().as_str().contains("x-queue-type"))
}

/// Keeps a link up: consume while it lives, reconnect with capped
/// exponential backoff and jitter when it dies.
async fn supervise(inner: Arc<Inner>, mut next: Option<Link>) {
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let link = match next.take() {
            Some(link) => link,
            None => {
                let delay = backoff(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match inner.connect_any(failures == 1).await {
                    Ok(link) => link,
                    Err(e) => {
                        // Say it once per outage, then quietly keep trying.
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::error!("{e}");
                        }
                        continue;
                    }
                }
            }
        };
        failures = 0;
        let link = Arc::new(link);
        let reconnected = !first;
        if reconnected {
            m::reconnected();
        }
        first = false;
        tracing::info!(queue = %link.queue, broker = %link.node, "RabbitMQ connected");
        // Store-routed delivery binds the queue to every store with a
        // tablet here before anything is replayed or consumed.
        let reason = match inner.bind_all(&link).await {
            Err(e) => format!("cannot bind stores: {e}"),
            Ok(bound) => {
                *inner.link.write().await = Some(link.clone());
                *inner.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.node.clone());
                inner.connected.store(true, Ordering::SeqCst);
                m::bus_connected(true);
                m::bus_node(&link.node, true);
                inner.flush_outbox(&link).await;
                if reconnected {
                    inner.handler.resync().await;
                } else if !bound.is_empty() {
                    // Tablets came while the broker was away at start.
                    inner.handler.replay(&bound).await;
                }
                inner.consume(&link).await
            }
        };
        inner.unbind_all().await;
        inner.connected.store(false, Ordering::SeqCst);
        m::bus_connected(false);
        m::bus_node(&link.node, false);
        *inner.node.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *inner.link.write().await = None;
        if inner.stop.is_cancelled() {
            let _ = link
                .consume
                .basic_cancel("bizcall".into(), BasicCancelOptions::default())
                .await;
            let _ = link.conn.close(200, "bizcall stopping".into()).await;
            return;
        }
        tracing::warn!(reason = %reason, broker = %link.node, "RabbitMQ link lost; reconnecting to the next node");
        let _ = link.conn.close(200, "reconnecting".into()).await;
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = RECONNECT_FIRST.saturating_mul(2u32.saturating_pow(failures.min(16)));
    let capped = exp.min(RECONNECT_CAP);
    // Jitter in [50%, 100%] so that many instances do not reconnect in step.
    let factor = rand::rng().random_range(0.5..=1.0);
    capped.mul_f64(factor)
}

/// Store-routed delivery: applies the hub's changes of interest, binding
/// a store's key when its first tablet comes and unbinding it
/// `amqp.unbind_grace` after its last one left, then replays what the
/// stores just bound may have missed.
async fn bind_loop(inner: Arc<Inner>, mut changes: mpsc::UnboundedReceiver<Interest>) {
    loop {
        let deadline = inner.bindings.lock().await.next_deadline();
        let grace_ends = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            _ = inner.stop.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => Some(change),
                None => return,
            },
            _ = grace_ends => None,
        };
        let mut bindings = inner.bindings.lock().await;
        let now = tokio::time::Instant::now();
        // Everything queued meanwhile is applied in one pass.
        let queued = std::iter::from_fn(|| changes.try_recv().ok());
        for change in first.into_iter().chain(queued) {
            match change {
                Interest::Follow(store) => bindings.wanted.insert(store, None),
                Interest::Unfollow(store) => bindings
                    .wanted
                    .insert(store, Some(now + inner.config.unbind_grace)),
            };
        }
        match inner.sync_bindings(&mut bindings).await {
            Ok(bound) if !bound.is_empty() => {
                drop(bindings);
                let handler = inner.handler.clone();
                tokio::spawn(async move { handler.replay(&bound).await });
            }
            Ok(_) => {}
            Err(e) => {
                // The link is unusable: a new one binds every store again
                // and replays what was missed.
                tracing::warn!(error = %e, "binding a store failed; reconnecting to RabbitMQ");
                if let Some(link) = bindings.link.take() {
                    bindings.bound.clear();
                    tokio::spawn(async move {
                        let _ = link.conn.close(200, "rebinding".into()).await;
                    });
                }
            }
        }
    }
}

impl Inner {
    /// Binds a new link's queue to every wanted store; returns them.
    async fn bind_all(&self, link: &Arc<Link>) -> lapin::Result<Vec<String>> {
        if self.routing != Routing::Store {
            return Ok(Vec::new());
        }
        let mut bindings = self.bindings.lock().await;
        bindings.link = Some(link.clone());
        bindings.bound.clear();
        self.sync_bindings(&mut bindings).await
    }

    /// The link is gone, and its queue with its bindings.
    async fn unbind_all(&self) {
        if self.routing == Routing::Store {
            let mut bindings = self.bindings.lock().await;
            bindings.link = None;
            bindings.bound.clear();
            m::bound_stores(0);
        }
    }

    /// Makes the live link's bindings match the wanted stores: unbinds
    /// those whose grace ended, binds the new ones, and returns these.
    /// Each bind is confirmed by the broker (`queue.bind-ok`) before it
    /// counts, so an event published after it reaches this queue.
    async fn sync_bindings(&self, b: &mut Bindings) -> lapin::Result<Vec<String>> {
        let now = tokio::time::Instant::now();
        b.wanted.retain(|_, until| until.is_none_or(|t| t > now));
        let Some(link) = b.link.clone() else {
            return Ok(Vec::new());
        };
        let exchange = self.publish_exchange.as_str();
        let gone: Vec<String> = b
            .bound
            .iter()
            .filter(|s| !b.wanted.contains_key(*s))
            .cloned()
            .collect();
        for store in gone {
            link.binds
                .queue_unbind(
                    link.queue.as_str().into(),
                    exchange.into(),
                    store.as_str().into(),
                    FieldTable::default(),
                )
                .await?;
            b.bound.remove(&store);
            m::binding("unbind");
        }
        let new: Vec<String> = b
            .wanted
            .keys()
            .filter(|s| !b.bound.contains(*s))
            .cloned()
            .collect();
        for store in &new {
            link.binds
                .queue_bind(
                    link.queue.as_str().into(),
                    exchange.into(),
                    store.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            b.bound.insert(store.clone());
            m::binding("bind");
        }
        m::bound_stores(b.bound.len());
        Ok(new)
    }

    /// Tries each node once, from the cursor on; the one that answers
    /// becomes the current node and the cursor moves past it, so that the
    /// next reconnection starts with another node. Returns the most
    /// telling error when none answers (`log_each`: log every node's).
    async fn connect_any(&self, log_each: bool) -> Result<Link, LinkError> {
        let n = self.nodes.len().max(1);
        let start = self.cursor.load(Ordering::SeqCst);
        let mut worst: Option<LinkError> = None;
        for i in 0..n {
            let index = (start + i) % n;
            let Some(node) = self.nodes.get(index) else {
                break;
            };
            if self.stop.is_cancelled() {
                break;
            }
            match connect(self, node).await {
                Ok(link) => {
                    self.cursor.store((index + 1) % n, Ordering::SeqCst);
                    return Ok(link);
                }
                Err(e) => {
                    if log_each && n > 1 {
                        tracing::warn!("{e}");
                    }
                    if worst.as_ref().is_none_or(|w| !w.is_fatal()) {
                        worst = Some(e);
                    }
                }
            }
        }
        self.cursor.store((start + 1) % n, Ordering::SeqCst);
        Err(worst.unwrap_or_else(|| LinkError::Unreachable {
            broker: "amqp.url".into(),
            detail: "no node listed".into(),
        }))
    }

    /// Consumes until the link or the instance stops; returns why.
    async fn consume(self: &Arc<Self>, link: &Arc<Link>) -> String {
        let no_ack = self.config.ack_mode == AckMode::None;
        let consumer = link
            .consume
            .basic_consume(
                link.queue.as_str().into(),
                "bizcall".into(),
                BasicConsumeOptions {
                    no_ack,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(e) => return format!("cannot consume: {e}"),
        };
        loop {
            let delivery = tokio::select! {
                _ = self.stop.cancelled() => return "stopping".into(),
                d = consumer.next() => d,
            };
            match delivery {
                None => return "consumer closed".into(),
                Some(Err(e)) => return e.to_string(),
                Some(Ok(delivery)) => self.on_delivery(delivery).await,
            }
        }
    }

    async fn on_delivery(self: &Arc<Self>, delivery: lapin::message::Delivery) {
        m::consumed();
        let acks = self.config.ack_mode != AckMode::None;
        let acker = delivery.acker.clone();
        let sent_us = published_us(&delivery);
        let mut event = match BusEvent::from_json(&delivery.data, self.ttl) {
            Ok(BusEvent::Call(ev)) => ev,
            Ok(BusEvent::Handled(ev)) => {
                m::bus_transit(transit(sent_us, ev.at));
                return self.on_handled(acker, ev).await;
            }
            Err(e) => {
                // Poison: never retried, never blocks the queue.
                tracing::warn!(error = %e, "rejecting a message that is not a call event");
                m::rejected("poison");
                if acks {
                    let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                }
                return;
            }
        };
        m::bus_transit(transit(sent_us, event.published_at));
        event.published_us = sent_us;
        let now = Utc::now();
        if !event.is_live(now) {
            m::expired_before_delivery();
            if acks {
                m::rejected("expired");
                let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            return;
        }
        // The first attempt runs in order; retries run beside the stream so
        // that one failing event does not hold up the others.
        match self.handler.handle(event.clone()).await {
            Ok(handled) => self.settle(acker, handled, &event).await,
            Err(e) => {
                tracing::warn!(call = %event.call_id, error = %e, "handler failed; will retry");
                let me = self.clone();
                tokio::spawn(async move { me.retry(acker, event).await });
            }
        }
    }

    /// A tablet took a call somewhere: the handler closes that popup on
    /// the tablets here. Nothing waits for it, so it is acknowledged at
    /// once (an expired one is rejected, as a call event would be).
    async fn on_handled(&self, acker: lapin::Acker, event: HandledEvent) {
        let acks = self.config.ack_mode != AckMode::None;
        let now = Utc::now();
        if !event.is_live(now) {
            m::expired_before_delivery();
            if acks {
                m::rejected("expired");
                let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            return;
        }
        self.handler.handled(event).await;
        if acks {
            tokio::spawn(async move {
                if acker.ack(BasicAckOptions::default()).await.is_ok() {
                    m::acked();
                }
            });
        }
    }

    /// Attempts after the first failed one: `retry_max_attempts` counts
    /// attempts in all, the first included, as Spring's `max-attempts` does
    /// (docs/rabbitmq.md, "Consuming").
    async fn retry(self: Arc<Self>, acker: lapin::Acker, event: CallEvent) {
        let mut delay = self.config.retry_initial_interval;
        for attempt in 2..=self.config.retry_max_attempts {
            if Utc::now() + crate::call::to_chrono(delay) >= event.expires_at {
                break;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            m::retried();
            match self.handler.handle(event.clone()).await {
                Ok(handled) => return self.settle(acker, handled, &event).await,
                Err(e) => {
                    tracing::warn!(call = %event.call_id, attempt, error = %e, "handler retry failed");
                }
            }
            delay = delay
                .mul_f64(self.config.retry_multiplier)
                .min(self.config.retry_max_interval);
        }
        tracing::warn!(call = %event.call_id, "giving up on a call event: rejected");
        m::rejected("handler");
        if self.config.ack_mode != AckMode::None {
            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
        }
    }

    /// Acknowledges a handled delivery as the ack mode says.
    async fn settle(&self, acker: lapin::Acker, handled: Handled, event: &CallEvent) {
        match (self.config.ack_mode, handled) {
            (AckMode::None, _) => {}
            (AckMode::Manual, Handled::AwaitingAck(acked)) => {
                // Held until a tablet acknowledges the popup, or it expires.
                let left = event.time_left(Utc::now());
                let stop = self.stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        Ok(()) = acked => {
                            if acker.ack(BasicAckOptions::default()).await.is_ok() {
                                m::acked();
                            }
                        }
                        _ = tokio::time::sleep(left) => {
                            m::rejected("unacknowledged");
                            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                        }
                        _ = stop.cancelled() => {}
                    }
                });
            }
            _ => {
                // Not awaited here: waiting for each ack to reach the socket
                // before taking the next delivery held the whole stream to
                // one ack per I/O-thread round trip (at 1,000 events a
                // second, a 12 ms mean transit instead of 3).
                tokio::spawn(async move {
                    if acker.ack(BasicAckOptions::default()).await.is_ok() {
                        m::acked();
                    }
                });
            }
        }
    }

    /// Publishes one event on `link` and waits for the broker's confirm.
    async fn publish_on<E: Outgoing>(&self, link: &Link, event: &E) -> Result<(), BusError> {
        let left = event.time_left(Utc::now());
        if left.is_zero() {
            m::expired_before_delivery();
            return Ok(());
        }
        let props = message_properties(event.call_id(), event.published_at(), left)
            .with_headers(publish_time_header());
        let payload = event.to_json();
        let key = match self.routing {
            Routing::Fanout => "",
            Routing::Store => event.store(),
        };
        let sent = async {
            link.publish
                .basic_publish(
                    self.publish_exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    props,
                )
                .await?
                .await
        };
        m::published();
        match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
            Ok(Ok(confirm)) if confirm.is_ack() => {
                m::confirmed();
                Ok(())
            }
            Ok(Ok(_)) => Err(BusError::Nacked),
            Ok(Err(e)) => Err(BusError::Link(Box::new(e))),
            Err(_) => Err(BusError::NoConfirm(CONFIRM_TIMEOUT)),
        }
    }

    fn keep<E: Outgoing>(&self, event: &E) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() >= OUTBOX_CAPACITY {
            outbox.pop_front();
        }
        outbox.push_back(event.to_bus_event());
    }

    /// Republishes what failed while the broker was away, if still live.
    async fn flush_outbox(&self, link: &Link) {
        let pending: Vec<BusEvent> = {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.drain(..).collect()
        };
        if pending.is_empty() {
            return;
        }
        let now = Utc::now();
        let (live, expired): (Vec<_>, Vec<_>) = pending.into_iter().partition(|e| e.is_live(now));
        for _ in &expired {
            m::expired_before_delivery();
        }
        tracing::info!(
            republished = live.len(),
            expired = expired.len(),
            "publishing events held while RabbitMQ was away"
        );
        for event in live {
            if let Err(e) = self.publish_on(link, &event).await {
                m::publish_failed();
                tracing::warn!(call = %event.call_id(), error = %e, "republish failed; keeping it");
                self.keep(&event);
            }
        }
    }
}

/// The AMQP properties of an event: TTL as the per-message expiration.
pub fn message_properties(
    call_id: &str,
    published_at: chrono::DateTime<Utc>,
    left: Duration,
) -> BasicProperties {
    let millis = left.as_millis().max(1);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(call_id.into())
        .with_timestamp(published_at.timestamp().max(0) as u64)
        .with_expiration(ShortString::from(millis.to_string()))
}

impl AmqpBus {
    /// Publishes and waits for the confirm; on failure the event is kept
    /// (copied only then) for a later republish.
    async fn publish_event<E: Outgoing>(&self, event: &E) -> Result<(), BusError> {
        let link = self.inner.link.read().await.clone();
        let result = match link {
            Some(link) => self.inner.publish_on(&link, event).await,
            None => Err(BusError::Reconnecting),
        };
        if result.is_err() {
            m::publish_failed();
            self.inner.keep(event);
        }
        result
    }
}

/// The header carrying when a message was handed to the broker, in
/// microseconds since the epoch: finer than the event's `publishedAt`, for
/// the bus leg's histogram (`bizcall_bus_transit_seconds`).
pub const PUBLISHED_US: &str = "x-bizcall-published-us";

/// The headers of a message handed to the broker now: the publish time.
pub fn publish_time_header() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        PUBLISHED_US.into(),
        AMQPValue::LongLongInt(Utc::now().timestamp_micros()),
    );
    headers
}

/// The publish-time header of a delivery, if it has one.
fn published_us(delivery: &lapin::message::Delivery) -> Option<i64> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(PUBLISHED_US))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(us) => Some(*us),
            _ => None,
        })
}

/// The bus leg of a delivery: from the publish-time header (`sent_us`)
/// when present, else from the event's own (millisecond) publish time.
fn transit(sent_us: Option<i64>, published_at: chrono::DateTime<Utc>) -> Duration {
    let now = Utc::now();
    match sent_us {
        Some(us) => Duration::from_micros(now.timestamp_micros().saturating_sub(us).max(0) as u64),
        None => (now - published_at).to_std().unwrap_or_default(),
    }
}

/// What can be published: a call event, a handled event, or either one
/// kept in the outbox.
trait Outgoing: Sync {
    fn call_id(&self) -> &str;
    /// The store's slug: the routing key of store-routed delivery.
    fn store(&self) -> &str;
    fn published_at(&self) -> chrono::DateTime<Utc>;
    fn time_left(&self, now: chrono::DateTime<Utc>) -> Duration;
    fn to_json(&self) -> String;
    fn to_bus_event(&self) -> BusEvent;
}

impl Outgoing for CallEvent {
    fn call_id(&self) -> &str {
        &self.call_id
    }
    fn store(&self) -> &str {
        &self.store
    }
    fn published_at(&self) -> chrono::DateTime<Utc> {
        self.published_at
    }
    fn time_left(&self, now: chrono::DateTime<Utc>) -> Duration {
        CallEvent::time_left(self, now)
    }
    fn to_json(&self) -> String {
        CallEvent::to_json(self)
    }
    fn to_bus_event(&self) -> BusEvent {
        BusEvent::Call(self.clone())
    }
}

impl Outgoing for HandledEvent {
    fn call_id(&self) -> &str {
        &self.call_id
    }
    fn store(&self) -> &str {
        &self.store
    }
    fn published_at(&self) -> chrono::DateTime<Utc> {
        self.at
    }
    fn time_left(&self, now: chrono::DateTime<Utc>) -> Duration {
        HandledEvent::time_left(self, now)
    }
    fn to_json(&self) -> String {
        HandledEvent::to_json(self)
    }
    fn to_bus_event(&self) -> BusEvent {
        BusEvent::Handled(self.clone())
    }
}

impl Outgoing for BusEvent {
    fn call_id(&self) -> &str {
        BusEvent::call_id(self)
    }
    fn store(&self) -> &str {
        BusEvent::store(self)
    }
    fn published_at(&self) -> chrono::DateTime<Utc> {
        BusEvent::published_at(self)
    }
    fn time_left(&self, now: chrono::DateTime<Utc>) -> Duration {
        BusEvent::time_left(self, now)
    }
    fn to_json(&self) -> String {
        BusEvent::to_json(self)
    }
    fn to_bus_event(&self) -> BusEvent {
        self.clone()
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn publish(&self, event: &CallEvent) -> Result<(), BusError> {
        self.publish_event(event).await
    }

    async fn publish_handled(&self, event: &HandledEvent) -> Result<(), BusError> {
        self.publish_event(event).await
    }

    fn interest(&self, change: Interest) {
        if let Some(tx) = &self.interest {
            let _ = tx.send(change);
        }
    }

    fn node(&self) -> Option<String> {
        self.inner
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn state(&self) -> BusState {
        if self.inner.connected.load(Ordering::SeqCst) {
            BusState::Up
        } else {
            BusState::Reconnecting
        }
    }

    async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let pending = self.inner.outbox.lock().map(|o| o.len()).unwrap_or(0);
        if pending > 0 {
            tracing::warn!(
                pending,
                "stopping with call events not published (their CDRs are stored)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for n in 0..40 {
            let d = backoff(n);
            assert!(d <= RECONNECT_CAP, "{d:?}");
            assert!(d >= RECONNECT_FIRST / 2, "{d:?}");
        }
    }

    #[test]
    fn broker_address_hides_credentials() {
        assert_eq!(
            broker_address("amqp://guest:secret@10.0.0.1:5672/%2f"),
            "amqp://10.0.0.1:5672"
        );
        assert_eq!(
            broker_address("amqps://u:p@mq.example"),
            "amqps://mq.example:5671"
        );
    }
}
