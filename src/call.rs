//! The call event that flows from the webhook to tablets: its JSON shape,
//! its status, and its expiry.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Where a call stands, derived from which times the CDR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Ringing,
    Answered,
    Missed,
    Completed,
}

impl CallStatus {
    pub const ALL: [CallStatus; 4] = [
        CallStatus::Ringing,
        CallStatus::Answered,
        CallStatus::Missed,
        CallStatus::Completed,
    ];

    /// Statuses only move forward: an update with a lower rank is ignored.
    /// `missed` and `completed` both end a call and share the top rank.
    pub fn rank(self) -> i32 {
        match self {
            CallStatus::Ringing => 0,
            CallStatus::Answered => 1,
            CallStatus::Missed | CallStatus::Completed => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ringing => "ringing",
            CallStatus::Answered => "answered",
            CallStatus::Missed => "missed",
            CallStatus::Completed => "completed",
        }
    }

    /// docs/webhook.md, "Status": which of answer and end times are present.
    pub fn derive(answered: bool, ended: bool) -> Self {
        match (answered, ended) {
            (false, false) => CallStatus::Ringing,
            (true, false) => CallStatus::Answered,
            (true, true) => CallStatus::Completed,
            (false, true) => CallStatus::Missed,
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("expected ringing, answered, missed or completed, got {s:?}"))
    }
}

/// The bus payload and the STOMP MESSAGE body (docs/call-event.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub call_id: String,
    pub store: String,
    pub status: CallStatus,
    pub caller_number: String,
    pub virtual_number: Option<String>,
    #[serde(with = "kst")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "kst_opt")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(with = "kst_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(with = "utc_millis")]
    pub published_at: DateTime<Utc>,
    #[serde(with = "utc_millis")]
    pub expires_at: DateTime<Utc>,
    /// When the bus message carrying it was published, in microseconds
    /// since the epoch (RabbitMQ's `x-bizcall-published-us` header), for
    /// the bus leg's histogram. Never in the JSON.
    #[serde(skip)]
    pub published_us: Option<i64>,
}

/// The `type` of what goes over the bus and to tablets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A call's popup (`CallEvent`).
    Call,
    /// A tablet took a call (`HandledEvent`).
    Handled,
}

impl CallEvent {
    /// Whether a popup for this event may still be shown at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    /// Time left before expiry, zero when already expired.
    pub fn time_left(&self, now: DateTime<Utc>) -> std::time::Duration {
        (self.expires_at - now).to_std().unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and times cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The body the Spring service's tablets read (legacy destination):
    /// the event plus `fromNumber` (the caller's digits) and `stardDate`
    /// (sic: the call's start in Korea time as `yyyy-MM-dd'T'HH:mm:ss`,
    /// how Jackson wrote a `LocalDateTime`); `virtualNumber` is left out
    /// when unknown, as that service did.
    pub fn to_legacy_json(&self) -> String {
        let Ok(serde_json::Value::Object(mut body)) = serde_json::to_value(self) else {
            return String::new();
        };
        if self.virtual_number.is_none() {
            body.remove("virtualNumber");
        }
        body.insert("fromNumber".into(), self.caller_number.clone().into());
        let start = self
            .started_at
            .with_timezone(&kst_offset())
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        body.insert("stardDate".into(), start.into());
        serde_json::Value::Object(body).to_string()
    }

    /// Parses and checks a bus payload; anything else is a poison message.
    pub fn from_json(bytes: &[u8]) -> Result<Self, NotAnEvent> {
        let ev: CallEvent = serde_json::from_slice(bytes)?;
        if ev.kind != EventKind::Call {
            return Err(NotAnEvent::WrongType);
        }
        if ev.call_id.is_empty() || ev.store.is_empty() {
            return Err(NotAnEvent::Unaddressed);
        }
        if ev.expires_at < ev.published_at {
            return Err(NotAnEvent::ExpiresBeforePublished);
        }
        Ok(ev)
    }
}

/// Why a bus payload is not a call event (docs/call-event.md, "Consumers
/// of the exchange"): such a message is rejected, never retried.
#[derive(Debug, thiserror::Error)]
pub enum NotAnEvent {
    #[error("not a call event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a call event: empty callId or store")]
    Unaddressed,
    #[error("not a call event: expiresAt before publishedAt")]
    ExpiresBeforePublished,
    #[error("not a call event: wrong type")]
    WrongType,
}

/// A tablet took a call (docs/call-event.md, "When a call is handled"):
/// the other tablets of its store close that popup. Its expiry is not in
/// the JSON: it is `at` plus `bus.message_ttl`, as a call event's is its
/// `publishedAt` plus the TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandledEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub call_id: String,
    pub store: String,
    /// The label of the acknowledging tablet's token.
    pub by: String,
    /// When it was acknowledged: Korea time, milliseconds.
    #[serde(with = "kst_millis")]
    pub at: DateTime<Utc>,
    /// `at` plus the TTL; set by whoever makes or reads the event.
    #[serde(skip)]
    pub expires_at: DateTime<Utc>,
}

