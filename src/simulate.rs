//! `bizcall call simulate`: sends the provider's callback for a made-up call
//! to a running server, so the whole flow can be seen without a telephone.

use chrono::Utc;
use rand::RngCore;

use crate::call::{kst_offset, CallStatus};

/// One simulated callback.
pub struct Simulation {
    /// Webhook URL, e.g. `http://127.0.0.1:8080/bizcall/cdr`.
    pub url: String,
    pub to: String,
    pub from: String,
    pub status: CallStatus,
    /// Reuse an earlier call's id to update it (e.g. ringing, then completed).
    pub seq: Option<String>,
    pub key: Option<String>,
}

/// A callback that reached no server, said with its cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot reach {url}: connection refused (is `bizcall serve` running? start it, or pass --server <url>)")]
    Refused { url: String },
    #[error("cannot reach {url}: no answer within {} s", TIMEOUT.as_secs())]
    NoAnswer { url: String },
    #[error("cannot reach {url}: {cause}")]
    Other { url: String, cause: String },
}

impl SendError {
    fn new(url: &str, err: &reqwest::Error) -> Self {
        let url = url.to_string();
        if err.is_timeout() {
            return SendError::NoAnswer { url };
        }
        // reqwest's own text ("error sending request for url …") hides the
        // cause; the innermost error names it.
        let mut cause: &dyn std::error::Error = err;
        while let Some(inner) = cause.source() {
            if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return SendError::Refused { url };
                }
            }
            cause = inner;
        }
        SendError::Other {
            url,
            cause: cause.to_string(),
        }
    }
}

/// How long the server has to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the server answered.
pub struct Answer {
    pub seq: String,
    pub status: u16,
    pub body: String,
}

impl Simulation {
    pub fn params(&self, seq: &str) -> Vec<(&'static str, String)> {
        let now = Utc::now().with_timezone(&kst_offset());
        let stamp = now.format("%Y%m%d%H%M%S").to_string();
        // A call's start is fixed by its first CDR (a repeat with another
        // `sdt` is a 409): a simulated call's id carries it, so an update
        // sent with `--seq` repeats it.
        let started = started_from_seq(seq).unwrap_or_else(|| stamp.clone());
        let mut p = vec![
            ("seq", seq.to_string()),
            ("sdt", started),
            ("fromn", self.from.clone()),
            ("ton", self.to.clone()),
            ("vn", self.to.clone()),
        ];
        if matches!(self.status, CallStatus::Answered | CallStatus::Completed) {
            p.push(("swidt", stamp.clone()));
        }
        if matches!(self.status, CallStatus::Missed | CallStatus::Completed) {
            p.push(("edt", stamp));
        }
        p
    }

    pub async fn send(&self) -> anyhow::Result<Answer> {
        let seq = self.seq.clone().unwrap_or_else(|| {
            let mut b = [0u8; 6];
            rand::rng().fill_bytes(&mut b);
            let started = Utc::now().with_timezone(&kst_offset());
            format!("sim-{}-{}", started.format("%Y%m%d%H%M%S"), hex::encode(b))
        });
        let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        let mut req = client.post(&self.url).form(&self.params(&seq));
        if let Some(key) = &self.key {
            req = req.header("X-Bizcall-Key", key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::new(&self.url, &e))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok(Answer { seq, status, body })
    }
}

/// The start time (`YYYYMMDDHHMMSS`, Korea time) in a simulated call's id
/// `sim-<start>-<random>`.
fn started_from_seq(seq: &str) -> Option<String> {
    let stamp = seq.strip_prefix("sim-")?.split('-').next()?;
    (stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit())).then(|| stamp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_repeats_the_start_its_id_carries() {
        let sim = Simulation {
            url: String::new(),
            to: "0501".into(),
            from: "0101".into(),
            status: CallStatus::Completed,
            seq: None,
            key: None,
        };
        let sdt = |seq: &str| {
            sim.params(seq)
                .into_iter()
                .find(|(k, _)| *k == "sdt")
                .map(|(_, v)| v)
                .unwrap()
        };
        assert_eq!(sdt("sim-20261122101500-0a1b2c3d4e5f"), "20261122101500");
        // Other ids (older simulated calls, the provider's) get the time now.
        assert_eq!(sdt("sim-0a1b2c3d4e5f0a1b").len(), 14);
        assert_eq!(sdt("A1").len(), 14);
        assert_eq!(started_from_seq("sim-2026112210150-x"), None);
    }
}
