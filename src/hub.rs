//! The tablets connected to this instance, by store. The hub hands each
//! call event to the subscribed tablets of its store here and to nobody
//! else, keeps each tablet's outgoing queue bounded (updates of one call
//! replace each other), and tracks which popups await a tablet's ACK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, oneshot, Notify};

use crate::bus::{EventHandler, HandleError, Handled};
use crate::call::CallEvent;
use crate::config::Config;
use crate::db::Db;
use crate::metrics as m;

/// How a subscription acknowledges messages (STOMP `ack` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    ClientIndividual,
}

impl AckKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(AckKind::Auto),
            "client" => Some(AckKind::Client),
            "client-individual" => Some(AckKind::ClientIndividual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AckKind::Auto => "auto",
            AckKind::Client => "client",
            AckKind::ClientIndividual => "client-individual",
        }
    }
}

/// Why the server closes a tablet's connection; each becomes the ERROR
/// frame's `message` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    SlowConsumer,
    Revoked,
    ServerRestart,
}

impl CloseReason {
    pub fn message(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Revoked => "unauthorized",
            CloseReason::ServerRestart => "server restart",
        }
    }

    pub fn detail(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => {
                "the tablet fell too far behind; reconnect and fetch the call list"
            }
            CloseReason::Revoked => "the tablet token was revoked",
            CloseReason::ServerRestart => "the server is restarting; reconnect",
        }
    }
}

/// Messages sent and not yet acknowledged, per subscription, so an ACK can
/// be traced to its call. Bounded: the oldest are forgotten.
#[derive(Debug, Default)]
pub struct AckBook {
    entries: HashMap<String, VecDeque<(String, String)>>,
}

const ACK_BOOK_LIMIT: usize = 512;

impl AckBook {
    pub fn record(&mut self, subscription: &str, ack_id: String, call_id: String) {
        let list = self.entries.entry(subscription.to_string()).or_default();
        if list.len() == ACK_BOOK_LIMIT {
            list.pop_front();
        }
        list.push_back((ack_id, call_id));
    }

    /// Removes what an ACK/NACK of `ack_id` settles; returns those calls.
    pub fn settle(&mut self, ack_id: &str, kinds: &HashMap<String, AckKind>) -> Vec<String> {
        for (sub, list) in self.entries.iter_mut() {
            if let Some(pos) = list.iter().position(|(id, _)| id == ack_id) {
                let cumulative = kinds.get(sub) == Some(&AckKind::Client);
                let taken: Vec<(String, String)> = if cumulative {
                    list.drain(..=pos).collect()
                } else {
                    list.remove(pos).into_iter().collect()
                };
                return taken.into_iter().map(|(_, call)| call).collect();
            }
        }
        Vec::new()
    }

    pub fn forget(&mut self, subscription: &str) {
        self.entries.remove(subscription);
    }
}

/// A call event as tablets receive it: the JSON body is written once per
/// event, not once per tablet. Reads as the event it carries.
#[derive(Debug)]
pub struct Prepared {
    event: CallEvent,
    pub json: String,
}

impl Prepared {
    pub fn new(event: CallEvent) -> Self {
        let json = event.to_json();
        Prepared { event, json }
    }
}

impl std::ops::Deref for Prepared {
    type Target = CallEvent;
    fn deref(&self) -> &CallEvent {
        &self.event
    }
}

/// What waits to be written to one tablet.
#[derive(Debug, Default)]
pub struct Outbound {
    pub popups: VecDeque<Arc<Prepared>>,
    /// Set when the connection must end; the writer sends the ERROR and closes.
    pub closing: Option<CloseReason>,
}

/// One connected tablet, shared by its connection task and the hub.
#[derive(Debug)]
pub struct Tablet {
    pub id: u64,
    pub store: String,
    pub token_id: String,
    /// Subscription id → ack kind.
    pub subscriptions: Mutex<HashMap<String, AckKind>>,
    pub acks: Mutex<AckBook>,
    pub outbound: Mutex<Outbound>,
    /// Wakes the connection task when something is queued.
    pub wake: Notify,
    capacity: usize,
}

