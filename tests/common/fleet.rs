//! Tablets of a whole fleet under failure, for the cluster tests: each one
//! reconnects until told to stop, recovers the call list after every
//! (re)connect as the tablet page does, and logs what it saw; `Tally`
//! turns the logs into the summary table and the verdict.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::stomp::{Client, Polled};

/// What one tablet saw.
#[derive(Default)]
pub struct TabletLog {
    /// call id → how many popups.
    pub popups: HashMap<String, usize>,
    /// When each popup arrived (for the gaps between them).
    pub arrivals: Vec<Instant>,
    /// When each call's first popup arrived.
    pub first_at: HashMap<String, Instant>,
    /// Calls found in the call list after a (re)connect.
    pub recovered: HashSet<String>,
    pub foreign: Vec<String>,
    pub stale: Vec<String>,
    pub reconnects: usize,
    pub latencies_ms: Vec<f64>,
    /// (arrival, webhook→popup ms) per popup, for latency over time.
    pub timed: Vec<(Instant, f64)>,
}

/// One tablet of store `store<N>`.
pub struct Tablet {
    pub slug: String,
    pub log: Arc<Mutex<TabletLog>>,
}

/// When each call's CDR was first posted.
pub type SentAt = Arc<Mutex<HashMap<String, Instant>>>;

/// Store `store`'s number in a test's `series`: the series, then the
/// store's index in four digits.
pub fn vn(series: &str, store: usize) -> String {
    format!("{series}{store:04}")
}