impl HandledEvent {
    pub fn new(call_id: &str, store: &str, by: &str, at: DateTime<Utc>, ttl: Duration) -> Self {
        // Whole milliseconds, as the JSON carries them: a copy read back
        // from the bus expires at the same instant.
        let at = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
        HandledEvent {
            kind: EventKind::Handled,
            call_id: call_id.to_string(),
            store: store.to_string(),
            by: by.to_string(),
            at,
            expires_at: at + to_chrono(ttl),
        }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    pub fn time_left(&self, now: DateTime<Utc>) -> std::time::Duration {
        (self.expires_at - now).to_std().unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a bus payload; `ttl` gives its expiry.
    pub fn from_json(bytes: &[u8], ttl: Duration) -> Result<Self, NotAnEvent> {
        let mut ev: HandledEvent = serde_json::from_slice(bytes)?;
        if ev.kind != EventKind::Handled {
            return Err(NotAnEvent::WrongType);
        }
        if ev.call_id.is_empty() || ev.store.is_empty() {
            return Err(NotAnEvent::Unaddressed);
        }
        ev.expires_at = ev.at + to_chrono(ttl);
        Ok(ev)
    }
}

/// Anything the bus carries: a call event or a handled event.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    Call(CallEvent),
    Handled(HandledEvent),
}

impl BusEvent {
    pub fn call_id(&self) -> &str {
        match self {
            BusEvent::Call(e) => &e.call_id,
            BusEvent::Handled(e) => &e.call_id,
        }
    }

    /// The slug of the store whose call it is.
    pub fn store(&self) -> &str {
        match self {
            BusEvent::Call(e) => &e.store,
            BusEvent::Handled(e) => &e.store,
        }
    }

    /// When it was published (a handled event: when the call was taken).
    pub fn published_at(&self) -> DateTime<Utc> {
        match self {
            BusEvent::Call(e) => e.published_at,
            BusEvent::Handled(e) => e.at,
        }
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        match self {
            BusEvent::Call(e) => e.expires_at,
            BusEvent::Handled(e) => e.expires_at,
        }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at()
    }

    pub fn time_left(&self, now: DateTime<Utc>) -> std::time::Duration {
        (self.expires_at() - now).to_std().unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        match self {
            BusEvent::Call(e) => e.to_json(),
            BusEvent::Handled(e) => e.to_json(),
        }
    }

    /// A call event, else a handled event (expiring `ttl` after `at`);
    /// anything else is poison, reported as not being a call event.
    pub fn from_json(bytes: &[u8], ttl: Duration) -> Result<Self, NotAnEvent> {
        match CallEvent::from_json(bytes) {
            Ok(e) => Ok(BusEvent::Call(e)),
            Err(call_error) => HandledEvent::from_json(bytes, ttl)
                .map(BusEvent::Handled)
                .map_err(|_| call_error),
        }
    }
}

/// Korea Standard Time, the provider's clock (UTC+9, no daylight saving).
pub fn kst_offset() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("UTC+9 is a valid offset")
}

