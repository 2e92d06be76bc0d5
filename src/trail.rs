//! A call's delivery trail, as the operator console shows it: which instance
//! received it and when the broker confirmed it, and on every instance
//! whether it reached tablets (how many, which tokens) or why not.
//!
//! Nothing here writes per tablet or per popup: each instance keeps its
//! part of each recent call in memory and writes the calls that changed in
//! one batch a second (one row per instance per call, rewritten whole), so
//! the database sees one statement a second per instance whatever the
//! traffic. A SIGKILL loses at most the last second of trail, never a call.
//!
//! With fanout every instance consumes every call. An instance that holds
//! no tablet of the call's store, and did not receive the call itself,
//! keeps that outcome in memory only: it is written if the call later
//! turns out to concern it (it receives a CDR of the call, or tablets of
//! the store reach it), so trail rows follow where calls were received and
//! shown, not calls × instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::{now_millis, Db, TrailRow};

/// How often changed trails are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a call's trail stays in memory after its last change (updates
/// of one call arrive over its ringing and talking time).
const KEEP_MS: i64 = 10 * 60 * 1000;
/// How long the part of a call that does not concern this instance (never
/// received here, no tablet of its store here) stays in memory: long
/// enough for the receiving instance's own `received` to follow its bus
/// delivery. With fanout every instance sees every call, so keeping these
/// as long as `KEEP_MS` grew each instance by the fleet's whole call rate
/// times ten minutes (120,000 entries, 60 MiB, at 200 calls/s).
const KEEP_UNCONCERNED_MS: i64 = 60 * 1000;

/// Why a call did or did not reach tablets on one instance; the strongest
/// seen wins (a later delivery outranks an earlier "no tablet").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Outcome {
    /// Only received and published here (no event consumed yet).
    #[default]
    Received,
    /// The event had expired when it arrived.
    Expired,
    /// No tablet of the store was connected here.
    NoTablet,
    /// Every tablet it was for was dropped as a slow consumer.
    SlowConsumer,
    /// Queued for at least one tablet.
    Delivered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Expired => "expired",
            Outcome::NoTablet => "no-tablet",
            Outcome::SlowConsumer => "slow-consumer",
            Outcome::Delivered => "delivered",
        }
    }
}

impl Outcome {
    /// The outcome a stored trail row names (`None`: a word this version
    /// does not know).
    pub fn parse(word: &str) -> Option<Self> {
        [
            Outcome::Received,
            Outcome::Expired,
            Outcome::NoTablet,
            Outcome::SlowConsumer,
            Outcome::Delivered,
        ]
        .into_iter()
        .find(|o| o.as_str() == word)
    }
}

/// Why a call did or did not become an acknowledged popup, across every
/// instance's trail: what the console shows first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Acknowledged,
    ShownNotAcknowledged,
    SlowConsumer,
    NoTabletOnline,
    Expired,
    NotPublished,
    InFlight,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Acknowledged => "acknowledged",
            Verdict::ShownNotAcknowledged => "shown-not-acknowledged",
            Verdict::SlowConsumer => "slow-consumer",
            Verdict::NoTabletOnline => "no-tablet-online",
            Verdict::Expired => "expired",
            Verdict::NotPublished => "not-published",
            Verdict::InFlight => "in-flight",
        }
    }
}

/// The verdict on a call from whether it was acknowledged, whether its
/// change reached the bus, and its trail rows.
pub fn verdict(acknowledged: bool, published: bool, trail: &[TrailRow]) -> Verdict {
    let any = |o: Outcome| trail.iter().any(|r| Outcome::parse(&r.outcome) == Some(o));
    if acknowledged {
        Verdict::Acknowledged
    } else if any(Outcome::Delivered) {
        Verdict::ShownNotAcknowledged
    } else if any(Outcome::SlowConsumer) {
        Verdict::SlowConsumer
    } else if any(Outcome::NoTablet) {
        Verdict::NoTabletOnline
    } else if any(Outcome::Expired) {
        Verdict::Expired
    } else if !published {
        Verdict::NotPublished
    } else {
        Verdict::InFlight
    }
}

#[derive(Debug, Default)]
struct Entry {
    received_at: Option<i64>,
    published_at: Option<i64>,
    reached_at: Option<i64>,
    last_at: Option<i64>,
    events: i64,
    tablets: i64,
    /// Token ids reached, sorted, each once (shared with the tablets).
    tokens: Vec<Arc<str>>,
    outcome: Outcome,
    dirty: bool,
    /// Ever to be written: received here, or reached tablets here.
    concerned: bool,
    touched: i64,
}

