//! The fleet's clock. A call event's times (`publishedAt`, `expiresAt`, the
//! stored change time) are made on one instance and judged on another, so
//! instances whose clocks differ would drop fresh popups (a fast receiver)
//! or show stale ones (a slow one). Every instance on PostgreSQL therefore
//! keeps its event times on the database server's clock: it measures the
//! offset at start and every `FOLLOW_EVERY`, NTP-style (the sample with the
//! shortest round trip of a few, its error at most half that round trip),
//! and `now()` is this host's clock plus that offset. On SQLite every
//! instance shares one host's clock, and the offset stays zero.
//!
//! The bound (docs/reliability.md): a sample is used only when its round
//! trip is at most `MAX_ROUND_TRIP`, so two instances' clocks agree within
//! that, plus what a host's clock drifts between two samples.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// How often the offset is measured again.
const FOLLOW_EVERY: Duration = Duration::from_secs(10);
/// Samples per measurement; the one with the shortest round trip counts.
const SAMPLES: usize = 5;
/// A sample with a longer round trip says too little to be used.
pub const MAX_ROUND_TRIP: Duration = Duration::from_millis(100);
/// An offset at least this large is logged: the host's NTP needs a look.
const WORTH_A_WARNING: Duration = Duration::from_millis(500);

/// The database's clock minus this host's, in ms.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The fleet's time: this host's clock corrected to the database's.
pub fn now() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::milliseconds(OFFSET_MS.load(Ordering::Relaxed))
}

/// The correction `now()` applies.
pub fn offset() -> chrono::Duration {
    chrono::Duration::milliseconds(OFFSET_MS.load(Ordering::Relaxed))
}

/// The database server's clock (ms since the epoch), read once; `None`
/// when it did not answer.
pub trait ServerClock: Send + Sync + 'static {
    fn read(&self) -> impl std::future::Future<Output = Option<i64>> + Send;
}

/// One measurement: the offset and round trip of the best of `SAMPLES`,
/// `None` when no sample was good enough.
async fn measure(server: &impl ServerClock) -> Option<(i64, Duration)> {
    let mut best: Option<(i64, Duration)> = None;
    for _ in 0..SAMPLES {
        let sent = Instant::now();
        let before = Utc::now();
        let Ok(Some(server_ms)) = tokio::time::timeout(MAX_ROUND_TRIP, server.read()).await else {
            continue;
        };
        let trip = sent.elapsed();
        let middle = before + chrono::Duration::from_std(trip / 2).unwrap_or_default();
        let offset = server_ms - middle.timestamp_millis();
        if trip <= MAX_ROUND_TRIP && best.is_none_or(|(_, t)| trip < t) {
            best = Some((offset, trip));
        }
    }
    best
}

/// Measures once and applies the result; logs a large offset when it
/// first appears or moves by another `WORTH_A_WARNING`.
async fn sync(server: &impl ServerClock, warned: &mut Option<i64>) {
    let Some((offset, trip)) = measure(server).await else {
        return;
    };
    OFFSET_MS.store(offset, Ordering::Relaxed);
    m::clock_offset(offset as f64 / 1000.0);
    let big = offset.unsigned_abs() >= WORTH_A_WARNING.as_millis() as u64;
    let moved =
        warned.is_none_or(|w| (w - offset).unsigned_abs() >= WORTH_A_WARNING.as_millis() as u64);
    if big && moved {
        let side = if offset > 0 { "behind" } else { "ahead of" };
        tracing::warn!(
            offset_ms = offset,
            round_trip_ms = trip.as_millis() as u64,
            "this host's clock is {:.1} s {side} the database's; call event times follow the database's clock (check NTP on this host)",
            offset.unsigned_abs() as f64 / 1000.0,
        );
        *warned = Some(offset);
    } else if !big && warned.is_some() {
        tracing::info!(
            offset_ms = offset,
            "this host's clock agrees with the database's again"
        );
        *warned = None;
    }
}

/// Measures the offset now (before the instance takes calls), then keeps
/// it current in the background until `stop`. Only for PostgreSQL: on
/// SQLite the caller does not follow at all.
pub async fn follow(server: impl ServerClock, stop: CancellationToken) {
    let mut warned = None;
    sync(&server, &mut warned).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => sync(&server, &mut warned).await,
            }
        }
    });
}