pub fn to_kst_string(t: DateTime<Utc>) -> String {
    t.with_timezone(&kst_offset())
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

pub fn to_utc_millis_string(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

mod kst {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_kst_string(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod kst_millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let text = t
            .with_timezone(&kst_offset())
            .to_rfc3339_opts(SecondsFormat::Millis, false);
        s.serialize_str(&text)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod kst_opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&to_kst_string(*t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => DateTime::parse_from_rfc3339(&text)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom),
        }
    }
}

mod utc_millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_utc_millis_string(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// A caller's number as it may appear in logs: only the last four digits.
pub fn mask_number(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(|c| c.is_ascii_digit()).collect();
    let keep = digits.len().min(4);
    let hidden = digits.len() - keep;
    let mut out = "*".repeat(hidden);
    out.extend(&digits[hidden..]);
    out
}

/// A configured duration as chrono's, for arithmetic on event times. Exact
/// for every value `Config::validate` lets through; a larger one (only a
/// `Config` built by hand skips it) saturates instead of wrapping.
pub fn to_chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> CallEvent {
        let published = Utc.with_ymd_and_hms(2026, 11, 22, 1, 15, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        CallEvent {
            kind: EventKind::Call,
            call_id: "abc".into(),
            store: "gangnam".into(),
            status: CallStatus::Ringing,
            caller_number: "01012345678".into(),
            virtual_number: Some("05012345678".into()),
            started_at: Utc.with_ymd_and_hms(2026, 11, 22, 1, 15, 0).unwrap(),
            answered_at: None,
            ended_at: None,
            published_at: published,
            expires_at: published + chrono::Duration::seconds(30),
            published_us: None,
        }
    }

    #[test]
    fn json_matches_the_spec_shape() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(json["type"], "call");
        assert_eq!(json["callId"], "abc");
        assert_eq!(json["status"], "ringing");
        assert_eq!(json["startedAt"], "2026-11-22T10:15:00+09:00");
        assert_eq!(json["answeredAt"], serde_json::Value::Null);
        assert_eq!(json["publishedAt"], "2026-11-22T01:15:00.123Z");
        assert_eq!(json["expiresAt"], "2026-11-22T01:15:30.123Z");
    }

    #[test]
    fn legacy_body_adds_the_spring_fields() {
        let mut ev = sample();
        let json: serde_json::Value = serde_json::from_str(&ev.to_legacy_json()).unwrap();
        assert_eq!(json["fromNumber"], "01012345678");
        assert_eq!(json["stardDate"], "2026-11-22T10:15:00");
        assert_eq!(json["virtualNumber"], "05012345678");
        assert_eq!(json["callId"], "abc");
        assert_eq!(json["startedAt"], "2026-11-22T10:15:00+09:00");
        // Korea time even across the date line: 16:30 UTC is 01:30 next day.
        ev.started_at = Utc.with_ymd_and_hms(2026, 11, 22, 16, 30, 5).unwrap();
        ev.virtual_number = None;
        let json: serde_json::Value = serde_json::from_str(&ev.to_legacy_json()).unwrap();
        assert_eq!(json["stardDate"], "2026-11-23T01:30:05");
        assert!(json.get("virtualNumber").is_none(), "{json}");
    }

    #[test]
    fn round_trips_and_rejects_poison() {
        let ev = sample();
        assert_eq!(CallEvent::from_json(ev.to_json().as_bytes()).unwrap(), ev);
        assert!(CallEvent::from_json(b"{}").is_err());
        assert!(CallEvent::from_json(b"\xff\x00").is_err());
        assert!(CallEvent::from_json(b"{\"type\":\"call\"}").is_err());
    }

    #[test]
    fn handled_event_has_the_spec_shape_and_round_trips() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 1, 15, 4).unwrap()
            + chrono::Duration::milliseconds(250);
        let ttl = Duration::from_secs(30);
        let ev = HandledEvent::new("abc", "gangnam", "front desk", at, ttl);
        let json: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys.len(), 5, "{json}");
        assert_eq!(json["type"], "handled");
        assert_eq!(json["callId"], "abc");
        assert_eq!(json["store"], "gangnam");
        assert_eq!(json["by"], "front desk");
        assert_eq!(json["at"], "2026-11-22T10:15:04.250+09:00");
        let back = BusEvent::from_json(ev.to_json().as_bytes(), ttl).unwrap();
        assert_eq!(back, BusEvent::Handled(ev.clone()));
        assert_eq!(back.expires_at(), at + chrono::Duration::seconds(30));
        // A handled body is not a call event, and a call is read as a call.
        assert!(CallEvent::from_json(ev.to_json().as_bytes()).is_err());
        let call = sample();
        assert_eq!(
            BusEvent::from_json(call.to_json().as_bytes(), ttl).unwrap(),
            BusEvent::Call(call.clone())
        );
        // A call body that says it is handled, and a handled one missing
        // its store or carrying an extra field, are poison.
        let mut v: serde_json::Value = serde_json::from_str(&call.to_json()).unwrap();
        v["type"] = "handled".into();
        assert!(BusEvent::from_json(v.to_string().as_bytes(), ttl).is_err());
        let mut h = json.clone();
        h["store"] = "".into();
        assert!(BusEvent::from_json(h.to_string().as_bytes(), ttl).is_err());
        let mut h = json.clone();
        h["expiresAt"] = "2026-11-22T01:15:30.123Z".into();
        assert!(BusEvent::from_json(h.to_string().as_bytes(), ttl).is_err());
        let mut h = json;
        h["at"] = "yesterday".into();
        assert!(BusEvent::from_json(h.to_string().as_bytes(), ttl).is_err());
    }

    #[test]
    fn status_is_derived_and_ranked() {
        assert_eq!(CallStatus::derive(false, false), CallStatus::Ringing);
        assert_eq!(CallStatus::derive(true, false), CallStatus::Answered);
        assert_eq!(CallStatus::derive(true, true), CallStatus::Completed);
        assert_eq!(CallStatus::derive(false, true), CallStatus::Missed);
        assert!(CallStatus::Completed.rank() > CallStatus::Ringing.rank());
        assert_eq!("missed".parse::<CallStatus>().unwrap(), CallStatus::Missed);
        assert!("gone".parse::<CallStatus>().is_err());
    }

    #[test]
    fn masks_keep_last_four_digits() {
        assert_eq!(mask_number("010-1234-5678"), "*******5678");
        assert_eq!(mask_number("12"), "12");
        assert_eq!(mask_number(""), "");
    }
}
