//! One checker for every fault scenario: what the provider was answered,
//! what each tablet showed and when, and the assertions that hold under
//! any fault: every `OK` stored; every popup on its own store's tablet;
//! none after its `expiresAt` (by the receiving clock, plus the stated
//! clock-skew bound); none twice; every call shown that was inside its
//! TTL while a tablet of its store was connected.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One CDR posted to the webhook.
#[derive(Debug, Clone)]
pub struct Posted {
    pub seq: String,
    pub store: String,
    pub sent_at: DateTime<Utc>,
    pub status: u16,
    pub took: Duration,
}

/// One popup a tablet received.
#[derive(Debug, Clone)]
pub struct Popup {
    /// The store whose tablet received it.
    pub tablet_store: String,
    pub call_id: String,
    /// The store the event names.
    pub store: String,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct Record {
    pub posted: Vec<Posted>,
    pub popups: Vec<Popup>,
}

/// What a scenario comes to: one row of docs/reliability.md's table.
#[derive(Debug)]
pub struct Verdict {
    pub expected: usize,
    pub shown: usize,
    pub late: usize,
    pub lost: Vec<String>,
    pub duplicates: usize,
    pub webhook_p50: Duration,
    pub webhook_p99: Duration,
    pub popup_p99: Duration,
}

pub fn quantile(mut values: Vec<Duration>, q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

impl Record {
    /// Checks every rule and returns the figures. `skew` is how far the
    /// clocks of the instances and the tablet may differ.
    pub fn check(&self, skew: Duration) -> Verdict {
        let skew = chrono::Duration::from_std(skew).unwrap();
        let ok: HashMap<&str, &Posted> = self
            .posted
            .iter()
            .filter(|p| p.status == 200)
            .map(|p| (p.seq.as_str(), p))
            .collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut duplicates = 0;
        let mut late = 0;
        let mut delays = Vec::new();
        for popup in &self.popups {
            assert_eq!(
                popup.tablet_store, popup.store,
                "a tablet of {} received {}'s call {}",
                popup.tablet_store, popup.store, popup.call_id
            );
            if popup.received_at > popup.expires_at + skew {
                late += 1;
            }
            if !seen.insert(&popup.call_id) {
                duplicates += 1;
                continue;
            }
            if let Some(p) = ok.get(popup.call_id.as_str()) {
                assert_eq!(p.store, popup.store, "call {} on the wrong store", p.seq);
                delays.push((popup.received_at - p.sent_at).to_std().unwrap_or_default());
            }
        }
        let lost: Vec<String> = ok
            .keys()
            .filter(|seq| !seen.contains(*seq))
            .map(|s| s.to_string())
            .collect();
        let took: Vec<Duration> = self.posted.iter().map(|p| p.took).collect();
        Verdict {
            expected: ok.len(),
            shown: ok.len() - lost.len(),
            late,
            lost,
            duplicates,
            webhook_p50: quantile(took.clone(), 0.5),
            webhook_p99: quantile(took, 0.99),
            popup_p99: quantile(delays, 0.99),
        }
    }
}

impl Verdict {
    /// The rules: nothing lost, late or twice; the webhook within 1 s and
    /// popups within 2 s at p99.
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.lost.is_empty(),
            "{what}: calls never shown: {:?}",
            self.lost
        );
        assert_eq!(self.late, 0, "{what}: popups after their expiresAt");
        assert_eq!(self.duplicates, 0, "{what}: popups shown twice");
        assert!(
            self.webhook_p99 <= Duration::from_secs(1),
            "{what}: webhook p99 {:?}",
            self.webhook_p99
        );
        assert!(
            self.popup_p99 <= Duration::from_secs(2),
            "{what}: popup p99 {:?}",
            self.popup_p99
        );
    }

    /// A row of docs/reliability.md's table.
    pub fn row(&self, fault: &str, duration: &str, detect: Option<Duration>) -> String {
        format!(
            "| {fault} | {duration} | {} | {} / {} ms | {} | {} / {} / {} / {} | {} |",
            detect.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.webhook_p50.as_millis(),
            self.webhook_p99.as_millis(),
            self.popup_p99.as_millis(),
            self.expected,
            self.shown,
            self.late,
            self.lost.len(),
            self.duplicates,
        )
    }
}

/// Appends a row of docs/reliability.md's table to
/// `artifacts/reliability.md` (which scripts/test empties first, so it
/// holds one run's rows), and prints it.
pub fn note_row(row: &str) {
    use std::io::Write;
    let dir = super::artifacts();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reliability.md"))
    {
        let _ = writeln!(f, "{row}");
    }
    println!("{row}");
}
