//! How many tablets this instance holds per (store, token), and which of
//! those counts changed since the presence task last wrote them. The hub
//! keeps the counts as tablets join and leave; the presence task drains
//! the changes into the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Tablets connected to one instance under one store and token (`""` for
/// anonymous tablets): the key of the presence counts and their rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceKey {
    pub store: Arc<str>,
    pub token_id: Arc<str>,
}

#[derive(Debug, Default)]
pub struct PresenceBook(Mutex<Counts>);

#[derive(Debug, Default)]
struct Counts {
    counts: HashMap<PresenceKey, i64>,
    dirty: HashSet<PresenceKey>,
}

impl PresenceBook {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The (store, token) counts changed since the last call, each with
    /// its count now (0: none left); anonymous tablets count under the
    /// token `""`, once per store they follow. What a failed write did
    /// not store goes back with [`PresenceBook::unwritten`].
    pub fn changes(&self) -> Vec<(PresenceKey, i64)> {
        let mut p = self.lock();
        let dirty = std::mem::take(&mut p.dirty);
        dirty
            .into_iter()
            .map(|k| {
                let n = p.counts.get(&k).copied().unwrap_or(0);
                (k, n)
            })
            .collect()
    }

    /// Marks counts that [`PresenceBook::changes`] returned as still to
    /// be written.
    pub fn unwritten(&self, keys: impl IntoIterator<Item = PresenceKey>) {
        self.lock().dirty.extend(keys);
    }

    /// Token ids of the tablets connected here (without `""`), each once.
    pub fn tokens(&self) -> Vec<Arc<str>> {
        let p = self.lock();
        let tokens: HashSet<&Arc<str>> = p
            .counts
            .keys()
            .map(|k| &k.token_id)
            .filter(|t| !t.is_empty())
            .collect();
        tokens.into_iter().cloned().collect()
    }

    /// Counts `by` more (or fewer) tablets under (`store`, `token_id`).
    pub fn add(&self, store: &Arc<str>, token_id: &Arc<str>, by: i64) {
        let key = PresenceKey {
            store: store.clone(),
            token_id: token_id.clone(),
        };
        let mut p = self.lock();
        let n = p.counts.entry(key.clone()).or_insert(0);
        *n += by;
        if *n <= 0 {
            p.counts.remove(&key);
        }
        p.dirty.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_drain_once_and_unwritten_ones_come_back() {
        let book = PresenceBook::default();
        let (s, t): (Arc<str>, Arc<str>) = (Arc::from("wash"), Arc::from("tok"));
        book.add(&s, &t, 1);
        book.add(&s, &t, 1);
        let changes = book.changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, 2);
        assert!(book.changes().is_empty(), "drained");
        book.add(&s, &t, -2);
        let gone = book.changes();
        assert_eq!(gone[0].1, 0, "none left");
        assert!(book.tokens().is_empty());
        book.unwritten(gone.into_iter().map(|(k, _)| k));
        assert_eq!(book.changes().len(), 1, "a failed write is retried");
    }
}