/// Posts a ringing CDR for `vn` the way the provider does: again and again
/// for up to 60 s until an instance answers `OK`, trying `bases` in turn
/// from `bases[first % len]`. False when none ever did.
pub async fn provider_post(bases: &[String], first: usize, seq: &str, vn: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = first;
    while Instant::now() < deadline {
        if super::post_call(&bases[i % bases.len()], seq, vn).await == 200 {
            return true;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Stores `store00`, `store01`, … (`stores` of them), each on
/// `vn(series, i)` with `per_store` tablet tokens labelled `label`; returns
/// (slug, tokens) per store.
pub async fn add_stores(
    db: &bizcall::db::Db,
    stores: usize,
    series: &str,
    per_store: usize,
    label: &str,
) -> Vec<(String, Vec<String>)> {
    let mut tokens = Vec::new();
    for s in 0..stores {
        let slug = format!("store{s:02}");
        db.store_add(&slug, &slug, &[vn(series, s)]).await.unwrap();
        let mut t = Vec::new();
        for _ in 0..per_store {
            t.push(db.token_issue(&slug, label).await.unwrap().1);
        }
        tokens.push((slug, t));
    }
    tokens
}

/// One `run_tablet` per token of `tokens` (from `add_stores`), the k-th of
/// them all against `bases[k % len]`, until `stop`; returns the tablets and
/// their tasks.
pub fn start_tablets(
    tokens: &[(String, Vec<String>)],
    bases: &[String],
    sent: &SentAt,
    stop: &CancellationToken,
) -> (Vec<Tablet>, Vec<tokio::task::JoinHandle<()>>) {
    start_churning_tablets(tokens, bases, sent, stop, None)
}

/// `start_tablets` whose tablets also leave and reconnect of their own
/// accord, each after a random time around `churn` (0.5 to 1.5 times it).
pub fn start_churning_tablets(
    tokens: &[(String, Vec<String>)],
    bases: &[String],
    sent: &SentAt,
    stop: &CancellationToken,
    churn: Option<Duration>,
) -> (Vec<Tablet>, Vec<tokio::task::JoinHandle<()>>) {
    let mut tablets = Vec::new();
    let mut tasks = Vec::new();
    for (slug, toks) in tokens {
        for tok in toks {
            let log: Arc<Mutex<TabletLog>> = Arc::default();
            tablets.push(Tablet {
                slug: slug.clone(),
                log: log.clone(),
            });
            tasks.push(tokio::spawn(run_tablet(
                bases[tasks.len() % bases.len()].clone(),
                slug.clone(),
                tok.clone(),
                log,
                sent.clone(),
                stop.clone(),
                churn,
            )));
        }
    }
    (tablets, tasks)
}

/// Sends `frame` and waits up to 5 s for a frame of command `answer`.
async fn exchange(c: &mut Client, frame: &str, answer: &str) -> bool {
    c.send_raw(frame).await;
    matches!(c.poll(Duration::from_secs(5)).await, Polled::Frame(f) if f.command == answer)
}

/// Runs one tablet of `slug` against `base` until `stop`.
pub async fn run_tablet(
    base: String,
    slug: String,
    token: String,
    log: Arc<Mutex<TabletLog>>,
    sent: SentAt,
    stop: CancellationToken,
    churn: Option<Duration>,
) {
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            log.lock().unwrap().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        first = false;
        let Some(mut c) = Client::try_open(&ws).await else {
            continue;
        };
        let connect =
            format!("CONNECT\naccept-version:1.2\npasscode:{token}\nheart-beat:0,0\n\n\0");
        let subscribe = format!(
            "SUBSCRIBE\nid:0\ndestination:/topic/call-store/{slug}\nack:auto\nreceipt:s\n\n\0"
        );
        if !exchange(&mut c, &connect, "CONNECTED").await
            || !exchange(&mut c, &subscribe, "RECEIPT").await
        {
            continue;
        }
        // Recover what was missed while away, as the tablet page does.
        let list = super::http()
            .get(format!("{base}/api/stores/{slug}/calls?limit=500"))
            .bearer_auth(&token)
            .send()
            .await;
        if let Ok(r) = list {
            if let Ok(serde_json::Value::Array(calls)) = r.json::<serde_json::Value>().await {
                let mut l = log.lock().unwrap();
                for call in calls {
                    if let Some(id) = call["callId"].as_str() {
                        l.recovered.insert(id.to_string());
                    }
                }
            }
        }
        let leave_at = churn.map(|mean| Instant::now() + mean.mul_f64(0.5 + rand::random::<f64>()));
        loop {
            if stop.is_cancelled() {
                return;
            }
            if leave_at.is_some_and(|at| Instant::now() >= at) {
                break;
            }
            match c.poll(Duration::from_millis(500)).await {
                Polled::Timeout => {}
                Polled::Closed => break,
                Polled::Frame(f) if f.command == "MESSAGE" => {
                    let ev = f.json();
                    let id = ev["callId"].as_str().unwrap_or("").to_string();
                    let expires: DateTime<Utc> = ev["expiresAt"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_default();
                    let mut l = log.lock().unwrap();
                    if ev["store"] != slug.as_str() {
                        l.foreign.push(id.clone());
                    }
                    if Utc::now() > expires {
                        l.stale.push(id.clone());
                    }
                    if let Some(at) = sent.lock().unwrap().get(&id) {
                        let ms = at.elapsed().as_secs_f64() * 1000.0;
                        l.latencies_ms.push(ms);
                        l.timed.push((Instant::now(), ms));
                    }
                    l.arrivals.push(Instant::now());
                    l.first_at.entry(id.clone()).or_insert_with(Instant::now);
                    *l.popups.entry(id).or_default() += 1;
                }
                Polled::Frame(_) => break, // ERROR (server restart…): reconnect
            }
        }
    }
}

/// What the tablets of a run saw, against the calls answered `OK`.
#[derive(Default)]
pub struct Tally {
    pub delivered: usize,
    pub recovered_only: usize,
    pub missed: usize,
    pub missed_examples: Vec<String>,
    pub dups: usize,
    pub foreign: usize,
    pub stale: usize,
    pub reconnects: usize,
    /// Sorted.
    pub latencies_ms: Vec<f64>,
}

impl Tally {
    /// `ok` holds each call answered `OK` with its store number; calls in
    /// `excused` count as recovered (their event expired in an outage and
    /// they are in the call list).
    pub fn of(tablets: &[Tablet], ok: &[(String, usize)], excused: &HashSet<&String>) -> Tally {
        let by_store: HashMap<usize, Vec<&String>> =
            ok.iter().fold(HashMap::new(), |mut m, (seq, s)| {
                m.entry(*s).or_default().push(seq);
                m
            });
        let mut t = Tally::default();
        for tablet in tablets {
            let l = tablet.log.lock().unwrap();
            let store: usize = tablet.slug.trim_start_matches("store").parse().unwrap();
            t.dups += l.popups.values().filter(|c| **c > 1).count();
            t.foreign += l.foreign.len();
            t.stale += l.stale.len();
            t.reconnects += l.reconnects;
            t.latencies_ms.extend(&l.latencies_ms);
            for seq in by_store.get(&store).into_iter().flatten() {
                if l.popups.contains_key(*seq) {
                    t.delivered += 1;
                } else if l.recovered.contains(*seq) || excused.contains(*seq) {
                    t.recovered_only += 1;
                } else {
                    t.missed += 1;
                    if t.missed_examples.len() < 5 {
                        t.missed_examples
                            .push(format!("{} missed {seq}", tablet.slug));
                    }
                }
            }
        }
        t.latencies_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t
    }

    /// The `p` quantile of webhook→popup, in ms.
    pub fn pct(&self, p: f64) -> f64 {
        let lat = &self.latencies_ms;
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize]
        }
    }

    /// The summary table's rows about popups (after the CDR rows).
    pub fn print_rows(&self, tablets: usize) {
        println!("| tablets | {tablets} |");
        println!(
            "| popups expected (calls × tablets of the store) | {} |",
            self.delivered + self.recovered_only + self.missed
        );
        println!("| delivered as popups | {} |", self.delivered);
        println!("| recovered from the call list | {} |", self.recovered_only);
        println!("| missed altogether | {} |", self.missed);
        println!("| duplicate popups | {} |", self.dups);
        println!("| cross-store deliveries | {} |", self.foreign);
        println!("| popups shown after expiresAt | {} |", self.stale);
        println!("| tablet reconnects | {} |", self.reconnects);
        println!(
            "| webhook→popup p50 / p99 (ms) | {:.1} / {:.1} |",
            self.pct(0.50),
            self.pct(0.99)
        );
    }

    /// Fails on any popup duplicated, sent to another store, shown stale
    /// or missed, and when most calls did not arrive as popups.
    pub fn assert_clean(&self) {
        assert_eq!(self.dups, 0, "duplicate popups");
        assert_eq!(self.foreign, 0, "cross-store deliveries");
        assert_eq!(self.stale, 0, "popups after expiry");
        assert_eq!(
            self.missed, 0,
            "calls neither shown nor recovered: {:?}",
            self.missed_examples
        );
        assert!(
            self.delivered > self.recovered_only,
            "most calls arrive as popups"
        );
    }
}

/// The CDR rows of the summary table.
pub fn print_cdr_rows(sent: usize, ok: usize, never_ok: usize, not_stored: usize) {
    println!("| measure | value |");
    println!("|---|---|");
    println!("| CDRs sent | {sent} |");
    println!("| CDRs answered OK | {ok} |");
    println!("| CDRs never answered OK | {never_ok} |");
    println!("| OK but not stored (lost) | {not_stored} |");
}