impl Tablet {
    fn lock_out(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, AckKind>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ack_book(&self) -> std::sync::MutexGuard<'_, AckBook> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a popup. An update of a call already queued replaces it in
    /// place; a full queue closes the tablet as a slow consumer.
    fn offer(&self, event: Arc<Prepared>) {
        let mut out = self.lock_out();
        if out.closing.is_some() {
            return;
        }
        if let Some(slot) = out.popups.iter_mut().find(|p| p.call_id == event.call_id) {
            if event.status.rank() >= slot.status.rank() {
                *slot = event;
            }
        } else if out.popups.len() >= self.capacity {
            out.popups.clear();
            out.closing = Some(CloseReason::SlowConsumer);
            m::slow_consumer();
        } else {
            out.popups.push_back(event);
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Asks the connection to end with `reason`.
    pub fn close(&self, reason: CloseReason) {
        let mut out = self.lock_out();
        if out.closing.is_none() {
            out.popups.clear();
            out.closing = Some(reason);
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Takes everything queued: the popups, and the close reason if any.
    pub fn take(&self) -> (Vec<Arc<Prepared>>, Option<CloseReason>) {
        let mut out = self.lock_out();
        (out.popups.drain(..).collect(), out.closing.clone())
    }

    fn awaits_ack(&self) -> bool {
        self.subscriptions().values().any(|k| *k != AckKind::Auto)
    }

    fn subscribed(&self) -> bool {
        !self.subscriptions().is_empty()
    }
}

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

/// What the hub has seen per call, pruned in amortised constant time: a
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

pub struct Hub {
    config: Arc<Config>,
    db: Db,
    tablets: RwLock<HashMap<String, HashMap<u64, Arc<Tablet>>>>,
    next_id: AtomicU64,
    seen: Mutex<SeenCalls>,
    /// Calls whose bus message waits for a tablet's ACK (ack mode manual).
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Every event this instance receives, for observers (tests, tools).
    watchers: broadcast::Sender<CallEvent>,
}

impl Hub {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        let (watchers, _) = broadcast::channel(1024);
        Hub {
            config,
            db,
            tablets: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            seen: Mutex::new(SeenCalls::default()),
            waiting: Mutex::new(HashMap::new()),
            watchers,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A stream of every event this instance receives from the bus.
    pub fn watch(&self) -> broadcast::Receiver<CallEvent> {
        self.watchers.subscribe()
    }

    /// Adds a tablet that has just connected.
    pub fn register(&self, store: &str, token_id: &str) -> Arc<Tablet> {
        let tablet = Arc::new(Tablet {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            store: store.to_string(),
            token_id: token_id.to_string(),
            subscriptions: Mutex::new(HashMap::new()),
            acks: Mutex::new(AckBook::default()),
            outbound: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            capacity: self.config.stomp.outbound_queue,
        });
        let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
        all.entry(store.to_string())
            .or_default()
            .insert(tablet.id, tablet.clone());
        Self::gauge(&all);
        tablet
    }

    pub fn unregister(&self, tablet: &Tablet) {
        let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = all.get_mut(&tablet.store) {
            store.remove(&tablet.id);
            if store.is_empty() {
                all.remove(&tablet.store);
            }
        }
        Self::gauge(&all);
    }

    fn gauge(all: &HashMap<String, HashMap<u64, Arc<Tablet>>>) {
        m::tablets(all.values().map(HashMap::len).sum(), all.len());
    }

    /// Connected tablets and stores with at least one.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        (all.values().map(HashMap::len).sum(), all.len())
    }

    /// Tablets connected here, per store.
    pub fn tablets_by_store(&self) -> HashMap<String, usize> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    fn every_tablet(&self) -> Vec<Arc<Tablet>> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.values().flat_map(|s| s.values().cloned()).collect()
    }

    /// Tells every tablet to reconnect (graceful shutdown).
    pub async fn close_all(&self, _why: &str) {
        for t in self.every_tablet() {
            t.close(CloseReason::ServerRestart);
        }
    }

    /// Closes tablets whose token is no longer among `live` token ids.
    pub fn close_revoked(&self, live: &HashSet<String>) -> usize {
        let mut closed = 0;
        for t in self.every_tablet() {
            if !live.contains(&t.token_id) {
                t.close(CloseReason::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Token ids of the tablets connected here.
    pub fn token_ids(&self) -> HashSet<String> {
        self.every_tablet()
            .into_iter()
            .map(|t| t.token_id.clone())
            .collect()
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

    /// Whether the event is new: not a duplicate and not older than what
    /// was already shown for its call.
    fn fresh(&self, event: &CallEvent, now: DateTime<Utc>) -> bool {
        // Copies of one change can arrive a while apart (an outbox republish,
        // a catch-up after a bus gap, each with its own expiry), so what was
        // seen is remembered for a TTL past its own expiry.
        let ttl = chrono::Duration::from_std(self.config.bus.message_ttl).unwrap_or_default();
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        guard.prune(|s| s.expires_at + ttl > now);
        let seen = &mut guard.calls;
        let rank = event.status.rank();
        match seen
            .get(&event.call_id)
            .filter(|s| s.expires_at + ttl > now)
        {
            Some(s) if rank < s.rank => false,
            Some(s)
                if s.status == event.status
                    && s.answered_at == event.answered_at
                    && s.ended_at == event.ended_at =>
            {
                false
            }
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
}

#[async_trait]
impl EventHandler for Hub {
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError> {
        let now = Utc::now();
        if !event.is_live(now) {
            m::popup_expired();
            return Ok(Handled::Done);
        }
        if !self.fresh(&event, now) {
            tracing::debug!(call = %event.call_id, "duplicate or stale event dropped");
            return Ok(Handled::Done);
        }
        let _ = self.watchers.send(event.clone());
        let targets: Vec<Arc<Tablet>> = {
            let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
            all.get(&event.store)
                .map(|s| s.values().filter(|t| t.subscribed()).cloned().collect())
                .unwrap_or_default()
        };
        if targets.is_empty() {
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
            waiting.entry(event.call_id.clone()).or_default().push(tx);
            Handled::AwaitingAck(rx)
        } else {
            Handled::Done
        };
        for t in targets {
            t.offer(event.clone());
        }
        Ok(handled)
    }

    /// After a gap in the bus, replays from the database every change still
    /// inside its TTL to the tablets here; what they already saw is dropped
    /// by `fresh`, and nothing is replayed past its expiry.
    async fn resync(&self) {
        let ttl = self.config.bus.message_ttl;
        let since = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or_default();
        let stores: HashSet<String> = self.tablets_by_store().into_keys().collect();
        if stores.is_empty() {
            return;
        }
        let rows = match self.db.calls_changed_since(since).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not catch up after a bus gap");
                return;
            }
        };
        let mut offered = 0;
        for row in rows.iter().filter(|r| stores.contains(&r.store)) {
            let at = crate::db::from_millis(row.updated_at);
            let _ = self.handle(row.event_at(ttl, at)).await;
            offered += 1;
        }
        tracing::info!(changes = offered, "caught up after a bus gap");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallStatus, EventKind};

    fn tablet(capacity: usize) -> Tablet {
        Tablet {
            id: 1,
            store: "s".into(),
            token_id: "t".into(),
            subscriptions: Mutex::new(HashMap::new()),
            acks: Mutex::new(AckBook::default()),
            outbound: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            capacity,
        }
    }

    fn event(id: &str, status: CallStatus) -> Arc<Prepared> {
        let now = Utc::now();
        Arc::new(Prepared::new(CallEvent {
            kind: EventKind::Call,
            call_id: id.into(),
            store: "s".into(),
            status,
            caller_number: "0101".into(),
            virtual_number: None,
            started_at: now,
            answered_at: None,
            ended_at: None,
            published_at: now,
            expires_at: now + chrono::Duration::seconds(30),
        }))
    }

    #[test]
    fn updates_of_one_call_replace_each_other_in_the_queue() {
        let t = tablet(2);
        t.offer(event("a", CallStatus::Ringing));
        t.offer(event("b", CallStatus::Ringing));
        t.offer(event("a", CallStatus::Completed));
        // A stale update does not overwrite a newer one.
        t.offer(event("a", CallStatus::Answered));
        let (popups, closing) = t.take();
        assert!(closing.is_none());
        let got: Vec<(&str, CallStatus)> = popups
            .iter()
            .map(|p| (p.call_id.as_str(), p.status))
            .collect();
        assert_eq!(
            got,
            [("a", CallStatus::Completed), ("b", CallStatus::Ringing)]
        );
    }

    #[test]
    fn a_full_queue_closes_the_tablet_as_slow() {
        let t = tablet(2);
        for id in ["a", "b", "c"] {
            t.offer(event(id, CallStatus::Ringing));
        }
        let (popups, closing) = t.take();
        assert!(popups.is_empty());
        assert_eq!(closing, Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn ack_book_settles_individually_and_cumulatively() {
        let mut kinds = HashMap::new();
        kinds.insert("a".to_string(), AckKind::ClientIndividual);
        kinds.insert("b".to_string(), AckKind::Client);
        let mut book = AckBook::default();
        for i in 0..3 {
            book.record("a", format!("a{i}"), format!("call{i}"));
            book.record("b", format!("b{i}"), format!("call{i}"));
        }
        assert_eq!(book.settle("a1", &kinds), ["call1"]);
        assert_eq!(book.settle("a1", &kinds), Vec::<String>::new());
        assert_eq!(book.settle("b1", &kinds), ["call0", "call1"]);
        assert_eq!(book.settle("b2", &kinds), ["call2"]);
        assert!(book.settle("nope", &kinds).is_empty());
    }
}
