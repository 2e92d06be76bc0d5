//! The tablets connected to this instance, by store. The hub hands each
//! call event to the subscribed tablets of its store here and to nobody
//! else, keeps each tablet's outgoing queue bounded (updates of one call
//! replace each other), and tracks which popups await a tablet's ACK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, oneshot, Notify};

use crate::bus::{Bus, EventHandler, HandleError, Handled, Interest};
use crate::call::{CallEvent, EventKind, HandledEvent};
use crate::config::Config;
use crate::db::{Db, PresenceKey};
use crate::metrics as m;
use crate::stomp::close::Close;
use crate::trail::Trail;

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

/// One subscription of a tablet: how it acknowledges, whose calls it
/// carries, and in which body shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub ack: AckKind,
    /// The store whose calls it receives.
    pub store: String,
    /// Subscribed on the Spring service's destination: its body shape,
    /// call popups only.
    pub legacy: bool,
}

/// A tablet's subscriptions by id: a short list (at most a few; a map
/// cost each idle tablet about 0.2 KiB more).
#[derive(Debug, Clone, Default)]
pub struct Subscriptions(Vec<(String, Subscription)>);

impl Subscriptions {
    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, s)| s)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Adds or replaces the subscription `id`.
    pub fn insert(&mut self, id: String, sub: Subscription) {
        match self.0.iter_mut().find(|(k, _)| *k == id) {
            Some((_, s)) => *s = sub,
            None => {
                // One at a time: a first push would make room for four.
                self.0.reserve_exact(1);
                self.0.push((id, sub));
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        let i = self.0.iter().position(|(k, _)| k == id)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.0.iter().map(|(k, s)| (k, s))
    }

    pub fn values(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter().map(|(_, s)| s)
    }
}

/// Messages sent and not yet acknowledged, per subscription, so an ACK can
/// be traced to its call. Bounded: the oldest are forgotten. Boxed on
/// first use: tablets that never ACK (the most) carry a pointer.
#[derive(Debug, Default)]
pub struct AckBook {
    entries: Option<Box<Unsettled>>,
}

/// Subscription → (ack id, call id), oldest first.
type Unsettled = HashMap<String, VecDeque<(String, String)>>;

const ACK_BOOK_LIMIT: usize = 512;

impl AckBook {
    pub fn record(&mut self, subscription: &str, ack_id: String, call_id: String) {
        let list = self
            .entries
            .get_or_insert_default()
            .entry(subscription.to_string())
            .or_default();
        if list.len() == ACK_BOOK_LIMIT {
            list.pop_front();
        }
        list.push_back((ack_id, call_id));
    }

    /// Removes what an ACK/NACK of `ack_id` settles; returns the
    /// subscription and those calls.
    pub fn settle(&mut self, ack_id: &str, subs: &Subscriptions) -> Option<(String, Vec<String>)> {
        for (sub, list) in self.entries.as_deref_mut()?.iter_mut() {
            if let Some(pos) = list.iter().position(|(id, _)| id == ack_id) {
                let cumulative = subs.get(sub).map(|s| s.ack) == Some(AckKind::Client);
                let taken: Vec<(String, String)> = if cumulative {
                    list.drain(..=pos).collect()
                } else {
                    list.remove(pos).into_iter().collect()
                };
                return Some((
                    sub.clone(),
                    taken.into_iter().map(|(_, call)| call).collect(),
                ));
            }
        }
        None
    }

    pub fn forget(&mut self, subscription: &str) {
        if let Some(entries) = self.entries.as_deref_mut() {
            entries.remove(subscription);
        }
    }
}

/// An event as tablets receive it: the JSON body is written once per
/// event, not once per tablet.
#[derive(Debug)]
pub struct Prepared {
    event: Payload,
    pub json: String,
    /// The legacy destination's body, written when first asked for.
    legacy: std::sync::OnceLock<String>,
}

#[derive(Debug)]
enum Payload {
    Call(CallEvent),
    Handled(HandledEvent),
}

impl Prepared {
    pub fn new(event: CallEvent) -> Self {
        let json = event.to_json();
        Prepared {
            event: Payload::Call(event),
            json,
            legacy: std::sync::OnceLock::new(),
        }
    }

    pub fn handled(event: HandledEvent) -> Self {
        let json = event.to_json();
        Prepared {
            event: Payload::Handled(event),
            json,
            legacy: std::sync::OnceLock::new(),
        }
    }

    /// The call event, when this is one.
    pub fn call(&self) -> Option<&CallEvent> {
        match &self.event {
            Payload::Call(e) => Some(e),
            Payload::Handled(_) => None,
        }
    }

    pub fn kind(&self) -> EventKind {
        match &self.event {
            Payload::Call(_) => EventKind::Call,
            Payload::Handled(_) => EventKind::Handled,
        }
    }

    pub fn call_id(&self) -> &str {
        match &self.event {
            Payload::Call(e) => &e.call_id,
            Payload::Handled(e) => &e.call_id,
        }
    }

    pub fn store(&self) -> &str {
        match &self.event {
            Payload::Call(e) => &e.store,
            Payload::Handled(e) => &e.store,
        }
    }

    /// When its bus message was published, in microseconds (RabbitMQ).
    pub fn published_us(&self) -> Option<i64> {
        match &self.event {
            Payload::Call(e) => e.published_us,
            Payload::Handled(_) => None,
        }
    }

    pub fn published_at(&self) -> DateTime<Utc> {
        match &self.event {
            Payload::Call(e) => e.published_at,
            Payload::Handled(e) => e.at,
        }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        match &self.event {
            Payload::Call(e) => e.is_live(now),
            Payload::Handled(e) => e.is_live(now),
        }
    }

    /// The body on `/ws/v1/topic/call-store/<slug>`: call popups only.
    pub fn legacy_json(&self) -> Option<&str> {
        let call = self.call()?;
        Some(self.legacy.get_or_init(|| call.to_legacy_json()))
    }

    /// Status rank of a call event (a handled event ranks above all).
    fn rank(&self) -> i32 {
        self.call().map_or(i32::MAX, |e| e.status.rank())
    }
}

/// What waits to be written to one tablet.
#[derive(Debug, Default)]
pub struct Outbound {
    pub popups: VecDeque<Arc<Prepared>>,
    /// Set when the connection must end; the writer sends the ERROR and closes.
    pub closing: Option<Box<Close>>,
}

/// A tablet refused because its token or its address has its share of
/// tablets on this instance already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    Token { limit: usize },
    Address { limit: usize },
}

