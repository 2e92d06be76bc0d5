//! Store-routed delivery: which stores this instance's queue is bound to,
//! kept in step with the stores that have tablets here.

use super::*;

/// Store-routed delivery's bindings (docs/rabbitmq.md, "Store-routed
/// delivery"): the stores with a tablet here, those whose last tablet left
/// less than `amqp.unbind_grace` ago, and those bound on the live link.
#[derive(Default)]
pub(super) struct Bindings {
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

/// Store-routed delivery: applies the hub's changes of interest, binding
/// a store's key when its first tablet comes and unbinding it
/// `amqp.unbind_grace` after its last one left, then replays what the
/// stores just bound may have missed.
pub(super) async fn bind_loop(inner: Arc<Inner>, mut changes: mpsc::UnboundedReceiver<Interest>) {
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
    pub(super) async fn bind_all(&self, link: &Arc<Link>) -> lapin::Result<Vec<String>> {
        if self.routing != Routing::Store {
            return Ok(Vec::new());
        }
        let mut bindings = self.bindings.lock().await;
        bindings.link = Some(link.clone());
        bindings.bound.clear();
        self.sync_bindings(&mut bindings).await
    }

    /// The link is gone, and its queue with its bindings.
    pub(super) async fn unbind_all(&self) {
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
    pub(super) async fn sync_bindings(&self, b: &mut Bindings) -> lapin::Result<Vec<String>> {
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
}
