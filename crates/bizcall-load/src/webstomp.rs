//! `webstomp`: RabbitMQ's Web-STOMP plugin, tablets subscribed straight
//! to the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::{self, Series};

use serde_json::json;
use tokio::sync::mpsc;

use crate::*;

pub(crate) async fn webstomp(a: WebstompArgs) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&a.amqp, lapin::ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let prefix = format!("bizcall-bench-ws-{:04x}", rand::random::<u16>());
    for s in 0..a.stores {
        publisher
            .exchange_declare(
                format!("{prefix}-{s}").as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let logins: Vec<Login> = (0..a.tablets)
        .map(|i| Login {
            url: a.url.clone(),
            source: (!a.sources.is_empty()).then(|| a.sources[i % a.sources.len()]),
            // RabbitMQ reads `host` as the virtual host.
            headers: vec![
                ("host".into(), "/".into()),
                ("login".into(), "guest".into()),
                ("passcode".into(), "guest".into()),
            ],
            destination: format!("/exchange/{prefix}-{}", i % a.stores),
            transport: Transport::Ws,
        })
        .collect();
    let per_store: Vec<u64> = (0..a.stores)
        .map(|s| (0..a.tablets).filter(|i| i % a.stores == s).count() as u64)
        .collect();
    let rss_before = a.pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (opened, failed, connect_secs) = open_all(logins, 0, 100, tx).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let per_tablet_kib = match (rss_before, rss_after) {
        (Some(b), Some(f)) if opened > 0 => Some((f.saturating_sub(b)) as f64 / opened as f64),
        _ => None,
    };
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let publisher = Arc::new(publisher);
    let total = a.common.rate * a.common.duration;
    let mut tally = Tally::new();
    let errors = Arc::new(AtomicU64::new(0));
    let run = paced(
        a.common.rate,
        total,
        "web-stomp",
        Duration::from_secs(5),
        &sent,
        &mut tally,
        &mut rx,
        |n| {
            let store = n as usize % a.stores;
            let id = format!("ws{n}");
            let payload = event(&id, "load-store").to_json();
            let props = lapin::BasicProperties::default()
                .with_expiration("30000".into())
                .with_content_type("application/json".into());
            let send = confirmed_publish(
                publisher.clone(),
                format!("{prefix}-{store}"),
                String::new(),
                payload,
                props,
                errors.clone(),
            );
            Item {
                id,
                expect: per_store[store],
                send,
            }
        },
    )
    .await;
    let (seconds, expected) = (run.seconds, run.expected);
    let delivered = tally.seen.len() as u64;
    let series = Series {
        name: "RabbitMQ Web-STOMP".into(),
        hist: tally.hist,
        seconds,
        extra: json!({
            "tablets": opened,
            "tablet_connect_failures": failed,
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "expected_deliveries": expected,
            "lost": expected.saturating_sub(delivered),
            "duplicates": tally.duplicates,
            "connect_per_s": opened as f64 / connect_secs.max(1e-9),
            "rss_per_idle_tablet_kib": per_tablet_kib,
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    println!(
        "Web-STOMP memory per idle subscribed connection: {}",
        per_tablet_kib
            .map(|k| format!("{k:.1} KiB"))
            .unwrap_or_else(|| "n/a (no --pid)".into())
    );
    write_json(&a.common.out, "webstomp", &series.summary())?;
    if let Some(dir) = &a.common.out {
        std::fs::write(dir.join("webstomp.hist"), histogram_text(&series.hist))?;
    }
    for s in 0..a.stores {
        let _ = publisher
            .exchange_delete(
                format!("{prefix}-{s}").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
