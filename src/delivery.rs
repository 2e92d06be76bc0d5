//! What this instance does with each event the bus brings: drops what
//! expired or was seen already, hands the rest to the subscribed tablets of
//! its store here (through the hub), waits for their ACK when a
//! subscription acknowledges, notes the outcome in the delivery trail, and
//! catches up from the database after a gap in the bus. The ACK use case
//! lives here too: a tablet's ACK is stored, told to the store's other
//! tablets on every instance, and releases the bus message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, oneshot};
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, EventHandler, HandleError, Handled};
use crate::call::{BusEvent, CallEvent, HandledEvent};
use crate::config::Config;
use crate::db::{Db, DbError, TokenInfo};
use crate::hub::{Hub, Tablet};
use crate::metrics as m;
use crate::prepared::Prepared;
use crate::trail::Trail;

/// The newest event seen per call: later duplicates (the same status and
/// times, however often published) and stale updates are dropped, so a
/// popup never moves backwards or shows twice.
#[derive(Debug, Clone, Copy)]
struct Seen {
    rank: i32,
    status: crate::call::CallStatus,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

impl Seen {
    /// Whether `event` is this state again, or older than it.
    fn covers(&self, event: &CallEvent) -> bool {
        event.status.rank() < self.rank
            || (self.status == event.status
                && self.answered_at == event.answered_at
                && self.ended_at == event.ended_at)
    }
}

/// What this instance has seen per call, pruned in amortised constant time: a
/// sweep runs only once the map has doubled since the last one.
#[derive(Debug)]
struct SeenCalls {
    calls: HashMap<String, Seen>,
    prune_above: usize,
}

impl Default for SeenCalls {
    fn default() -> Self {
        SeenCalls {
            calls: HashMap::new(),
            prune_above: 10_000,
        }
    }
}

impl SeenCalls {
    fn prune(&mut self, keep: impl Fn(&Seen) -> bool) {
        if self.calls.len() > self.prune_above {
            self.calls.retain(|_, s| keep(s));
            self.prune_above = (self.calls.len() * 2).max(10_000);
        }
    }
}

/// Calls whose handled event this instance passed on (call → its expiry),
/// pruned like `SeenCalls`.
#[derive(Debug)]
struct HandledCalls {
    calls: HashMap<String, DateTime<Utc>>,
    prune_above: usize,
}

/// The bus's event handler for this instance.
pub struct Delivery {
    config: Arc<Config>,
    db: Db,
    hub: Arc<Hub>,
    seen: Mutex<SeenCalls>,
    /// Calls whose handled event went out here, until a TTL past expiry.
    handled: Mutex<HandledCalls>,
    /// Calls whose bus message waits for a tablet's ACK (ack mode manual).
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Every event this instance receives, for observers (tests, tools).
    watchers: broadcast::Sender<CallEvent>,
    /// This instance's part of calls' delivery trails (set at start).
    trail: std::sync::OnceLock<Arc<Trail>>,
    /// Where handled events are published (set at start; weak, since the
    /// bus holds this handler).
    bus: std::sync::OnceLock<std::sync::Weak<dyn Bus>>,
    /// The server's tracker: a handled event being published is waited
    /// for when the instance stops.
    tasks: TaskTracker,
}

impl Delivery {
    pub fn new(config: Arc<Config>, db: Db, hub: Arc<Hub>, tasks: TaskTracker) -> Self {
        let (watchers, _) = broadcast::channel(1024);
        Delivery {
            config,
            db,
            hub,
            seen: Mutex::new(SeenCalls::default()),
            handled: Mutex::new(HandledCalls {
                calls: HashMap::new(),
                prune_above: 10_000,
            }),
            waiting: Mutex::new(HashMap::new()),
            watchers,
            trail: std::sync::OnceLock::new(),
            bus: std::sync::OnceLock::new(),
            tasks,
        }
    }

    /// The token a tablet presents at CONNECT, if it is live.
    pub async fn verify_token(&self, token: &str) -> Result<Option<TokenInfo>, DbError> {
        self.db.token_verify(token).await
    }

