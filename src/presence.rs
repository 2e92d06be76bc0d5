//! Cluster-wide presence: which tablets are online on any instance.
//!
//! Each instance heart-beats a row of its own in the `instances` table and
//! keeps its tablets, counted per store and token, in `presence`. It looks
//! at its hub every second and writes only what changed, plus the
//! heart-beat every `HEARTBEAT`; readers count an instance (and its
//! tablets) only while its heart-beat is younger than `STALE`. So a tablet
//! shows online within about a second on every instance, and the tablets of
//! an instance killed with SIGKILL drop out at most `STALE` after its last
//! heart-beat. Why a table and not the bus: see docs/presence.md.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::Db;
use crate::db::{now_millis, InstanceRow};
use crate::hub::Hub;
use crate::presence_book::PresenceKey;
use tokio_util::sync::CancellationToken;

/// How often an instance writes its heart-beat when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// An instance silent for longer counts as gone, with its tablets.
pub const STALE: Duration = Duration::from_secs(15);
/// How often the hub is looked at for changes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often connected tokens' `last_seen_at` is refreshed.
const SEEN_EVERY: Duration = Duration::from_secs(60);
/// Instances silent this long are deleted (their rows only mislead).
const FORGET_AFTER_MS: i64 = 10 * 60 * 1000;

/// This instance as others see it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Random, new at every start.
    pub id: String,
    /// `host:port` of `server.listen`, for people.
    pub name: String,
    pub started_at: i64,
}

impl Identity {
    pub fn new(port: u16) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let mut id = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
        Identity {
            id: format!("i-{}", hex::encode(id)),
            name: format!("{host}:{port}"),
            started_at: now_millis(),
        }
    }
}

/// The oldest heart-beat that still counts as alive, in milliseconds.
pub fn alive_since() -> i64 {
    now_millis() - STALE.as_millis() as i64
}

/// Keeps this instance's presence rows up to date until it stops, then
/// removes them. The hub counts tablets as they come and go and keeps
/// which counts changed, so each round writes only those, without a copy
/// of every tablet's row (BENCHMARKS.md, "Memory per tablet").
pub async fn run(
    config: Arc<Config>,
    db: Db,
    hub: Arc<Hub>,
    me: Arc<Identity>,
    shutdown: CancellationToken,
) {
    let mut last_beat: Option<Instant> = None;
    let mut last_seen = Instant::now();
    let mut forgot = Instant::now();
    loop {
        let changes = hub.presence().changes();
        let due = last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT);
        if !changes.is_empty() || due {
            let (set, gone): (Vec<_>, Vec<_>) = changes.into_iter().partition(|(_, n)| *n > 0);
            let gone: Vec<PresenceKey> = gone.into_iter().map(|(k, _)| k).collect();
            // Tokens that came or went are stamped now; all connected ones
            // once a minute.
            let mut seen: HashSet<Arc<str>> = set
                .iter()
                .map(|(k, _)| k)
                .chain(gone.iter())
                .map(|k| k.token_id.clone())
                .collect();
            if last_seen.elapsed() >= SEEN_EVERY {
                seen.extend(hub.presence().tokens());
                last_seen = Instant::now();
            }
            seen.remove("");
            let seen: Vec<Arc<str>> = seen.into_iter().collect();
            let row = InstanceRow {
                id: me.id.clone(),
                name: me.name.clone(),
                started_at: me.started_at,
                heartbeat_at: now_millis(),
                bus: Some(config.bus_mode().into()),
            };
            match db.presence_beat(&row, &set, &gone, &seen).await {
                Ok(()) => last_beat = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(error = %e, "presence heart-beat failed; will retry");
                    hub.presence()
                        .unwritten(set.into_iter().map(|(k, _)| k).chain(gone));
                }
            }
        }
        if forgot.elapsed() >= HEARTBEAT * 12 {
            forgot = Instant::now();
            if let Err(e) = db.instances_prune(now_millis() - FORGET_AFTER_MS).await {
                tracing::debug!(error = %e, "could not prune old instances");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
    match db.instance_leave(&me.id).await {
        Ok(()) => tracing::debug!(instance = %me.id, "presence removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove this instance's presence"),
    }
}
