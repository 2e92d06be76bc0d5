//! The database as the bus's stand-in. Every change a tablet should see is
//! in the `calls` table before the webhook answers `OK`, so while the bus
//! cannot carry a change (the publishing instance's link is silent or
//! down, or this instance's is), each instance reads it from there.
//!
//! Twice a second (`bus.relay_interval`) the relay reads the changes of
//! the stores with tablets here, within their TTL:
//!
//! - while the bus is well, only changes nobody handed to the bus
//!   (`event_pending = 1`), and passes one on only when it is still
//!   unpublished and unseen one read later: a publish in flight gets its
//!   chance, and a healthy bus costs one small indexed read;
//! - while the bus is doubtful here (link down, or its canary late), every
//!   change, passed on at once unless already seen.
//!
//! Delivery drops what it has seen, so when the bus brings the same change
//! (a republish after the link is back) no tablet sees it twice. Event ages
//! come from the stored change times, as the bus's would.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::bus::SharedBus;
use crate::config::Config;
use crate::db::{from_millis, CallRow, Db};
use crate::delivery::Delivery;
use crate::hub::Hub;
use crate::metrics as m;

/// The most changes one read returns (the newest first).
const READ_LIMIT: u32 = 2000;

/// While doubtful, each read reaches this far behind the previous one:
/// changes stored by an instance whose clock lags ours carry earlier times.
const CLOCK_MARGIN: Duration = Duration::from_secs(6);

/// What the relay needs of the instance.
pub struct Parts {
    pub config: Arc<Config>,
    pub db: Db,
    pub hub: Arc<Hub>,
    pub delivery: Arc<Delivery>,
    pub bus: SharedBus,
}

pub async fn run(parts: Parts, stop: CancellationToken) {
    let every = parts.config.bus.relay_interval;
    if every.is_zero() {
        return;
    }
    let mut relay = Relay {
        parts,
        unpublished: HashSet::new(),
        doubtful_read: None,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => relay.read().await,
        }
    }
}

struct Relay {
    parts: Parts,
    /// Unpublished changes (seq, change time) the previous read found.
    unpublished: HashSet<(String, i64)>,
    /// When the previous read while doubtful began.
    doubtful_read: Option<DateTime<Utc>>,
}

impl Relay {
    async fn read(&mut self) {
        let Parts {
            config,
            db,
            hub,
            bus,
            ..
        } = &self.parts;
        let stores: Vec<String> = hub.stores_here().into_iter().collect();
        if stores.is_empty() {
            self.unpublished.clear();
            self.doubtful_read = None;
            return;
        }
        let now = crate::clock::now();
        let window = now - config.bus.ttl();
        let doubtful = bus.doubtful();
        let rows = if doubtful {
            let since = match self.doubtful_read {
                Some(last) => window.max(last - crate::call::to_chrono(CLOCK_MARGIN)),
                None => window,
            };
            db.calls_changed_since(&stores, since, None, READ_LIMIT)
                .await
        } else {
            db.calls_unpublished_since(&stores, window, READ_LIMIT)
                .await
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "relay: the database did not answer");
                return;
            }
        };
        self.doubtful_read = doubtful.then_some(now);
        let mut relayed = 0;
        let mut still = HashSet::new();
        for row in rows {
            let key = (row.seq.clone(), row.updated_at);
            let ready = doubtful || self.unpublished.contains(&key);
            if !ready {
                still.insert(key);
                continue;
            }
            if self.pass_on(&row, now) {
                relayed += 1;
            }
        }
        self.unpublished = still;
        if relayed > 0 {
            m::relayed(relayed);
            tracing::info!(
                changes = relayed,
                doubtful,
                "relayed call changes the bus had not brought"
            );
        }
    }

    /// Hands one stored change to delivery unless it expired or was seen.
    fn pass_on(&self, row: &CallRow, now: DateTime<Utc>) -> bool {
        let ttl = self.parts.config.bus.message_ttl;
        let event = row.event_at(ttl, from_millis(row.updated_at));
        if !event.is_live(now) || self.parts.delivery.has_seen(&event) {
            return false;
        }
        self.parts
            .delivery
            .deliver_stored(event, from_millis(row.updated_at))
    }
}
