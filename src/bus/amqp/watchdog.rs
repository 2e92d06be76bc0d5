//! Finding a silent link within seconds. A NAT or load balancer that drops
//! a long-lived connection without a RST, or a frozen broker VM, leaves the
//! socket open: nothing fails, nothing arrives. RabbitMQ's heart-beat would
//! notice after two missed beats, and its guidance keeps the beat at 5 s or
//! more (lower values give false positives under congestion or flow
//! control), so it cannot find such a link within 5 s. Instead the
//! instance sends itself a canary several times a second, through the
//! default exchange to its own queue, over the same connection as its
//! publishes and deliveries: the round trip covers both directions and the
//! broker. A link is declared dead when no canary has come back for
//! `amqp.link_timeout`, or when a publish goes unconfirmed for as long. A
//! late canary already makes the bus doubtful, so the relay reads every
//! change from the database while the link is in question.

use super::*;

/// The AMQP `type` of a canary; nothing else carries it.
const CANARY_TYPE: &str = "bizcall.canary";

/// How often a canary is sent: often enough that a late one means
/// something within a second.
const CANARY_EVERY: Duration = Duration::from_millis(250);

/// A canary this late makes the bus doubtful (the relay reads everything).
const CANARY_DOUBT: Duration = Duration::from_millis(1000);

pub(super) fn is_canary(delivery: &lapin::message::Delivery) -> bool {
    delivery
        .properties
        .kind()
        .as_ref()
        .is_some_and(|k| k.as_str() == CANARY_TYPE)
}

/// One delivery held for a tablet's ACK, counted while it lives.
pub(super) struct Held(Arc<Inner>);

impl Held {
    pub(super) fn count(inner: &Arc<Inner>) -> Held {
        inner.held.fetch_add(1, Ordering::Relaxed);
        Held(inner.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    pub(super) fn canary_came(&self) {
        *self.canary_seen.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    fn canary_age(&self) -> Duration {
        self.canary_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Whether deliveries held for ACKs fill the prefetch window: no canary
    /// can come then, and its absence says nothing.
    fn window_full(&self) -> bool {
        self.config.ack_mode == AckMode::Manual
            && self.config.prefetch > 0
            && self.held.load(Ordering::Relaxed) >= usize::from(self.config.prefetch)
    }

    pub(super) fn canary_late(&self) -> bool {
        self.canary_age() > CANARY_DOUBT.min(self.config.link_timeout) && !self.window_full()
    }

    /// Sends canaries on `link` and returns why it is dead once it is: no
    /// canary back within `amqp.link_timeout`, or a publish unconfirmed
    /// for as long. Never returns while the link is well.
    pub(super) async fn watch(self: &Arc<Self>, link: &Arc<Link>) -> String {
        let timeout = self.config.link_timeout;
        let mut tick = tokio::time::interval(CANARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return std::future::pending().await,
                _ = link.dead.notified() => {
                    m::link_silent("confirm");
                    return format!(
                        "a publish went unconfirmed for {} ms: the link is silent",
                        timeout.as_millis()
                    );
                }
                _ = tick.tick() => {}
            }
            if self.window_full() {
                self.canary_came();
            }
            let age = self.canary_age();
            if age > timeout {
                m::link_silent("canary");
                return format!(
                    "no canary came back for {} ms: the link is silent",
                    age.as_millis()
                );
            }
            let props = BasicProperties::default().with_type(CANARY_TYPE.into());
            let sent = link.publish.basic_publish(
                "".into(),
                link.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"",
                props,
            );
            // Its confirm is not awaited: the canary's return is the test.
            let _ = tokio::time::timeout(CANARY_EVERY, sent).await;
        }
    }
}
