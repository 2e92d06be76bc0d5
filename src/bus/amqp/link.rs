//! The link to the broker: opening a connection to the first node that
//! answers (TLS included), with the whole topology declared on it.

use super::errors::*;
use super::tls::TlsSettingsError;
use super::tls::{expects_tls, speaks_tls};
use super::*;

/// The TLS settings, loaded once: an unusable one stops the start.
pub(crate) fn load_tls(config: &AmqpConfig) -> Result<Option<Arc<Tls>>, LinkError> {
    Ok(Tls::load(config)?)
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
pub(super) enum Attempt {
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

pub(super) async fn open_node_once(
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
            let tls = tls.ok_or(LinkError::from(TlsSettingsError::NotLoaded))?;
            Some(Arc::new(tls.session(&host).map_err(LinkError::from)?))
        }
    };
    let tls_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let runtime = lapin::runtime::default_runtime().map_err(|e| LinkError::Unreachable {
        broker: broker.clone(),
        detail: e.to_string(),
    })?;
    let mut uri = uri;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(config.heartbeat.as_secs().min(u64::from(u16::MAX)) as u16);
    }
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
pub(super) fn is_access_refused(e: &LinkError) -> bool {
    matches!(e, LinkError::Refused { detail, .. } if detail.contains("ACCESS_REFUSED"))
}

/// Opens a connection to `node` and declares the whole topology.
pub(super) async fn connect(inner: &Inner, node: &str) -> Result<Link, LinkError> {
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
        dead: tokio::sync::Notify::new(),
    })
}

impl Inner {
    /// Tries each node once, from the cursor on; the one that answers
    /// becomes the current node and the cursor moves past it, so that the
    /// next reconnection starts with another node. Returns the most
    /// telling error when none answers (`log_each`: log every node's).
    pub(super) async fn connect_any(&self, log_each: bool) -> Result<Link, LinkError> {
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
            // Every step after the handshake is bounded too: a broker that
            // accepts and then falls silent must not hold the loop.
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(self, node));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(LinkError::Unreachable {
                    broker: broker_address(node),
                    detail: format!(
                        "no answer while declaring within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                })
            });
            match result {
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
}
