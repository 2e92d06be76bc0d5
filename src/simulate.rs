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
        let mut p = vec![
            ("seq", seq.to_string()),
            ("sdt", stamp.clone()),
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
            let mut b = [0u8; 8];
            rand::rng().fill_bytes(&mut b);
            format!("sim-{}", hex::encode(b))
        });
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let mut req = client.post(&self.url).form(&self.params(&seq));
        if let Some(key) = &self.key {
            req = req.header("X-Bizcall-Key", key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.url))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok(Answer { seq, status, body })
    }
}
