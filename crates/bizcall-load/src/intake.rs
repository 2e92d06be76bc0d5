//! `intake`: CDR intake over HTTP against the same upsert driven directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bizcall::db::Db;
use chrono::Utc;

use serde_json::json;

use crate::*;

pub(crate) async fn intake(a: IntakeArgs) -> anyhow::Result<()> {
    let db = Db::connect(&a.db).await?;
    db.migrate().await?;
    let run_id = format!("{:04x}", rand::random::<u16>());
    let stamp = (Utc::now() + chrono::Duration::hours(9))
        .format("%Y%m%d%H%M%S")
        .to_string();
    let deadline = Duration::from_secs(a.duration);
    // A registered store, so each CDR over HTTP takes the whole path: the
    // upsert, the publish with its confirm, and the published mark.
    let slug = format!("intake-{run_id}");
    let vn = format!("0580{:05}1", u16::from_str_radix(&run_id, 16).unwrap_or(0));
    db.store_add(&slug, &slug, std::slice::from_ref(&vn))
        .await
        .context("registering the intake store")?;

    // Direct: the same INSERT … ON CONFLICT the webhook runs, same concurrency.
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (db, counter, stamp, run_id, vn) = (
            db.clone(),
            counter.clone(),
            stamp.clone(),
            run_id.clone(),
            vn.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < deadline {
                n += 1;
                let q = format!(
                    "seq=in{run_id}d{w}x{n}&sdt={stamp}&fromn=01012345678&ton=0200000000&vn={vn}"
                );
                let Ok(params) = bizcall::cdr::Params::from_urlencoded(q.as_bytes()) else {
                    continue;
                };
                let Ok(cdr) = bizcall::cdr::Cdr::from_params(&params) else {
                    continue;
                };
                if db.upsert_call(&cdr).await.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let direct = counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Over HTTP, with a durable OK: first CDRs whose number matches no
    // store (validated, stored, answered; nothing to publish), then CDRs of
    // the registered store (also published and confirmed before the answer).
    let stored_only = post_cdrs(&a, &run_id, &stamp, "0599999999", "u").await?;
    let published = post_cdrs(&a, &run_id, &stamp, &vn, "h").await?;
    let result = json!({
        "concurrency": a.concurrency,
        "direct_upserts_per_s": direct,
        "http_cdrs_per_s": stored_only.0,
        "http_errors": stored_only.1,
        "ratio": stored_only.0 / direct.max(1e-9),
        "http_published_cdrs_per_s": published.0,
        "http_published_errors": published.1,
        "published_ratio": published.0 / direct.max(1e-9),
    });
    println!(
        "| intake at concurrency {} | per s | ÷ direct |",
        a.concurrency
    );
    println!("|---|---|---|");
    println!("| INSERT … ON CONFLICT directly | {direct:.0} | 1.00 |");
    println!(
        "| POST /bizcall/cdr, durable OK (no store matched: nothing published) | {:.0} | {:.2} |",
        stored_only.0,
        stored_only.0 / direct.max(1e-9)
    );
    println!(
        "| POST /bizcall/cdr, durable OK after the publish confirm | {:.0} | {:.2} |",
        published.0,
        published.0 / direct.max(1e-9)
    );
    write_json(&a.out, "intake", &result)?;
    Ok(())
}

/// Posts CDRs for `vn` at the set concurrency for the set time; returns
/// (answered `OK` per second, errors).
pub(crate) async fn post_cdrs(
    a: &IntakeArgs,
    run_id: &str,
    stamp: &str,
    vn: &str,
    tag: &str,
) -> anyhow::Result<(f64, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(a.duration);
    let started = Instant::now();
    let url = format!("{}/bizcall/cdr", a.post_to.trim_end_matches('/'));
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (client, counter, errors, url) =
            (client.clone(), counter.clone(), errors.clone(), url.clone());
        let (prefix, stamp, vn) = (
            format!("in{run_id}{tag}{w}x"),
            stamp.to_string(),
            vn.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < deadline {
                n += 1;
                let seq = format!("{prefix}{n}");
                let form = [
                    ("seq", seq.as_str()),
                    ("sdt", stamp.as_str()),
                    ("fromn", "01012345678"),
                    ("ton", "0200000000"),
                    ("vn", vn.as_str()),
                ];
                match client.post(&url).form(&form).send().await {
                    Ok(r) if r.status().is_success() => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    ))
}
