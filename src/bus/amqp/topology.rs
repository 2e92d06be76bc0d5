//! Declaring the exchanges and queues: the instance's queue, the routed
//! exchange, and the dead-letter exchange and queue.

use super::*;

/// The durable fanout exchange every instance publishes to.
pub async fn declare_exchange(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The durable direct exchange of store-routed delivery: events carry
/// their store's slug as routing key.
pub async fn declare_routed_exchange(channel: &Channel, config: &AmqpConfig) -> lapin::Result<()> {
    channel
        .exchange_declare(
            config.routed_exchange().as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The durable dead-letter exchange (fanout) and queue, bound together,
/// on a channel of their own. The queue is a quorum queue unless
/// `amqp.dead_letter_queue_type = "classic"`; one that already exists with
/// the other type is kept as it is (docs/rabbitmq.md, "Dead letters").
pub async fn declare_dead_letter(conn: &Connection, config: &AmqpConfig) -> lapin::Result<()> {
    let mut channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            config.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    if config.dead_letter_queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    let declared = channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    match declared {
        Ok(_) => {}
        Err(e) if is_queue_type_clash(&e) => {
            // The queue was declared with the other type (an older bizcall
            // made classic ones): keep it rather than refuse to start.
            tracing::warn!(
                queue = %config.dead_letter_queue,
                wanted = ?config.dead_letter_queue_type,
                "the dead-letter queue exists with another type and is kept as it is; \
                 to change it, empty it (bizcall dlq replay or purge), delete it on the broker \
                 and restart, or set amqp.dead_letter_queue_type to its type"
            );
            channel = conn.create_channel().await?;
        }
        Err(e) => return Err(e),
    }
    channel
        .queue_bind(
            config.dead_letter_queue.as_str().into(),
            config.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// A declaration refused because the queue exists with another type.
pub(super) fn is_queue_type_clash(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
            && amqp.get_message().as_str().contains("x-queue-type"))
}
