//! The tablets connected to this instance, by store: who they are, which
//! stores they follow, how many each token and address holds (the caps),
//! and the presence counts the presence task writes. It knows nothing of
//! the bus, the database or the wire protocol: delivery hands it events,
//! the STOMP session registers tablets, and the bus hears of stores coming
//! and going through `on_interest`.

mod tablet;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::metrics as m;
use crate::presence_book::PresenceBook;

pub use tablet::{Crowded, Kick, Outbound, Tablet};

/// A store gained its first tablet here, or lost its last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// The first tablet of the store here.
    Follow(String),
    /// The last tablet of the store here left.
    Unfollow(String),
}

/// Store (one allocation per store, shared with its tablets' lists) →
/// tablet id → tablet.
type TabletsByStore = HashMap<Arc<str>, HashMap<u64, Arc<Tablet>>>;

pub struct Hub {
    config: Arc<Config>,
    /// Store → tablets following its calls here.
    tablets: RwLock<TabletsByStore>,
    /// Tablets here per (store, token), kept as they join and leave.
    presence: PresenceBook,
    /// Connected tablets: with a token, and anonymous.
    with_token: AtomicU64,
    anonymous: AtomicU64,
    /// Connected tablets per client address group (IPv6: per
    /// `server.ipv6_prefix` block), for `stomp.max_connections_per_address`.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    /// Told when a store's first tablet comes and its last one leaves
    /// (set at start: the bus, for store-routed delivery).
    interest: std::sync::OnceLock<Box<dyn Fn(Interest) + Send + Sync>>,
}

impl Hub {
    pub fn new(config: Arc<Config>) -> Self {
        Hub {
            config,
            tablets: RwLock::new(HashMap::new()),
            presence: PresenceBook::default(),
            with_token: AtomicU64::new(0),
            anonymous: AtomicU64::new(0),
            per_address: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            interest: std::sync::OnceLock::new(),
        }
    }

    /// Tells `listener` from now on which stores have tablets here.
    pub fn on_interest(&self, listener: impl Fn(Interest) + Send + Sync + 'static) {
        let _ = self.interest.set(Box::new(listener));
    }

    /// Called with the tablets' lock held, so changes are told in the
    /// order they happened.
    fn tell_bus(&self, change: Interest) {
        if let Some(listener) = self.interest.get() {
            listener(change);
        }
    }

    /// The presence counts of the tablets here, for the presence task.
    pub fn presence(&self) -> &PresenceBook {
        &self.presence
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn new_tablet(
        &self,
        store: &str,
        token_id: &str,
        anonymous: bool,
        address: Option<IpAddr>,
    ) -> Arc<Tablet> {
        Arc::new(Tablet::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            store,
            token_id,
            anonymous,
            address,
            self.config.stomp.outbound_queue,
        ))
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
        let group = self.config.server.address_group().of(client);
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
            self.presence.add(&key, &tablet.token_id, 1);
        }
        self.gauge(all);
    }

    pub fn unregister(&self, tablet: &Tablet) {
        let joined = std::mem::take(&mut *tablet.joined.lock().unwrap_or_else(|p| p.into_inner()));
        let mut all = self.tablets.write().unwrap_or_else(|p| p.into_inner());
        for name in &joined {
            if let Some(store) = all.get_mut(name) {
                if store.remove(&tablet.id).is_some() {
                    self.presence.add(name, &tablet.token_id, -1);
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
    pub fn stores_here(&self) -> HashSet<String> {
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
    pub fn close_all(&self) {
        for t in self.every_tablet() {
            t.close(Kick::ServerRestart);
        }
    }

    /// Closes tablets whose token is among `dead` token ids.
    pub fn close_revoked(&self, dead: &HashSet<String>) -> usize {
        let mut closed = 0;
        for t in self.every_tablet() {
            if !t.anonymous && dead.contains(&*t.token_id) {
                t.close(Kick::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// The tablets of `store` here that `wanted` picks.
    pub fn tablets_of(&self, store: &str, wanted: impl Fn(&Tablet) -> bool) -> Vec<Arc<Tablet>> {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.get(store)
            .map(|s| s.values().filter(|t| wanted(t)).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a subscribed tablet of `store` is connected here.
    pub fn has_subscribed(&self, store: &str) -> bool {
        let all = self.tablets.read().unwrap_or_else(|p| p.into_inner());
        all.get(store)
            .is_some_and(|s| s.values().any(|t| t.subscribed()))
    }
}