    /// Whether token-less tablets may follow `store` (`None`: no such store).
    pub async fn store_takes_anonymous(&self, store: &str) -> Result<Option<bool>, DbError> {
        self.db.store_anonymous(store).await
    }

    /// A tablet (token `token_id`, labelled `label`) acknowledged `call` of
    /// `store`: the first ACK of a call is stored, the store's other
    /// tablets on every instance are told (published on the server's
    /// tracker, off the tablet's path: a broker that is away must not hold
    /// it up), and the bus message is released. True when this ACK was the
    /// first.
    pub async fn acknowledge(&self, call: &str, store: &str, token_id: &str, label: &str) -> bool {
        m::popup_acked();
        let first = match self.db.acknowledge_call(call, store, token_id).await {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!(call = %call, error = %e, "could not store the acknowledgement");
                false
            }
        };
        if first {
            tracing::info!(call = %call, store = %store, token = %token_id, "popup acknowledged");
            let ttl = self.config.bus.message_ttl;
            let event = BusEvent::Handled(HandledEvent::new(
                call,
                store,
                label,
                crate::clock::now(),
                ttl,
            ));
            if let Some(bus) = self.bus.get().and_then(std::sync::Weak::upgrade) {
                self.tasks.spawn(async move {
                    if let Err(e) = bus.publish(&event).await {
                        tracing::warn!(call = %event.call_id(), error = %e, "handled event not published yet");
                    }
                });
            }
        }
        self.popup_acked(call);
        first
    }

    /// Publishes handled events on `bus` from now on.
    pub fn attach_bus(&self, bus: &Arc<dyn Bus>) {
        let _ = self.bus.set(Arc::downgrade(bus));
    }

    /// A tablet acknowledged a call's popup: release the bus message.
    pub fn popup_acked(&self, call_id: &str) {
        let waiters = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call_id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(());
        }
    }

    /// Whether this is the first handled event of its call seen here (an
    /// outbox republish can bring a second copy).
    fn first_handled(&self, event: &HandledEvent, now: DateTime<Utc>) -> bool {
        let ttl = self.config.bus.ttl();
        let mut guard = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        let HandledCalls { calls, prune_above } = &mut *guard;
        // Swept only once the map has doubled since the last sweep, so a
        // burst of acknowledgements costs amortised constant time.
        if calls.len() > *prune_above {
            calls.retain(|_, expires| *expires + ttl > now);
            *prune_above = (calls.len() * 2).max(10_000);
        }
        match calls.get(&event.call_id) {
            Some(expires) if *expires + ttl > now => false,
            _ => {
                calls.insert(event.call_id.clone(), event.expires_at);
                true
            }
        }
    }

    /// Whether the event is new: not a duplicate and not older than what
    /// was already shown for its call.
    fn fresh(&self, event: &CallEvent, now: DateTime<Utc>) -> bool {
        // Copies of one change can arrive a while apart (an outbox republish,
        // a catch-up after a bus gap, each with its own expiry), so what was
        // seen is remembered for a TTL past its own expiry.
        let ttl = self.config.bus.ttl();
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        guard.prune(|s| s.expires_at + ttl > now);
        let seen = &mut guard.calls;
        let rank = event.status.rank();
        match seen
            .get(&event.call_id)
            .filter(|s| s.expires_at + ttl > now)
        {
            Some(s) if s.covers(event) => false,
            _ => {
                seen.insert(
                    event.call_id.clone(),
                    Seen {
                        rank,
                        status: event.status,
                        answered_at: event.answered_at,
                        ended_at: event.ended_at,
                        expires_at: event.expires_at,
                    },
                );
                true
            }
        }
    }

    /// A stream of every event this instance receives from the bus.
    /// Whether `event` (or a newer state of its call) was handled here
    /// already: the relay skips it then.
    pub fn has_seen(&self, event: &CallEvent) -> bool {
        let guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .calls
            .get(&event.call_id)
            .is_some_and(|s| s.covers(event))
    }

    pub fn watch(&self) -> broadcast::Receiver<CallEvent> {
        self.watchers.subscribe()
    }

    /// Records what becomes of every event here in `trail`.
    pub fn attach_trail(&self, trail: Arc<Trail>) {
        let _ = self.trail.set(trail);
    }

    fn trail(&self) -> Option<&Arc<Trail>> {
        self.trail.get()
    }
}

