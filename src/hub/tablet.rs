//! One connected tablet as the hub keeps it: its subscriptions, its ACK
//! bookkeeping and its bounded outgoing queue (updates of one call replace
//! each other; a full queue ends the connection as a slow consumer), and
//! the event as tablets receive it, serialised once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::call::{BusEvent, CallEvent, EventKind, HandledEvent};
use crate::metrics as m;

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
    event: BusEvent,
    pub json: String,
    /// The legacy destination's body, written when first asked for.
    legacy: std::sync::OnceLock<String>,
}

impl Prepared {
    pub fn new(event: CallEvent) -> Self {
        Self::of(BusEvent::Call(event))
    }

    pub fn handled(event: HandledEvent) -> Self {
        Self::of(BusEvent::Handled(event))
    }

    fn of(event: BusEvent) -> Self {
        Prepared {
            json: event.to_json(),
            event,
            legacy: std::sync::OnceLock::new(),
        }
    }

    /// The call event, when this is one.
    pub fn call(&self) -> Option<&CallEvent> {
        match &self.event {
            BusEvent::Call(e) => Some(e),
            BusEvent::Handled(_) => None,
        }
    }

    pub fn kind(&self) -> EventKind {
        match &self.event {
            BusEvent::Call(_) => EventKind::Call,
            BusEvent::Handled(_) => EventKind::Handled,
        }
    }

    pub fn call_id(&self) -> &str {
        self.event.call_id()
    }

    pub fn store(&self) -> &str {
        self.event.store()
    }

    /// When its bus message was published, in microseconds (RabbitMQ).
    pub fn published_us(&self) -> Option<i64> {
        self.call().and_then(|e| e.published_us)
    }

    pub fn published_at(&self) -> DateTime<Utc> {
        self.event.published_at()
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.event.is_live(now)
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
    /// Calls this tablet acknowledged first (the newest few): it is not
    /// told that it took them itself. Boxed on first use.
    took: Mutex<Option<Box<Took>>>,
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
            took: Mutex::new(None),
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
    pub(crate) fn offer(&self, event: Arc<Prepared>) -> bool {
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
        let Took(took) = took.get_or_insert_default().as_mut();
        if took.len() >= TOOK_LIMIT {
            took.pop_front();
        }
        took.push_back(call_id.to_string());
    }

    pub(crate) fn has_taken(&self, call_id: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallStatus;

    fn tablet(capacity: usize) -> Tablet {
        Tablet::new(1, "s", "t", false, None, capacity)
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
        assert_eq!(closing, Some(Kick::SlowConsumer));
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
