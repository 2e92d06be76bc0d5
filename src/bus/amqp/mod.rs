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

mod bindings;
mod consumer;
pub mod dlq;
mod errors;
mod link;
mod publish;
pub mod tls;
mod topology;
mod watchdog;

use crate::bus::{Bus, BusError, BusState, EventHandler, Handled, Interest};
use crate::call::{BusEvent, CallEvent, HandledEvent};
use crate::config::{AckMode, AmqpConfig, Config, QueueType, Routing};
use crate::metrics as m;
use bindings::*;
use errors::*;
pub(crate) use link::{load_tls, open};
use publish::*;
pub use publish::{message_properties, publish_time_header};
use tls::Tls;
use topology::*;
use watchdog::*;

/// How long a publish waits for the broker's confirm before it counts as
/// failed (the event then waits in the outbox).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept for republishing while the broker is away; the oldest go
/// first (they are the nearest to expiry anyway).
const OUTBOX_CAPACITY: usize = 10_000;
/// Reconnect delays: exponential from the first to the cap, with jitter.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_CAP: Duration = Duration::from_secs(1);
/// Time one node has to accept a connection, finish TLS and AMQP's
/// handshake; then the next node is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Woken when a publish on this link goes unconfirmed for
    /// `amqp.link_timeout`: the watchdog then replaces the link.
    dead: tokio::sync::Notify,
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
    /// When this instance's newest canary came back through its queue
    /// (or its link came up).
    canary_seen: Mutex<std::time::Instant>,
    /// Deliveries held for a tablet's ACK (`ack_mode = "manual"`): while
    /// they fill the prefetch window no canary can arrive.
    held: AtomicUsize,
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
            canary_seen: Mutex::new(std::time::Instant::now()),
            held: AtomicUsize::new(0),
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

/// Keeps a link up: consume while it lives, reconnect with capped
/// exponential backoff and jitter when it dies.
async fn supervise(inner: Arc<Inner>, mut next: Option<Link>) {
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let link = match next.take() {
            Some(link) => link,
            None => match reconnect(&inner, &mut failures).await {
                Some(link) => link,
                None => return,
            },
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
                inner.canary_came();
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
                tokio::select! {
                    why = inner.consume(&link) => why,
                    why = inner.watch(&link) => why,
                }
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
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.conn.close(200, "bizcall stopping".into()),
            )
            .await;
            return;
        }
        tracing::warn!(reason = %reason, broker = %link.node, "RabbitMQ link lost; reconnecting to the next node");
        // A silent link never answers the close: it is dropped instead.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            link.conn.close(200, "reconnecting".into()),
        )
        .await;
    }
}

/// At most this many connection attempts at once while reconnecting:
/// enough that a new one can always start while older ones hang until
/// their `CONNECT_TIMEOUT`.
const ATTEMPTS_AT_ONCE: usize = 12;

/// While an attempt hangs (a broker that accepts and then says nothing),
/// another starts this often: the first to answer wins, so a link comes
/// back within seconds of the network healing, not at the hung attempt's
/// timeout.
const HEDGE_EVERY: Duration = Duration::from_secs(1);

/// Connects again after a loss, with backoff between failed attempts and
/// hedged attempts while one hangs. `None` when the instance stops.
async fn reconnect(inner: &Arc<Inner>, failures: &mut u32) -> Option<Link> {
    let mut attempts = futures::stream::FuturesUnordered::new();
    loop {
        let wait = if attempts.is_empty() {
            backoff(*failures)
        } else {
            HEDGE_EVERY
        };
        tokio::select! {
            _ = inner.stop.cancelled() => return None,
            Some(result) = attempts.next(), if !attempts.is_empty() => match result {
                Ok(link) => return Some(link),
                Err(e) => {
                    *failures = failures.saturating_add(1);
                    // Said once per outage, then quietly kept trying.
                    if *failures == 1 || failures.is_multiple_of(20) {
                        tracing::error!("{e}");
                    }
                }
            },
            _ = tokio::time::sleep(wait) => {
                if attempts.len() < ATTEMPTS_AT_ONCE {
                    let (inner, log_each) = (inner.clone(), *failures == 0);
                    attempts.push(Box::pin(async move { inner.connect_any(log_each).await }));
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = RECONNECT_FIRST.saturating_mul(2u32.saturating_pow(failures.min(16)));
    let capped = exp.min(RECONNECT_CAP);
    // Jitter in [50%, 100%] so that many instances do not reconnect in step.
    let factor = rand::rng().random_range(0.5..=1.0);
    capped.mul_f64(factor)
}

impl AmqpBus {
    /// Publishes and waits for the confirm; on failure the event is kept
    /// (copied only then) for a later republish.
    async fn publish_event(&self, event: &BusEvent) -> Result<(), BusError> {
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

#[async_trait]
impl Bus for AmqpBus {
    async fn publish(&self, event: &BusEvent) -> Result<(), BusError> {
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

    fn doubtful(&self) -> bool {
        !self.inner.connected.load(Ordering::SeqCst) || self.inner.canary_late()
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