/// One connected tablet, shared by its connection task and the hub.
#[derive(Debug)]
pub struct Tablet {
    pub id: u64,
    /// The token's store; empty for an anonymous tablet.
    pub store: String,
    /// The token's id; empty for an anonymous tablet. Shared with the
    /// presence counts, which key by it.
    pub token_id: Arc<str>,
    /// Connected without a token (`compat.anonymous`): may follow the
    /// legacy destination of stores opted in, read-only.
    pub anonymous: bool,
    /// The client's address group, counted against
    /// `stomp.max_connections_per_address` while the tablet is here.
    address: Option<IpAddr>,
    /// Stores the hub lists this tablet under (the hub's own keys).
    joined: Mutex<Vec<Arc<str>>>,
    /// Subscription id → what it carries.
    pub subscriptions: Mutex<Subscriptions>,
    pub acks: Mutex<AckBook>,
    pub outbound: Mutex<Outbound>,
    /// Wakes the connection task when something is queued.
    pub wake: Notify,
    capacity: usize,
    /// Calls this tablet acknowledged first (the newest few): it is not
    /// told that it took them itself. Boxed on first use.
    took: Mutex<Option<Box<Took>>>,
}

impl Tablet {
    fn lock_out(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ack_book(&self) -> std::sync::MutexGuard<'_, AckBook> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a popup. An update of a call already queued replaces it in
    /// place; a full queue closes the tablet as a slow consumer. Returns
    /// false when the tablet is (now) closing instead.
    fn offer(&self, event: Arc<Prepared>) -> bool {
        let mut out = self.lock_out();
        if out.closing.is_some() {
            return false;
        }
        let same = |p: &Arc<Prepared>| p.call_id() == event.call_id() && p.kind() == event.kind();
        if let Some(slot) = out.popups.iter_mut().find(|p| same(p)) {
            if event.rank() >= slot.rank() {
                *slot = event;
            }
        } else if out.popups.len() >= self.capacity {
            out.popups.clear();
            out.closing = Some(Box::new(Close::SlowConsumer));
            m::slow_consumer();
        } else {
            out.popups.push_back(event);
        }
        let queued = out.closing.is_none();
        drop(out);
        self.wake.notify_one();
        queued
    }

    /// Asks the connection to end with `reason`.
    pub fn close(&self, reason: Close) {
        let mut out = self.lock_out();
        if out.closing.is_none() {
            out.popups.clear();
            out.closing = Some(Box::new(reason));
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Takes everything queued: the popups, and the close reason if any.
    pub fn take(&self) -> (Vec<Arc<Prepared>>, Option<Close>) {
        let mut out = self.lock_out();
        (
            out.popups.drain(..).collect(),
            out.closing.as_deref().cloned(),
        )
    }

    fn awaits_ack(&self) -> bool {
        self.subscriptions()
            .values()
            .any(|s| s.ack != AckKind::Auto)
    }

    fn subscribed(&self) -> bool {
        !self.subscriptions().is_empty()
    }

    /// Whether a subscription of this tablet may carry handled events (the
    /// legacy destination never does).
    fn follows_new_destination(&self) -> bool {
        self.subscriptions().values().any(|s| !s.legacy)
    }

    /// Remembers that this tablet took `call_id`.
    pub fn took(&self, call_id: &str) {
        let mut took = self.took.lock().unwrap_or_else(|p| p.into_inner());
        let Took(took) = took.get_or_insert_default().as_mut();
        if took.len() >= TOOK_LIMIT {
            took.pop_front();
        }
        took.push_back(call_id.to_string());
    }

    fn has_taken(&self, call_id: &str) -> bool {
        let took = self.took.lock().unwrap_or_else(|p| p.into_inner());
        took.as_deref()
            .is_some_and(|Took(t)| t.iter().any(|c| c == call_id))
    }
}

/// Calls a tablet took, newest last.
#[derive(Debug, Default)]
struct Took(VecDeque<String>);

/// Calls a tablet remembers having taken: far more than it can show at once.
const TOOK_LIMIT: usize = 64;

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

/// See [`Hub::presence_changes`].
#[derive(Debug, Default)]
struct PresenceCounts {
    counts: HashMap<PresenceKey, i64>,
    dirty: HashSet<PresenceKey>,
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

/// Calls whose handled event this instance passed on (call → its expiry),
/// pruned like `SeenCalls`.
#[derive(Debug)]
struct HandledCalls {
    calls: HashMap<String, DateTime<Utc>>,
    prune_above: usize,
}

/// Store (one allocation per store, shared with its tablets' lists) →
/// tablet id → tablet.
type TabletsByStore = HashMap<Arc<str>, HashMap<u64, Arc<Tablet>>>;

pub struct Hub {
    config: Arc<Config>,
    db: Db,
    /// Store → tablets following its calls here.
    tablets: RwLock<TabletsByStore>,
    /// Tablets here per (store, token), kept as they join and leave, and
    /// which of those counts changed since the presence task last wrote.
    presence: Mutex<PresenceCounts>,
    /// Connected tablets: with a token, and anonymous.
    with_token: AtomicU64,
    anonymous: AtomicU64,
    /// Connected tablets per client address group (IPv6: per
    /// `server.ipv6_prefix` block), for `stomp.max_connections_per_address`.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    seen: Mutex<SeenCalls>,
    /// Calls whose handled event went out here, until a TTL past expiry.
    handled: Mutex<HandledCalls>,
    /// Calls whose bus message waits for a tablet's ACK (ack mode manual).
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Every event this instance receives, for observers (tests, tools).
    watchers: broadcast::Sender<CallEvent>,
    /// This instance's part of calls' delivery trails (set at start).
    trail: std::sync::OnceLock<Arc<Trail>>,
    /// Told when a store's first tablet comes and its last one leaves
    /// (set at start; weak, since the bus holds the hub).
    bus: std::sync::OnceLock<std::sync::Weak<dyn Bus>>,
}

impl Hub {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        let (watchers, _) = broadcast::channel(1024);
        Hub {
            config,
            db,
            tablets: RwLock::new(HashMap::new()),
            presence: Mutex::new(PresenceCounts::default()),
            with_token: AtomicU64::new(0),
            anonymous: AtomicU64::new(0),
            per_address: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            seen: Mutex::new(SeenCalls::default()),
            handled: Mutex::new(HandledCalls {
                calls: HashMap::new(),
                prune_above: 10_000,
            }),
            waiting: Mutex::new(HashMap::new()),
            watchers,
            trail: std::sync::OnceLock::new(),
            bus: std::sync::OnceLock::new(),
        }
    }

    /// Tells `bus` from now on which stores have tablets here.
    pub fn attach_bus(&self, bus: &Arc<dyn Bus>) {
        let _ = self.bus.set(Arc::downgrade(bus));
    }

    /// Called with the tablets' lock held, so changes reach the bus in the
    /// order they happened.
    fn tell_bus(&self, change: Interest) {
        if let Some(bus) = self.bus.get().and_then(std::sync::Weak::upgrade) {
            bus.interest(change);
        }
    }

    /// Records what becomes of every event here in `trail`.
    pub fn attach_trail(&self, trail: Arc<Trail>) {
        let _ = self.trail.set(trail);
    }

    fn trail(&self) -> Option<&Arc<Trail>> {
        self.trail.get()
    }

    /// The (store, token) counts changed since the last call, each with
    /// its count now (0: none left); anonymous tablets count under the
    /// token `""`, once per store they follow. What a failed write did
    /// not store goes back with [`Hub::presence_unwritten`].
    pub fn presence_changes(&self) -> Vec<(PresenceKey, i64)> {
        let mut p = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut p.dirty);
        dirty
            .into_iter()
            .map(|k| {
                let n = p.counts.get(&k).copied().unwrap_or(0);
                (k, n)
            })
            .collect()
    }

    /// Marks counts that [`Hub::presence_changes`] returned as still to
    /// be written.
    pub fn presence_unwritten(&self, keys: impl IntoIterator<Item = PresenceKey>) {
        let mut p = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        p.dirty.extend(keys);
    }

    /// Token ids of the tablets connected here (without `""`), each once.
    pub fn presence_tokens(&self) -> Vec<Arc<str>> {
        let p = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        let tokens: HashSet<&Arc<str>> = p
            .counts
            .keys()
            .map(|k| &k.token_id)
            .filter(|t| !t.is_empty())
            .collect();
        tokens.into_iter().cloned().collect()
    }

    fn presence_add(&self, store: &Arc<str>, token_id: &Arc<str>, by: i64) {
        let key = PresenceKey {
            store: store.clone(),
            token_id: token_id.clone(),
        };
        let mut p = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        let n = p.counts.entry(key.clone()).or_insert(0);
        *n += by;
        if *n <= 0 {
            p.counts.remove(&key);
        }
        p.dirty.insert(key);
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

    fn new_tablet(
        &self,
        store: &str,
        token_id: &str,
        anonymous: bool,
        address: Option<IpAddr>,
    ) -> Arc<Tablet> {
        Arc::new(Tablet {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            store: store.to_string(),
            token_id: Arc::from(token_id),
            anonymous,
            address,
            joined: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Subscriptions::default()),
            acks: Mutex::new(AckBook::default()),
            outbound: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            capacity: self.config.stomp.outbound_queue,
            took: Mutex::new(None),
        })
    }

    /// Adds a tablet that has just connected with a token of `store`
    /// from `client`, unless the token or the client's address group has
    /// its share of tablets here (`stomp.max_connections_per_token`,
    /// `stomp.max_connections_per_address`; 0: no cap).
    pub fn register(
        &self,
        store: &str,
        token_id: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<Tablet>, Crowded> {
        let address = self.take_address(client)?;
        let tablet = self.new_tablet(store, token_id, false, address);
        let cap = self.config.stomp.max_connections_per_token;
        {
            let mut joined = tablet.joined.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock that adds it: racing CONNECTs of one
            // token cannot pass the cap together.
            let same_token = all.get(store).map_or(0, |t| {
                t.values().filter(|t| *t.token_id == *token_id).count()
            });
            if cap > 0 && same_token >= cap {
                drop((joined, all));
                self.release_address(address);
                return Err(Crowded::Token { limit: cap });
            }
            self.with_token.fetch_add(1, Ordering::Relaxed);
            self.join_locked(&tablet, store, &mut joined, &mut all);
        }
        Ok(tablet)
    }

    /// Adds a tablet that connected without a token from `client`
    /// (subject to the per-address cap); it follows the stores it
    /// subscribes to (`join`).
    pub fn register_anonymous(&self, client: Option<IpAddr>) -> Result<Arc<Tablet>, Crowded> {
        let address = self.take_address(client)?;
        let tablet = self.new_tablet("", "", true, address);
        self.anonymous.fetch_add(1, Ordering::Relaxed);
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        self.gauge(&all);
        Ok(tablet)
    }

    /// Counts one more tablet for `client`'s address group, unless it has
    /// its share already.
    fn take_address(&self, client: Option<IpAddr>) -> Result<Option<IpAddr>, Crowded> {
        let Some(client) = client else {
            return Ok(None);
        };
        let group = crate::address::AddressGroup::new(self.config.server.ipv6_prefix).of(client);
        let cap = self.config.stomp.max_connections_per_address;
        let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(group).or_insert(0);
        if cap > 0 && *n >= cap {
            return Err(Crowded::Address { limit: cap });
        }
        *n += 1;
        Ok(Some(group))
    }

    fn release_address(&self, group: Option<IpAddr>) {
        let Some(group) = group else { return };
        let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&group);
            }
        }
    }

