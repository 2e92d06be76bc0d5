//! `amqp`: the floor, a bare publish-confirm → consume round trip on the
//! same broker with the same message size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::{self, Series};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::*;

pub(crate) async fn amqp(a: AmqpArgs) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&a.amqp, lapin::ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    let consumer = conn.create_channel().await?;
    let exchange = format!("bizcall-bench-floor-{:04x}", rand::random::<u16>());
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = consumer
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    consumer
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consumer.basic_qos(250, BasicQosOptions::default()).await?;
    let mut stream = consumer
        .basic_consume(
            queue.name().clone(),
            "floor".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    tokio::spawn(async move {
        while let Some(Ok(d)) = stream.next().await {
            let at = Instant::now();
            let id = serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()
                .and_then(|v| v["callId"].as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = tx.send(Delivery {
                tablet: 0,
                call_id: id,
                at,
                since_published_us: None,
            });
        }
    });
    let publisher = Arc::new(publisher);
    let total = a.common.rate * a.common.duration;
    let mut tally = Tally::new();
    let errors = Arc::new(AtomicU64::new(0));
    let run = paced(
        a.common.rate,
        total,
        "floor",
        Duration::from_secs(3),
        &sent,
        &mut tally,
        &mut rx,
        |n| {
            let id = format!("floor{n}");
            let payload = event(&id, "load-store-0").to_json();
            let props = lapin::BasicProperties::default().with_expiration("30000".into());
            let send = confirmed_publish(
                publisher.clone(),
                exchange.clone(),
                String::new(),
                payload,
                props,
                errors.clone(),
            );
            Item {
                id,
                expect: 1,
                send,
            }
        },
    )
    .await;
    let seconds = run.seconds;
    let series = Series {
        name: "floor: AMQP publish-confirm→consume".into(),
        hist: tally.hist,
        seconds,
        extra: json!({
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "lost": total.saturating_sub(tally.seen.len() as u64),
            "duplicates": tally.duplicates,
            "message_bytes": event("floor0", "load-store-0").to_json().len(),
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    write_json(&a.common.out, "floor", &series.summary())?;
    if let Some(dir) = &a.common.out {
        std::fs::write(dir.join("floor.hist"), histogram_text(&series.hist))?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
