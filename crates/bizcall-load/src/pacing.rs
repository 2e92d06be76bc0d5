//! Sending at a set rate and tallying what comes back: the loop every
//! scenario that measures latency shares.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::report::{self};

use crate::*;

/// Tallies deliveries against what was sent.
pub(crate) struct Tally {
    pub(crate) hist: hdrhistogram::Histogram<u64>,
    /// `publishedAt` → receipt, where the event carries it.
    pub(crate) after_publish: hdrhistogram::Histogram<u64>,
    pub(crate) seen: HashSet<(usize, String)>,
    pub(crate) duplicates: u64,
    pub(crate) unknown: u64,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            hist: report::histogram(),
            after_publish: report::histogram(),
            seen: HashSet::new(),
            duplicates: 0,
            unknown: 0,
        }
    }

    pub(crate) fn add(&mut self, d: Delivery, sent: &Mutex<HashMap<String, Instant>>) {
        let Some(at) = sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d.call_id)
            .copied()
        else {
            self.unknown += 1;
            return;
        };
        if !self.seen.insert((d.tablet, d.call_id)) {
            self.duplicates += 1;
            return;
        }
        report::record(
            &mut self.hist,
            d.at.saturating_duration_since(at).as_micros() as u64,
        );
        if let Some(us) = d.since_published_us {
            report::record(&mut self.after_publish, us.max(0) as u64);
        }
    }
}

/// When each id was sent: what a delivery's latency is measured from.
pub(crate) type Sent = Mutex<HashMap<String, Instant>>;

/// One item of a paced run: its id, how many deliveries it should bring
/// (one per tablet of its store), and the send itself.
pub(crate) struct Item<F> {
    pub(crate) id: String,
    pub(crate) expect: u64,
    pub(crate) send: F,
}

/// What a paced run did.
pub(crate) struct Paced {
    /// Seconds from the first send to the last.
    pub(crate) seconds: f64,
    /// Deliveries the items expected, in all.
    pub(crate) expected: u64,
}

/// Sends `total` items at `rate` a second (in a burst when the ticker falls
/// behind), each made by `item(n)`: its id is recorded in `sent` before its
/// send is spawned, so that even the fastest delivery finds it. Deliveries
/// are tallied as they arrive; after the last send, up to `drain` more is
/// allowed for the rest, ending early once every expected delivery is in
/// and 200 ms pass quietly (late duplicates still count).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn paced<F, Fut>(
    rate: u64,
    total: u64,
    label: &str,
    drain: Duration,
    sent: &Sent,
    tally: &mut Tally,
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    mut item: F,
) -> Paced
where
    F: FnMut(u64) -> Item<Fut>,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let bar = progress(total, label);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut expected = 0;
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let Item { id, expect, send } = item(n);
        expected += expect;
        sent.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        tokio::spawn(send);
        bar.inc(1);
        while let Ok(d) = rx.try_recv() {
            tally.add(d, sent);
        }
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let until = Instant::now() + drain;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(d)) => tally.add(d, sent),
            Ok(None) => break,
            Err(_) if tally.seen.len() as u64 >= expected => break,
            Err(_) => {}
        }
    }
    Paced { seconds, expected }
}
