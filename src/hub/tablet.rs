//! One connected tablet as the hub keeps it: its subscriptions, its ACK
//! bookkeeping and its bounded outgoing queue (updates of one call replace
//! each other; a full queue ends the connection as a slow consumer).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::metrics as m;
use crate::prepared::Prepared;
use crate::subscription::{AckBook, AckKind, Subscriptions, Taken};

/// Why the hub asks a tablet's connection to end; the transport turns it
/// into its own close (STOMP's ERROR and close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its queue overflowed: it fell too far behind its popups.
    SlowConsumer,
    /// Its token was revoked (or its store removed) while connected.
    Revoked,
    /// The instance is stopping.
    ServerRestart,
}

/// What waits to be written to one tablet.
#[derive(Debug, Default)]
pub struct Outbound {
    pub popups: VecDeque<Arc<Prepared>>,
    /// Set when the connection must end; the writer sends the ERROR and closes.
    pub closing: Option<Box<Kick>>,
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
    /// When it connected (the instance's clock, ms since the epoch): a
    /// change stored before then reaches it through the call list it reads
    /// on connecting, not as a popup from the bus or the relay.
    pub since_ms: i64,
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
    pub(super) address: Option<IpAddr>,
    /// Stores the hub lists this tablet under (the hub's own keys).
    pub(super) joined: Mutex<Vec<Arc<str>>>,
    /// Subscription id → what it carries.
    pub subscriptions: Mutex<Subscriptions>,
    pub acks: Mutex<AckBook>,
    pub outbound: Mutex<Outbound>,
    /// Wakes the connection task when something is queued.
    pub wake: Notify,
    capacity: usize,
    /// Calls this tablet acknowledged first: it is not told that it took
    /// them itself.
    took: Mutex<Taken>,
}

impl Tablet {
    pub(super) fn new(
        id: u64,
        store: &str,
        token_id: &str,
        anonymous: bool,
        address: Option<IpAddr>,
        capacity: usize,
    ) -> Self {
        Tablet {
            id,
            since_ms: crate::clock::now().timestamp_millis(),
            store: store.to_string(),
            token_id: Arc::from(token_id),
            anonymous,
            address,
            joined: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Subscriptions::default()),
            acks: Mutex::new(AckBook::default()),
            outbound: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            capacity,
            took: Mutex::new(Taken::default()),
        }
    }

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
    pub fn offer(&self, event: Arc<Prepared>) -> bool {
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
            out.closing = Some(Box::new(Kick::SlowConsumer));
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
    pub fn close(&self, reason: Kick) {
        let mut out = self.lock_out();
        if out.closing.is_none() {
            out.popups.clear();
            out.closing = Some(Box::new(reason));
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Takes everything queued: the popups, and the close reason if any.
    pub fn take(&self) -> (Vec<Arc<Prepared>>, Option<Kick>) {
        let mut out = self.lock_out();
        (
            out.popups.drain(..).collect(),
            out.closing.as_deref().cloned(),
        )
    }

    pub(crate) fn awaits_ack(&self) -> bool {
        self.subscriptions()
            .values()
            .any(|s| s.ack != AckKind::Auto)
    }

    pub(crate) fn subscribed(&self) -> bool {
        !self.subscriptions().is_empty()
    }

    /// Whether a subscription of this tablet may carry handled events (the
    /// legacy destination never does).
    pub(crate) fn follows_new_destination(&self) -> bool {
        self.subscriptions().values().any(|s| !s.legacy)
    }

    /// Remembers that this tablet took `call_id`.
    pub fn took(&self, call_id: &str) {
        let mut took = self.took.lock().unwrap_or_else(|p| p.into_inner());
        took.remember(call_id);
    }

    pub fn has_taken(&self, call_id: &str) -> bool {
        let took = self.took.lock().unwrap_or_else(|p| p.into_inner());
        took.has(call_id)
    }
}
