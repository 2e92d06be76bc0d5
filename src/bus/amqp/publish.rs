//! Publishing with confirms: the message properties, the publish-time
//! header, and the outbox that keeps events while the broker is away.

use super::*;

/// The AMQP properties of an event: TTL as the per-message expiration.
pub fn message_properties(
    call_id: &str,
    published_at: chrono::DateTime<Utc>,
    left: Duration,
) -> BasicProperties {
    let millis = left.as_millis().max(1);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(call_id.into())
        .with_timestamp(published_at.timestamp().max(0) as u64)
        .with_expiration(ShortString::from(millis.to_string()))
}

/// The header carrying when a message was handed to the broker, in
/// microseconds since the epoch: finer than the event's `publishedAt`, for
/// the bus leg's histogram (`bizcall_bus_transit_seconds`).
pub const PUBLISHED_US: &str = "x-bizcall-published-us";

/// The headers of a message handed to the broker now: the publish time.
pub fn publish_time_header() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        PUBLISHED_US.into(),
        AMQPValue::LongLongInt(crate::clock::now().timestamp_micros()),
    );
    headers
}

/// The publish-time header of a delivery, if it has one.
pub(super) fn published_us(delivery: &lapin::message::Delivery) -> Option<i64> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(PUBLISHED_US))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(us) => Some(*us),
            _ => None,
        })
}

/// The bus leg of a delivery: from the publish-time header (`sent_us`)
/// when present, else from the event's own (millisecond) publish time.
pub(super) fn transit(sent_us: Option<i64>, published_at: chrono::DateTime<Utc>) -> Duration {
    let now = crate::clock::now();
    match sent_us {
        Some(us) => Duration::from_micros(now.timestamp_micros().saturating_sub(us).max(0) as u64),
        None => (now - published_at).to_std().unwrap_or_default(),
    }
}

impl Inner {
    /// Publishes one event on `link` and waits for the broker's confirm.
    pub(super) async fn publish_on(&self, link: &Link, event: &BusEvent) -> Result<(), BusError> {
        let left = event.time_left(crate::clock::now());
        if left.is_zero() {
            m::expired_before_delivery();
            return Ok(());
        }
        let props = message_properties(event.call_id(), event.published_at(), left)
            .with_headers(publish_time_header());
        let payload = event.to_json();
        let key = match self.routing {
            Routing::Fanout => "",
            Routing::Store => event.store(),
        };
        let sent = async {
            link.publish
                .basic_publish(
                    self.publish_exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    props,
                )
                .await?
                .await
        };
        m::published();
        let wait = self.config.link_timeout;
        match tokio::time::timeout(wait, sent).await {
            Ok(Ok(confirm)) if confirm.is_ack() => {
                m::confirmed();
                Ok(())
            }
            Ok(Ok(_)) => Err(BusError::Nacked),
            Ok(Err(e)) => Err(BusError::Link(Box::new(e))),
            Err(_) => {
                // Unconfirmed this long: the link is silent, not slow.
                link.dead.notify_one();
                Err(BusError::NoConfirm(wait))
            }
        }
    }

    pub(super) fn keep(&self, event: &BusEvent) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() >= OUTBOX_CAPACITY {
            outbox.pop_front();
        }
        outbox.push_back(event.clone());
    }

    /// Republishes what failed while the broker was away, if still live.
    pub(super) async fn flush_outbox(&self, link: &Link) {
        let pending: Vec<BusEvent> = {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.drain(..).collect()
        };
        if pending.is_empty() {
            return;
        }
        let now = crate::clock::now();
        let (live, expired): (Vec<_>, Vec<_>) = pending.into_iter().partition(|e| e.is_live(now));
        for _ in &expired {
            m::expired_before_delivery();
        }
        tracing::info!(
            republished = live.len(),
            expired = expired.len(),
            "publishing events held while RabbitMQ was away"
        );
        for event in live {
            if let Err(e) = self.publish_on(link, &event).await {
                m::publish_failed();
                tracing::warn!(call = %event.call_id(), error = %e, "republish failed; keeping it");
                self.keep(&event);
            }
        }
    }
}