    /// Lists `tablet` under `store`, so that store's calls reach it.
    pub fn join(&self, tablet: &Arc<Tablet>, store: &str) {
        let mut joined = tablet.joined.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
        self.join_locked(tablet, store, &mut joined, &mut all);
    }

    fn join_locked(
        &self,
        tablet: &Arc<Tablet>,
        store: &str,
        joined: &mut Vec<Arc<str>>,
        all: &mut TabletsByStore,
    ) {
        if !joined.iter().any(|s| &**s == store) {
            // One allocation per store here, shared by its tablets.
            let key = match all.get_key_value(store) {
                Some((k, _)) => k.clone(),
                None => Arc::from(store),
            };
            joined.reserve_exact(1);
            joined.push(key.clone());
            let tablets = all.entry(key.clone()).or_default();
            tablets.insert(tablet.id, tablet.clone());
            if tablets.len() == 1 {
                self.tell_bus(Interest::Follow(store.to_string()));
            }
            self.presence_add(&key, &tablet.token_id, 1);
        }
        self.gauge(all);
    }

    pub fn unregister(&self, tablet: &Tablet) {
        let joined = std::mem::take(&mut *tablet.joined.lock().unwrap_or_else(|p| p.into_inner()));
        let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
        for name in &joined {
            if let Some(store) = all.get_mut(name) {
                if store.remove(&tablet.id).is_some() {
                    self.presence_add(name, &tablet.token_id, -1);
                }
                if store.is_empty() {
                    all.remove(name);
                    self.tell_bus(Interest::Unfollow(name.to_string()));
                }
            }
        }
        let counter = if tablet.anonymous {
            &self.anonymous
        } else {
            &self.with_token
        };
        counter.fetch_sub(1, Ordering::Relaxed);
        self.gauge(&all);
        drop(all);
        self.release_address(tablet.address);
    }

