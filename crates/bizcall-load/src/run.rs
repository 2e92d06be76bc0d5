//! `run`: bizcall end to end, webhook on some instances, tablets on others.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::{self, Series};
use crate::scrape;
use anyhow::Context;
use bizcall::bus::amqp::{message_properties, publish_time_header};
use bizcall::db::Db;
use chrono::Utc;

use serde_json::json;
use tokio::sync::mpsc;

use crate::*;

pub(crate) async fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.publish_to.is_some() && a.transport != Transport::Ws {
        anyhow::bail!("--publish-to times the bus leg for /ws tablets: leave --transport at ws");
    }
    let publisher = match &a.publish_to {
        Some(exchange) => {
            let channel = confirming_channel(&a.amqp).await?;
            // A missing exchange would close the channel on the first
            // publish and fail every later one: say so once, here.
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    lapin::options::ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .with_context(|| {
                    format!("--publish-to {exchange}: no such exchange on the broker")
                })?;
            Some(Arc::new(channel))
        }
        None => None,
    };
    let run_id = format!("{:04x}", rand::random::<u16>());
    let db = Db::connect(&a.db).await.context("database")?;
    db.migrate().await?;
    let per_store = a.tablets.div_ceil(a.stores);
    let bar = progress(a.tablets as u64, "registering");
    // Each store's virtual number and slug, by index.
    let mut stores = Vec::new();
    let mut slugs = Vec::new();
    let mut logins = Vec::new();
    let mut tablets_per_store = Vec::with_capacity(a.stores);
    for s in 0..a.stores {
        let mut here = 0usize;
        let slug = format!("load-{run_id}-{s}");
        let number = format!(
            "059{}{s:05}",
            u16::from_str_radix(&run_id, 16).unwrap_or(0) % 1000
        );
        db.store_add(&slug, &slug, std::slice::from_ref(&number))
            .await?;
        for _ in 0..per_store {
            if logins.len() == a.tablets {
                break;
            }
            let (_, token) = db.token_issue(&slug, "load").await?;
            let i = logins.len();
            let at = if a.tablets_by_store { s } else { i };
            logins.push(Login {
                url: a.tablets_at[at % a.tablets_at.len()].clone(),
                source: (!a.sources.is_empty()).then(|| a.sources[i % a.sources.len()]),
                headers: vec![
                    ("host".into(), "bizcall".into()),
                    ("passcode".into(), token),
                ],
                destination: format!("/topic/call-store/{slug}"),
                transport: a.transport,
            });
            here += 1;
            bar.inc(1);
        }
        tablets_per_store.push(here);
        stores.push(number);
        slugs.push(slug);
    }
    bar.finish();

    let rss_before = a.pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (opened, failed, connect_secs, workers) =
        open_with_workers(logins, a.workers, a.connect_concurrency, tx).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let per_tablet_kib = match (rss_before, rss_after) {
        (Some(b), Some(f)) if opened > 0 => Some((f.saturating_sub(b)) as f64 / opened as f64),
        _ => None,
    };

    // Post CDRs at the rate, to the instances in turn.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()?;
    let errors = Arc::new(AtomicU64::new(0));
    // POST → `OK`: the intake part alone.
    let answered = Arc::new(Mutex::new(report::histogram()));
    let total = a.common.rate * a.common.duration;
    let cpu_before = a.pid.and_then(cpu_seconds);
    let mut scraped_before = Vec::new();
    for m in &a.metrics_of {
        scraped_before.push(
            scrape::scrape(&client, &m.base)
                .await
                .with_context(|| format!("{}/metrics", m.base))?,
        );
    }
    let mut watched = a.cpu_of.clone();
    watched.extend(workers.iter().enumerate().filter_map(|(i, c)| {
        Some(Watched {
            name: format!("bizcall-load worker {}", i + 1),
            target: WatchTarget::Pid(c.id()?),
        })
    }));
    let mut watch = CpuWatch::start(&watched);
    let hook = match &a.on_send {
        Some(cmd) => Some(
            tokio::process::Command::new("sh")
                .args(["-c", cmd])
                .spawn()
                .with_context(|| format!("--on-send {cmd}"))?,
        ),
        None => None,
    };
    let mut tally = Tally::new();
    let stamp = (Utc::now() + chrono::Duration::hours(9))
        .format("%Y%m%d%H%M%S")
        .to_string();
    let run = paced(
        a.common.rate,
        total,
        "calls",
        Duration::from_secs(5),
        &sent,
        &mut tally,
        &mut rx,
        |n| {
            let store = (n as usize) % a.stores;
            let seq = format!("ld{run_id}{n}");
            if let (Some(exchange), Some(publisher)) = (&a.publish_to, &publisher) {
                let slug = slugs[store].clone();
                let mut call = event(&seq, &slug);
                call.virtual_number = Some(stores[store].clone());
                let props = message_properties(&seq, call.published_at, Duration::from_secs(30))
                    .with_headers(publish_time_header());
                let send: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(confirmed_publish(
                    publisher.clone(),
                    exchange.clone(),
                    slug,
                    call.to_json(),
                    props,
                    errors.clone(),
                ));
                return Item {
                    id: seq,
                    expect: tablets_per_store[store] as u64,
                    send,
                };
            }
            let url = format!(
                "{}/bizcall/cdr",
                a.post_to[n as usize % a.post_to.len()].trim_end_matches('/')
            );
            let (client, errors, answered, vn, stamp, id) = (
                client.clone(),
                errors.clone(),
                answered.clone(),
                stores[store].clone(),
                stamp.clone(),
                seq.clone(),
            );
            let send: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let form = [
                    ("seq", seq.as_str()),
                    ("sdt", stamp.as_str()),
                    ("fromn", "01012345678"),
                    ("ton", "0200000000"),
                    ("vn", vn.as_str()),
                ];
                let posted = Instant::now();
                match client.post(url).form(&form).send().await {
                    Ok(r) if r.status().is_success() => {
                        let us = posted.elapsed().as_micros() as u64;
                        report::record(&mut answered.lock().unwrap_or_else(|p| p.into_inner()), us);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            Item {
                id,
                expect: tablets_per_store[store] as u64,
                send,
            }
        },
    )
    .await;
    let (sending, expected) = (run.seconds, run.expected);
    let cpu_after = a.pid.and_then(cpu_seconds);
    let mut instances = Vec::new();
    for (m, before) in a.metrics_of.iter().zip(&scraped_before) {
        let after = scrape::scrape(&client, &m.base).await?;
        let consumed = scrape::grew(before, &after, "bizcall_events_consumed_total");
        let leg = |q| scrape::quantile_ms(before, &after, "bizcall_bus_leg_seconds", q);
        instances.push(json!({
            "instance": m.name,
            "consumed": consumed,
            "consumed_per_s": consumed / sending.max(1e-9),
            "bus_leg_p50_ms": leg(0.5),
            "bus_leg_p99_ms": leg(0.99),
            "bus_leg_samples": scrape::grew(before, &after, "bizcall_bus_leg_seconds_count"),
        }));
    }
    let cores = watch.finish();
    let machine = watch.machine();
    if let Some(mut hook) = hook {
        let status = hook.wait().await?;
        anyhow::ensure!(status.success(), "--on-send ended with {status}");
    }
    let delivered = tally.seen.len() as u64;
    let cpu_per_1000 = match (cpu_before, cpu_after) {
        (Some(b), Some(f)) if delivered > 0 => Some((f - b) / delivered as f64 * 1000.0),
        _ => None,
    };
    let answered = answered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
    };
    let series = Series {
        name: match a.transport {
            Transport::Ws if a.publish_to.is_some() => {
                "bizcall publish→popup (bus leg at the tablet)".into()
            }
            Transport::Ws => "bizcall webhook→popup".into(),
            Transport::SockjsWebsocket => "bizcall webhook→popup, SockJS websocket".into(),
            Transport::SockjsXhrStreaming => "bizcall webhook→popup, SockJS xhr-streaming".into(),
        },
        hist: tally.hist,
        seconds: sending,
        extra: json!({
            "tablets": opened,
            "transport": format!("{:?}", a.transport),
            "tablet_connect_failures": failed,
            "stores": a.stores,
            "calls": total,
            "rate": a.common.rate,
            "errors": errors.load(Ordering::Relaxed),
            "expected_deliveries": expected,
            "lost": expected.saturating_sub(delivered),
            "duplicates": tally.duplicates,
            "connect_per_s": opened as f64 / connect_secs.max(1e-9),
            "rss_before_kib": rss_before,
            "rss_after_connect_kib": rss_after,
            "rss_per_idle_tablet_kib": per_tablet_kib,
            "cpu_s_per_1000_deliveries": cpu_per_1000,
            "webhook_ok_p50_ms": q(&answered, 0.5),
            "webhook_ok_p99_ms": q(&answered, 0.99),
            "published_to_popup_p50_ms": q(&tally.after_publish, 0.5),
            "published_to_popup_p99_ms": q(&tally.after_publish, 0.99),
            "cores_used": cores.iter().map(|(n, c)| json!({"process": n, "cores": c})).collect::<Vec<_>>(),
            "instances": instances,
            "machine_cores_busy": machine.cores_busy,
            "run_queue_mean": machine.run_queue_mean,
            "run_queue_p90": machine.run_queue_p90,
            "run_queue_max": machine.run_queue_max,
        }),
    };
    println!("{}", report::table(std::slice::from_ref(&series)));
    println!(
        "tablets {opened} (failed {failed}), connect {:.0}/s, memory per idle tablet {}, CPU per 1000 deliveries {}",
        opened as f64 / connect_secs.max(1e-9),
        per_tablet_kib.map(|k| format!("{k:.1} KiB")).unwrap_or_else(|| "n/a (no --pid)".into()),
        cpu_per_1000.map(|c| format!("{:.1} ms", c * 1000.0)).unwrap_or_else(|| "n/a".into()),
    );
    let p = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "split: POST→OK p50 {} / p99 {} ms; publishedAt→popup p50 {} / p99 {} ms",
        p(q(&answered, 0.5)),
        p(q(&answered, 0.99)),
        p(q(&tally.after_publish, 0.5)),
        p(q(&tally.after_publish, 0.99)),
    );
    for i in &instances {
        println!(
            "instance {}: {:.0} events/s from its queue, bus leg p50 {} / p99 {} ms",
            i["instance"].as_str().unwrap_or("?"),
            i["consumed_per_s"].as_f64().unwrap_or(0.0),
            p(i["bus_leg_p50_ms"].as_f64()),
            p(i["bus_leg_p99_ms"].as_f64()),
        );
    }
    if cores.len() > 1 {
        let list: Vec<String> = cores.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        println!(
            "cores used while sending (of {}): {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            list.join(", ")
        );
    }
    println!(
        "machine while sending: {} of {} cores busy; runnable threads mean {:.1}, p90 {}, max {}",
        p(machine.cores_busy),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine.run_queue_mean,
        machine.run_queue_p90,
        machine.run_queue_max,
    );
    write_json(&a.common.out, &a.name, &series.summary())?;
    drop(workers);
    if let Some(dir) = &a.common.out {
        report::svg(
            std::slice::from_ref(&series),
            &dir.join(format!("{}.svg", a.name)),
        )?;
        std::fs::write(
            dir.join(format!("{}.hist", a.name)),
            histogram_text(&series.hist),
        )?;
    }
    Ok(())
}