#[async_trait]
impl EventHandler for Delivery {
    /// An event from the bus reaches the tablets connected before it was
    /// first published (`publishedAt`: moments after its change was stored,
    /// kept by the outbox's republish), as one read from the database does:
    /// a tablet that connected later read the call from its call list, and
    /// may have shown it on another instance already, whose queue brought
    /// it sooner.
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError> {
        let stored_ms = event.published_at.timestamp_millis();
        self.deliver(event, |t| t.subscribed() && t.since_ms <= stored_ms)
    }

    /// A tablet took a call: every other subscribed tablet of its store
    /// here gets the handled event (once per call; the legacy destination
    /// filters it out when writing).
    async fn handled(&self, event: HandledEvent) {
        let now = crate::clock::now();
        if !event.is_live(now) {
            m::popup_expired();
            return;
        }
        if !self.first_handled(&event, now) {
            return;
        }
        let targets = self.hub.tablets_of(&event.store, |t| {
            t.follows_new_destination() && !t.has_taken(&event.call_id)
        });
        if targets.is_empty() {
            return;
        }
        let event = Arc::new(Prepared::handled(event));
        for t in targets {
            t.offer(event.clone());
        }
    }

    /// After a gap in the bus, replays from the database every change still
    /// inside its TTL to the stores with tablets here (chosen in SQL),
    /// newest first and in pages, so the popups still ringing come first;
    /// what tablets already saw is dropped by `fresh`, and nothing is
    /// replayed past its expiry (each change expires a TTL after it was
    /// made). Only past `CATCH_UP_MAX` changes, the oldest, closest to
    /// expiry, are left out; that is logged and counted.
    async fn resync(&self) {
        let stores: Vec<String> = self.hub.stores_here().into_iter().collect();
        if let Some((changes, pages, took)) = self.catch_up(&stores).await {
            tracing::info!(
                changes,
                stores = stores.len(),
                pages,
                took_ms = took.as_millis() as u64,
                "caught up after a bus gap"
            );
        }
    }

    /// Store-routed delivery bound these stores just now: the same replay,
    /// for them only.
    async fn replay(&self, stores: &[String]) {
        if let Some((changes, _, took)) = self.catch_up(stores).await {
            tracing::debug!(
                changes,
                stores = stores.len(),
                took_ms = took.as_millis() as u64,
                "replayed after binding"
            );
        }
    }
}

impl Delivery {
    /// Hands a live, fresh event to the tablets of its store here that
    /// `wanted` picks.
    fn deliver(
        &self,
        event: CallEvent,
        wanted: impl Fn(&Tablet) -> bool,
    ) -> Result<Handled, HandleError> {
        let now = crate::clock::now();
        if !event.is_live(now) {
            m::popup_expired();
            if let Some(trail) = self.trail() {
                trail.expired(&event.call_id, self.hub.has_subscribed(&event.store));
            }
            return Ok(Handled::Done);
        }
        if !self.fresh(&event, now) {
            tracing::debug!(call = %event.call_id, "duplicate or stale event dropped");
            return Ok(Handled::Done);
        }
        let _ = self.watchers.send(event.clone());
        let targets = self.hub.tablets_of(&event.store, wanted);
        if targets.is_empty() {
            if let Some(trail) = self.trail() {
                trail.reached(&event.call_id, std::iter::empty(), 0);
            }
            return Ok(Handled::Done);
        }
        let awaits_ack = targets.iter().any(|t| t.awaits_ack());
        let event = Arc::new(Prepared::new(event));
        let handled = if awaits_ack {
            let (tx, rx) = oneshot::channel();
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            // Forget waiters whose bus message was settled another way.
            waiting.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            waiting
                .entry(event.call_id().to_string())
                .or_default()
                .push(tx);
            Handled::AwaitingAck(rx)
        } else {
            Handled::Done
        };
        let mut slow = 0;
        for t in &targets {
            if !t.offer(event.clone()) {
                slow += 1;
            }
        }
        if let Some(trail) = self.trail() {
            let tokens = targets.iter().map(|t| &t.token_id);
            trail.reached(event.call_id(), tokens, slow);
        }
        Ok(handled)
    }

