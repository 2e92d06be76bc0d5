//! A tablet's STOMP subscriptions and the messages it has not yet
//! acknowledged: what the session records and the hub consults when it
//! decides whom an event goes to.

use std::collections::{HashMap, VecDeque};

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

/// Calls a tablet acknowledged first, newest last (the newest few): it is
/// not told that it took them itself. Boxed on first use.
#[derive(Debug, Default)]
pub struct Taken(Option<Box<TakenList>>);

#[derive(Debug, Default)]
struct TakenList(VecDeque<String>);

/// Calls a tablet remembers having taken: far more than it can show at once.
pub const TAKEN_LIMIT: usize = 64;

impl Taken {
    pub fn remember(&mut self, call_id: &str) {
        let TakenList(took) = self.0.get_or_insert_default().as_mut();
        if took.len() >= TAKEN_LIMIT {
            took.pop_front();
        }
        took.push_back(call_id.to_string());
    }

    pub fn has(&self, call_id: &str) -> bool {
        self.0
            .as_deref()
            .is_some_and(|TakenList(t)| t.iter().any(|c| c == call_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