impl Entry {
    fn kept(&self, now: i64) -> bool {
        let keep = if self.concerned {
            KEEP_MS
        } else {
            KEEP_UNCONCERNED_MS
        };
        self.dirty || now - self.touched < keep
    }
}

/// This instance's part of recent calls' trails, written in batches.
#[derive(Debug)]
pub struct Trail {
    instance: String,
    db: Db,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Trail {
    /// Starts the writer; it writes a last batch when `stop` is cancelled.
    pub fn start(db: Db, instance: String, stop: CancellationToken) -> Arc<Self> {
        let trail = Arc::new(Trail {
            instance,
            // Trails are written on a connection of their own, never one
            // that a CDR waits for, without waiting for the disk: a crash
            // loses at most the last batch, as SIGKILL does anyway.
            db: db.background_writer(),
            entries: Mutex::new(HashMap::new()),
        });
        let writer = trail.clone();
        tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    _ = stop.cancelled() => true,
                    _ = tokio::time::sleep(FLUSH_EVERY) => false,
                };
                writer.flush().await;
                if stopping {
                    return;
                }
            }
        });
        trail
    }

    fn touch(&self, seq: &str, change: impl FnOnce(&mut Entry, i64)) {
        self.note(seq, true, change);
    }

    /// Applies `change` to `seq`'s entry; it is written with the next
    /// batch when `write`, or when this instance received the call.
    fn note(&self, seq: &str, write: bool, change: impl FnOnce(&mut Entry, i64)) {
        let now = now_millis();
        let mut all = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = match all.get_mut(seq) {
            Some(e) => e,
            None => all.entry(seq.to_string()).or_default(),
        };
        change(e, now);
        if write || e.received_at.is_some() {
            e.dirty = true;
            e.concerned = true;
        }
        e.touched = now;
    }

    /// This instance stored a CDR of `seq` at `stored_at`; `confirmed`
    /// says whether the broker confirmed its publish.
    pub fn received(&self, seq: &str, stored_at: i64, confirmed: bool) {
        self.touch(seq, |e, now| {
            e.received_at.get_or_insert(stored_at);
            if confirmed {
                e.published_at.get_or_insert(now);
            }
        });
    }

    /// An event of `seq` arrived here already expired; `tablets_here`
    /// says whether a tablet of its store is connected here.
    pub fn expired(&self, seq: &str, tablets_here: bool) {
        self.note(seq, tablets_here, |e, now| {
            e.reached_at.get_or_insert(now);
            e.last_at = Some(now);
            e.outcome = e.outcome.max(Outcome::Expired);
        });
    }

    /// An event of `seq` was queued for the tablets of `tokens` here
    /// (none: no tablet online), `slow` of which were dropped as slow.
    pub fn reached<'a>(&self, seq: &str, tokens: impl Iterator<Item = &'a Arc<str>>, slow: usize) {
        let mut tokens = tokens.peekable();
        let any = tokens.peek().is_some();
        self.note(seq, any, |e, now| {
            e.reached_at.get_or_insert(now);
            e.last_at = Some(now);
            let mut queued = 0i64;
            for t in tokens {
                queued += 1;
                if let Err(at) = e.tokens.binary_search(t) {
                    e.tokens.insert(at, t.clone());
                }
            }
            let delivered = queued - slow as i64;
            e.tablets = e.tablets.max(delivered);
            let outcome = if delivered > 0 {
                e.events += 1;
                Outcome::Delivered
            } else if slow > 0 {
                Outcome::SlowConsumer
            } else {
                Outcome::NoTablet
            };
            e.outcome = e.outcome.max(outcome);
        });
    }

    /// Writes what changed since the last batch; forgets old calls.
    pub async fn flush(&self) {
        self.flush_at(now_millis()).await;
    }

    async fn flush_at(&self, now: i64) {
        let rows: Vec<TrailRow> = {
            let mut all = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let rows = all
                .iter_mut()
                .filter(|(_, e)| e.dirty)
                .map(|(seq, e)| {
                    e.dirty = false;
                    TrailRow {
                        seq: seq.clone(),
                        instance_id: self.instance.clone(),
                        received_at: e.received_at,
                        published_at: e.published_at,
                        reached_at: e.reached_at,
                        last_at: e.last_at,
                        events: e.events,
                        tablets: e.tablets,
                        token_ids: serde_json::to_string(
                            &e.tokens.iter().map(|t| &**t).collect::<Vec<&str>>(),
                        )
                        .unwrap_or_else(|_| "[]".into()),
                        outcome: e.outcome.as_str().to_string(),
                        updated_at: now,
                    }
                })
                .collect();
            all.retain(|_, e| e.kept(now));
            rows
        };
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.db.trail_write(&rows).await {
            tracing::warn!(error = %e, calls = rows.len(), "could not write delivery trails; will retry");
            let mut all = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            for r in rows {
                if let Some(e) = all.get_mut(&r.seq) {
                    e.dirty = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_outranks_an_earlier_miss() {
        assert!(Outcome::Delivered > Outcome::NoTablet);
        assert!(Outcome::NoTablet > Outcome::Expired);
        assert!(Outcome::SlowConsumer > Outcome::NoTablet);
    }

    /// A trail writing to a new SQLite database (kept in the directory).
    async fn started() -> (tempfile::TempDir, Db, CancellationToken, Arc<Trail>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/trail.db", dir.path().display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let stop = CancellationToken::new();
        let trail = Trail::start(db.clone(), "i-test".into(), stop.clone());
        (dir, db, stop, trail)
    }

    /// Rows written by one batch, on a real SQLite database.
    async fn written(trail: &Trail, db: &Db, seqs: &[&str]) -> Vec<(String, String)> {
        trail.flush().await;
        let mut out = Vec::new();
        for seq in seqs {
            for r in db.trail(seq).await.unwrap() {
                out.push((r.seq, r.outcome));
            }
        }
        out
    }

    #[tokio::test]
    async fn calls_that_do_not_concern_this_instance_stay_in_memory() {
        let (_dir, db, stop, trail) = started().await;
        // Consumed here, no tablet, not received here: not written.
        trail.reached("other", std::iter::empty(), 0);
        trail.expired("old", false);
        // Received here: written, with what happened to it here.
        trail.received("mine", 1, true);
        trail.reached("mine", std::iter::empty(), 0);
        // Expired with a tablet of its store here: written.
        trail.expired("late", true);
        // Shown here: written.
        trail.reached("shown", [Arc::from("tok_a")].iter(), 0);
        let all = ["other", "old", "mine", "late", "shown"];
        let rows = written(&trail, &db, &all).await;
        assert_eq!(
            rows,
            vec![
                ("mine".to_string(), "no-tablet".to_string()),
                ("late".to_string(), "expired".to_string()),
                ("shown".to_string(), "delivered".to_string()),
            ]
        );
        // A call consumed first and received later (its own publish came
        // back before the confirm) is written with both.
        trail.received("other", 2, true);
        let rows = written(&trail, &db, &["other"]).await;
        assert_eq!(rows, vec![("other".to_string(), "no-tablet".to_string())]);
        stop.cancel();
        db.close().await;
    }

    #[tokio::test]
    async fn what_does_not_concern_this_instance_is_forgotten_sooner() {
        let (_dir, db, stop, trail) = started().await;
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("tok_a"), Arc::from("tok_b"));
        trail.reached("other", std::iter::empty(), 0);
        trail.received("mine", 1, true);
        trail.reached("shown", [b.clone(), a.clone()].iter(), 0);
        trail.reached("shown", [a.clone()].iter(), 0);
        let now = now_millis();
        trail.flush_at(now).await;
        let held = |t: &Trail| {
            let mut seqs: Vec<String> = t.entries.lock().unwrap().keys().cloned().collect();
            seqs.sort();
            seqs
        };
        assert_eq!(held(&trail), ["mine", "other", "shown"]);
        let rows = db.trail("shown").await.unwrap();
        assert_eq!(rows[0].token_ids, r#"["tok_a","tok_b"]"#);
        assert_eq!(rows[0].events, 2);
        trail.flush_at(now + KEEP_UNCONCERNED_MS + 1).await;
        assert_eq!(held(&trail), ["mine", "shown"]);
        trail.flush_at(now + KEEP_MS + 1).await;
        assert!(held(&trail).is_empty());
        stop.cancel();
        db.close().await;
    }
}