    fn gauge(&self, all: &TabletsByStore) {
        m::tablets(
            self.with_token.load(Ordering::Relaxed) as usize,
            self.anonymous.load(Ordering::Relaxed) as usize,
            all.len(),
        );
    }

    /// Connected tablets (with a token or anonymous) and stores with at
    /// least one.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        let tablets =
            self.with_token.load(Ordering::Relaxed) + self.anonymous.load(Ordering::Relaxed);
        (tablets as usize, all.len())
    }

    /// Tablets connected here with a token, per store.
    pub fn tablets_by_store(&self) -> HashMap<String, usize> {
        self.count_by_store(false)
    }

    /// Anonymous tablets following each store here.
    pub fn anonymous_by_store(&self) -> HashMap<String, usize> {
        self.count_by_store(true)
    }

    fn count_by_store(&self, anonymous: bool) -> HashMap<String, usize> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.values().filter(|t| t.anonymous == anonymous).count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Stores with a tablet here.
    fn stores_here(&self) -> HashSet<String> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.keys().map(|k| k.to_string()).collect()
    }

    fn every_tablet(&self) -> Vec<Arc<Tablet>> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashSet::new();
        all.values()
            .flat_map(|s| s.values())
            .filter(|t| seen.insert(t.id))
            .cloned()
            .collect()
    }

    /// Tells every tablet to reconnect (graceful shutdown).
    pub async fn close_all(&self, _why: &str) {
        for t in self.every_tablet() {
            t.close(Close::ServerRestart);
        }
    }

    /// Closes tablets whose token is among `dead` token ids.
    pub fn close_revoked(&self, dead: &HashSet<String>) -> usize {
        let mut closed = 0;
        for t in self.every_tablet() {
            if !t.anonymous && dead.contains(&*t.token_id) {
                t.close(Close::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Whether a subscribed tablet of `store` is connected here.
    fn has_subscribed(&self, store: &str) -> bool {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.get(store)
            .is_some_and(|s| s.values().any(|t| t.subscribed()))
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
            if let Some(trail) = self.trail() {
                trail.expired(&event.call_id, self.has_subscribed(&event.store));
            }
            return Ok(Handled::Done);
        }
        if !self.fresh(&event, now) {
            tracing::debug!(call = %event.call_id, "duplicate or stale event dropped");
            return Ok(Handled::Done);
        }
        let _ = self.watchers.send(event.clone());
        let targets: Vec<Arc<Tablet>> = {
            let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
            all.get(event.store.as_str())
                .map(|s| s.values().filter(|t| t.subscribed()).cloned().collect())
                .unwrap_or_default()
        };
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
            let tokens = targets.iter().map(|t| &t.token_id[..]);
            trail.reached(event.call_id(), tokens, slow);
        }
        Ok(handled)
    }

    /// A tablet took a call: every other subscribed tablet of its store
    /// here gets the handled event (once per call; the legacy destination
    /// filters it out when writing).
    async fn handled(&self, event: HandledEvent) {
        let now = Utc::now();
        if !event.is_live(now) {
            m::popup_expired();
            return;
        }
        if !self.first_handled(&event, now) {
            return;
        }
        let targets: Vec<Arc<Tablet>> = {
            let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
            all.get(event.store.as_str())
                .map(|s| {
                    s.values()
                        .filter(|t| t.follows_new_destination() && !t.has_taken(&event.call_id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
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
        let stores: Vec<String> = self.stores_here().into_iter().collect();
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

impl Hub {
    /// Replays every change of `stores` still inside its TTL; returns the
    /// changes, pages and time it took, or `None` when it stopped early.
    async fn catch_up(&self, stores: &[String]) -> Option<(usize, usize, std::time::Duration)> {
        let ttl = self.config.bus.message_ttl;
        let since = Utc::now() - self.config.bus.ttl();
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
                let _ = self.handle(row.event_at(ttl, at)).await;
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

impl Hub {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallStatus;

    fn tablet(capacity: usize) -> Tablet {
        Tablet {
            id: 1,
            store: "s".into(),
            token_id: "t".into(),
            anonymous: false,
            address: None,
            joined: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Subscriptions::default()),
            acks: Mutex::new(AckBook::default()),
            outbound: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            capacity,
            took: Mutex::new(None),
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
            published_us: None,
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
            .map(|p| (p.call_id(), p.call().unwrap().status))
            .collect();
        assert_eq!(
            got,
            [("a", CallStatus::Completed), ("b", CallStatus::Ringing)]
        );
    }

    #[test]
    fn a_handled_event_queues_beside_its_call_and_replaces_only_its_own_kind() {
        let t = tablet(4);
        t.offer(event("a", CallStatus::Ringing));
        let handled = |by: &str| {
            Arc::new(Prepared::handled(HandledEvent::new(
                "a",
                "s",
                by,
                Utc::now(),
                std::time::Duration::from_secs(30),
            )))
        };
        t.offer(handled("desk"));
        t.offer(handled("bay"));
        t.offer(event("a", CallStatus::Answered));
        let (popups, _) = t.take();
        let got: Vec<(EventKind, Option<CallStatus>)> = popups
            .iter()
            .map(|p| (p.kind(), p.call().map(|c| c.status)))
            .collect();
        assert_eq!(
            got,
            [
                (EventKind::Call, Some(CallStatus::Answered)),
                (EventKind::Handled, None)
            ]
        );
        assert!(
            popups[1].legacy_json().is_none(),
            "never in the legacy shape"
        );
        assert!(popups[0].legacy_json().is_some());
        t.took("a");
        assert!(t.has_taken("a") && !t.has_taken("b"));
        for i in 0..TOOK_LIMIT {
            t.took(&format!("c{i}"));
        }
        assert!(!t.has_taken("a"), "the oldest are forgotten");
    }

    #[test]
    fn a_full_queue_closes_the_tablet_as_slow() {
        let t = tablet(2);
        for id in ["a", "b", "c"] {
            t.offer(event(id, CallStatus::Ringing));
        }
        let (popups, closing) = t.take();
        assert!(popups.is_empty());
        assert_eq!(closing, Some(Close::SlowConsumer));
    }

    #[test]
    fn subscriptions_add_replace_and_remove_by_id() {
        let sub = |store: &str| Subscription {
            ack: AckKind::Auto,
            store: store.into(),
            legacy: false,
        };
        let mut subs = Subscriptions::default();
        assert!(subs.is_empty());
        subs.insert("a".into(), sub("s1"));
        subs.insert("b".into(), sub("s2"));
        subs.insert("a".into(), sub("s3"));
        assert_eq!(subs.len(), 2);
        assert_eq!(subs.get("a").map(|s| s.store.as_str()), Some("s3"));
        assert!(subs.contains_key("b") && !subs.contains_key("c"));
        assert_eq!(subs.remove("a").map(|s| s.store), Some("s3".to_string()));
        assert!(subs.remove("a").is_none());
        let left: Vec<&String> = subs.iter().map(|(k, _)| k).collect();
        assert_eq!(left, ["b"]);
    }

    #[test]
    fn ack_book_settles_individually_and_cumulatively() {
        let sub = |ack| Subscription {
            ack,
            store: "s".into(),
            legacy: false,
        };
        let mut kinds = Subscriptions::default();
        kinds.insert("a".to_string(), sub(AckKind::ClientIndividual));
        kinds.insert("b".to_string(), sub(AckKind::Client));
        let mut book = AckBook::default();
        for i in 0..3 {
            book.record("a", format!("a{i}"), format!("call{i}"));
            book.record("b", format!("b{i}"), format!("call{i}"));
        }
        let calls = |r: Option<(String, Vec<String>)>| r.map(|(_, c)| c).unwrap_or_default();
        assert_eq!(calls(book.settle("a1", &kinds)), ["call1"]);
        assert!(book.settle("a1", &kinds).is_none());
        assert_eq!(
            book.settle("b1", &kinds),
            Some((
                "b".to_string(),
                vec!["call0".to_string(), "call1".to_string()]
            ))
        );
        assert_eq!(calls(book.settle("b2", &kinds)), ["call2"]);
        assert!(book.settle("nope", &kinds).is_none());
    }
}