    /// The way in for a change read from the database (the relay, a
    /// catch-up, a replay after binding), stored at `stored_at`: it reaches
    /// only the tablets connected before then (one that connected later read
    /// it from the call list, and may have shown it on another instance).
    /// Returns whether it went out.
    pub fn deliver_stored(&self, event: CallEvent, stored_at: DateTime<Utc>) -> bool {
        let stored_ms = stored_at.timestamp_millis();
        self.deliver(event, |t| t.subscribed() && t.since_ms <= stored_ms)
            .is_ok()
    }

    /// Replays every change of `stores` still inside its TTL; returns the
    /// changes, pages and time it took, or `None` when it stopped early.
    async fn catch_up(&self, stores: &[String]) -> Option<(usize, usize, std::time::Duration)> {
        let ttl = self.config.bus.message_ttl;
        let since = crate::clock::now() - self.config.bus.ttl();
        if stores.is_empty() {
            return None;
        }
        let started = std::time::Instant::now();
        let mut offered: usize = 0;
        let mut pages = 0;
        let mut cursor: Option<(i64, String)> = None;
        loop {
            let before = cursor.as_ref().map(|(at, seq)| (*at, seq.as_str()));
            let rows = match self
                .db
                .calls_changed_since(stores, since, before, CATCH_UP_PAGE)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, changes = offered, "could not finish catching up from the database");
                    return None;
                }
            };
            pages += 1;
            let full = rows.len() == CATCH_UP_PAGE as usize;
            if offered + rows.len() > CATCH_UP_MAX {
                let left = self.count_left(stores, since, &rows).await;
                m::catch_up_cut(left as u64);
                tracing::warn!(
                    replayed = offered,
                    left_out = left,
                    limit = CATCH_UP_MAX,
                    "catch-up cut: the oldest changes are only in the call list"
                );
                return None;
            }
            for row in &rows {
                let at = crate::db::from_millis(row.updated_at);
                self.deliver_stored(row.event_at(ttl, at), at);
            }
            offered += rows.len();
            m::caught_up(rows.len() as u64);
            match rows.last() {
                Some(last) if full => cursor = Some((last.updated_at, last.seq.clone())),
                _ => break,
            }
        }
        Some((offered, pages, started.elapsed()))
    }
}

/// Changes read per page when catching up after a bus gap.
const CATCH_UP_PAGE: u32 = 1000;
/// Most changes replayed after one gap: far above a TTL's worth at 1,000
/// calls a second (30,000 with the default TTL).
const CATCH_UP_MAX: usize = 200_000;

impl Delivery {
    /// How many changes a cut catch-up leaves out (at least what this
    /// page holds; more pages are counted without being read whole).
    async fn count_left(
        &self,
        stores: &[String],
        since: DateTime<Utc>,
        page: &[crate::db::CallRow],
    ) -> usize {
        let mut left = page.len();
        let mut cursor = page.last().map(|r| (r.updated_at, r.seq.clone()));
        while let Some((at, seq)) = cursor.take() {
            match self
                .db
                .calls_changed_since(stores, since, Some((at, &seq)), CATCH_UP_PAGE)
                .await
            {
                Ok(rows) => {
                    left += rows.len();
                    if rows.len() == CATCH_UP_PAGE as usize {
                        cursor = rows.last().map(|r| (r.updated_at, r.seq.clone()));
                    }
                }
                Err(_) => break,
            }
        }
        left
    }
}
