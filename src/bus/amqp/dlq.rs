//! `bizcall dlq list | replay | purge`: the RabbitMQ dead-letter queue, for
//! people looking into popups that were never shown.

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::{classify, declare_exchange, declare_routed_exchange, message_properties, open};
use crate::call::{BusEvent, CallEvent};
use crate::config::{Config, Routing};

/// One dead message as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadMessage {
    pub call_id: String,
    pub store: String,
    /// `expired` or `rejected` (or whatever RabbitMQ recorded).
    pub reason: String,
    /// When it died, from `x-death`.
    pub died_at: Option<DateTime<Utc>>,
}

/// Messages in the queue now, checking that it exists.
async fn depth(channel: &Channel, config: &Config) -> anyhow::Result<u32> {
    let queue = channel
        .queue_declare(
            config.amqp.dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "dead-letter queue '{}' does not exist: it is created by an instance started with amqp.dead_letter = true",
                config.amqp.dead_letter_queue
            )
        })?;
    Ok(queue.message_count())
}

/// Lists every dead message without removing any.
pub async fn list(config: &Config) -> anyhow::Result<Vec<DeadMessage>> {
    let (conn, channel) = open(&config.amqp).await?;
    let count = depth(&channel, config).await?;
    let mut found = Vec::new();
    // Unacknowledged gets stay ours until the channel closes, which puts
    // them all back in order.
    for _ in 0..count {
        let Some(msg) = channel
            .basic_get(
                config.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| {
                let nodes = config.amqp.nodes();
                classify(&e, &config.amqp, nodes.first().map_or("", |n| n.as_str()))
            })?
        else {
            break;
        };
        found.push(describe(&msg.delivery));
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(found)
}

/// Publishes every dead call event to the exchange again with a fresh TTL
/// (with `amqp.routing = "store"`, to the direct exchange, keyed by store).
/// Returns (replayed, skipped): skipped messages are not call events and
/// stay in the queue.
pub async fn replay(config: &Config) -> anyhow::Result<(usize, usize)> {
    let (conn, channel) = open(&config.amqp).await?;
    let count = depth(&channel, config).await?;
    let (exchange, routed) = match config.amqp.routing {
        Routing::Fanout => {
            declare_exchange(&channel, &config.amqp).await?;
            (config.amqp.exchange.clone(), false)
        }
        Routing::Store => {
            declare_routed_exchange(&channel, &config.amqp).await?;
            (config.amqp.routed_exchange(), true)
        }
    };
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (mut replayed, mut skipped) = (0, 0);
    for _ in 0..count {
        let Some(msg) = channel
            .basic_get(
                config.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let Ok(mut event) = CallEvent::from_json(&msg.delivery.data) else {
            skipped += 1;
            continue;
        };
        let now = Utc::now();
        event.published_at = now;
        event.expires_at = now + config.bus.ttl();
        let confirm = publisher
            .basic_publish(
                exchange.as_str().into(),
                if routed { event.store.as_str() } else { "" }.into(),
                BasicPublishOptions::default(),
                event.to_json().as_bytes(),
                message_properties(&event.call_id, event.published_at, config.bus.message_ttl),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            anyhow::bail!(
                "broker did not confirm the replay of call {}",
                event.call_id
            );
        }
        msg.delivery.acker.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok((replayed, skipped))
}

/// Empties the queue; returns how many messages it held.
pub async fn purge(config: &Config) -> anyhow::Result<u32> {
    let (conn, channel) = open(&config.amqp).await?;
    depth(&channel, config).await?;
    let n = channel
        .queue_purge(
            config.amqp.dead_letter_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(n)
}

fn describe(delivery: &lapin::message::Delivery) -> DeadMessage {
    let (call_id, store) = match BusEvent::from_json(&delivery.data, Default::default()) {
        Ok(BusEvent::Call(ev)) => (ev.call_id, ev.store),
        Ok(BusEvent::Handled(ev)) => (format!("{} (handled)", ev.call_id), ev.store),
        Err(_) => ("(not a call event)".to_string(), String::new()),
    };
    let death = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
            _ => None,
        });
    let (reason, died_at) = match death {
        Some(AMQPValue::FieldTable(t)) => {
            let reason = match t.inner().get("reason") {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                Some(AMQPValue::ShortString(s)) => s.to_string(),
                _ => "unknown".into(),
            };
            let time = match t.inner().get("time") {
                Some(AMQPValue::Timestamp(ts)) => DateTime::from_timestamp(*ts as i64, 0),
                _ => None,
            };
            (reason, time)
        }
        _ => ("unknown".into(), None),
    };
    DeadMessage {
        call_id,
        store,
        reason,
        died_at,
    }
}
