//! Publishing call events straight to RabbitMQ, for the scenarios that
//! bypass bizcall (`amqp`, `webstomp`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bizcall::call::{CallEvent, CallStatus, EventKind};
use chrono::Utc;

pub(crate) fn event(call_id: &str, store: &str) -> CallEvent {
    let now = Utc::now();
    CallEvent {
        kind: EventKind::Call,
        call_id: call_id.into(),
        store: store.into(),
        status: CallStatus::Ringing,
        caller_number: "01012345678".into(),
        virtual_number: Some("05012345678".into()),
        started_at: now,
        answered_at: None,
        ended_at: None,
        published_at: now,
        expires_at: now + chrono::Duration::seconds(30),
        published_us: None,
    }
}

/// A channel on its own connection to `url`, in confirm mode.
pub(crate) async fn confirming_channel(url: &str) -> anyhow::Result<lapin::Channel> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes one message with routing key `key` and waits for its confirm,
/// counting a failure or a nack in `errors` (the paced loop spawns it).
pub(crate) async fn confirmed_publish(
    publisher: Arc<lapin::Channel>,
    exchange: String,
    key: String,
    payload: String,
    props: lapin::BasicProperties,
    errors: Arc<AtomicU64>,
) {
    {
        let confirmed = async {
            publisher
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    payload.as_bytes(),
                    props,
                )
                .await?
                .await
        };
        if !matches!(confirmed.await, Ok(c) if c.is_ack()) {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
