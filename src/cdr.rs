//! The provider's call-detail record: parsing the webhook parameters,
//! validating every field, and deriving the call's status (docs/webhook.md).

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

use crate::call::{kst_offset, CallStatus};

/// Longest text kept from the free-text fields, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest `seq`.
pub const MAX_SEQ_LEN: usize = 32;

/// A validated call-detail record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr {
    /// The provider's id of the call: the idempotency key.
    pub seq: String,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Caller's number, digits only.
    pub caller: String,
    /// The 050 number dialled, digits only.
    pub virtual_number: Option<String>,
    /// The store's real number the call was connected to, digits only.
    pub destination: String,
    /// The provider's free-text fields, kept verbatim (name, value).
    pub extras: Vec<(&'static str, String)>,
}

/// Free-text fields kept verbatim.
pub const TEXT_FIELDS: [&str; 6] = ["crid", "irid", "memo", "memo2", "cause", "closed_from"];

/// Every parameter the parser reads; others are ignored.
const KNOWN: [&str; 13] = [
    "seq",
    "sdt",
    "swidt",
    "edt",
    "fromn",
    "vn",
    "ton",
    "crid",
    "irid",
    "memo",
    "memo2",
    "cause",
    "closed_from",
];

/// A field that failed validation: answered as
/// `400 bad request: <field>: <expected>, got "<value>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub expected: String,
    pub got: String,
}

impl FieldError {
    pub fn new(field: &str, expected: impl Into<String>, got: &str) -> Self {
        Self {
            field: field.to_string(),
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, got \"{}\"",
            self.field,
            self.expected,
            quote_value(&self.got)
        )
    }
}

impl std::error::Error for FieldError {}

/// Shows a rejected value safely: control characters and quotes escaped,
/// and long values cut, so an error line stays one short line.
fn quote_value(value: &str) -> String {
    const SHOWN: usize = 64;
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == SHOWN {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// The raw parameters of one callback, from a query string, a form body or
/// a JSON object. A name given twice with different values is rejected.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<&'static str, String>);

impl Params {
    fn insert(&mut self, name: &str, value: String) -> Result<(), FieldError> {
        let Some(known) = KNOWN.iter().find(|k| **k == name) else {
            return Ok(());
        };
        match self.0.get(known) {
            Some(previous) if *previous != value => Err(FieldError::new(
                known,
                "one value (the parameter was given twice with different values)",
                &value,
            )),
            _ => {
                self.0.insert(known, value);
                Ok(())
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Parses `a=1&b=2` with percent-decoding and `+` as space. Values must
    /// be UTF-8 once decoded.
    pub fn from_urlencoded(input: &[u8]) -> Result<Self, FieldError> {
        let mut params = Params::default();
        for pair in input.split(|b| *b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let Ok(name) = decode_component(name) else {
                // A name that is not UTF-8 cannot be one of ours.
                continue;
            };
            if !KNOWN.contains(&name.as_str()) {
                continue;
            }
            let value = decode_component(value).map_err(|NotUtf8(raw)| {
                FieldError::new(&name, "percent-encoded UTF-8 text", &raw)
            })?;
            params.insert(&name, value)?;
        }
        Ok(params)
    }

    /// Parses a JSON object whose values are strings (numbers are taken as
    /// their text, null as absent).
    pub fn from_json(input: &[u8]) -> Result<Self, FieldError> {
        let value: serde_json::Value = serde_json::from_slice(input).map_err(|e| {
            FieldError::new("body", "a JSON object of string values", &e.to_string())
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(FieldError::new(
                "body",
                "a JSON object of string values",
                &value.to_string(),
            ));
        };
        let mut params = Params::default();
        for (name, value) in map {
            if !KNOWN.contains(&name.as_str()) {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => continue,
                other => {
                    return Err(FieldError::new(&name, "a string", &other.to_string()));
                }
            };
            params.insert(&name, text)?;
        }
        Ok(params)
    }
}

/// A component that is not UTF-8 once decoded: the raw text, for the
/// message.
struct NotUtf8(String);

/// Percent-decodes one component, `+` meaning space.
fn decode_component(raw: &[u8]) -> Result<String, NotUtf8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(decoded).map_err(|_| NotUtf8(String::from_utf8_lossy(raw).into_owned()))
}

impl Cdr {
    /// Validates the parameters of one callback.
    pub fn from_params(params: &Params) -> Result<Self, FieldError> {
        let seq = required(params, "seq")?;
        if seq.is_empty()
            || seq.len() > MAX_SEQ_LEN
            || !seq
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(FieldError::new(
                "seq",
                "1 to 32 characters of [0-9A-Za-z_-]",
                seq,
            ));
        }

        let started_at = parse_time("sdt", required(params, "sdt")?)?;
        let answered_at = optional_time(params, "swidt")?;
        let ended_at = optional_time(params, "edt")?;

        let fromn = required(params, "fromn")?;
        let caller = digits_only(fromn, &['-', ' ']);
        if !(2..=20).contains(&caller.len()) || !caller.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(
                "fromn",
                "2 to 20 digits ('-' and spaces allowed)",
                fromn,
            ));
        }

        let destination = parse_number("ton", required(params, "ton")?)?;
        let virtual_number = match params.get("vn") {
            None | Some("") => None,
            Some(vn) => Some(parse_number("vn", vn)?),
        };

        let mut extras = Vec::new();
        for name in TEXT_FIELDS {
            if let Some(text) = params.get(name) {
                if text.chars().count() > MAX_TEXT_CHARS {
                    return Err(FieldError::new(
                        name,
                        "text of at most 1000 characters",
                        text,
                    ));
                }
                extras.push((name, text.to_string()));
            }
        }

        Ok(Cdr {
            seq: seq.to_string(),
            started_at,
            answered_at,
            ended_at,
            caller,
            virtual_number,
            destination,
            extras,
        })
    }

    pub fn status(&self) -> CallStatus {
        CallStatus::derive(self.answered_at.is_some(), self.ended_at.is_some())
    }

    /// A digest of every stored field: a repeat with the same fingerprint
    /// changes nothing and publishes nothing.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |name: &str, value: &str| {
            h.update(name.as_bytes());
            h.update([0]);
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        };
        put("sdt", &self.started_at.timestamp().to_string());
        put(
            "swidt",
            &self
                .answered_at
                .map(|t| t.timestamp().to_string())
                .unwrap_or_default(),
        );
        put(
            "edt",
            &self
                .ended_at
                .map(|t| t.timestamp().to_string())
                .unwrap_or_default(),
        );
        put("fromn", &self.caller);
        put("vn", self.virtual_number.as_deref().unwrap_or(""));
        put("ton", &self.destination);
        for (name, value) in &self.extras {
            put(name, value);
        }
        hex::encode(&h.finalize()[..16])
    }

    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extras
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, FieldError> {
    match params.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        other => Err(FieldError::new(
            name,
            "a value (required)",
            other.unwrap_or(""),
        )),
    }
}

fn optional_time(params: &Params, name: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
    match params.get(name) {
        None | Some("") => Ok(None),
        Some(v) => parse_time(name, v).map(Some),
    }
}

/// `yyyyMMddHHmmss` in Korea time.
fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, FieldError> {
    let bad = || FieldError::new(name, "yyyyMMddHHmmss (Korea time)", value);
    if value.len() != 14 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let naive = NaiveDateTime::parse_from_str(value, "%Y%m%d%H%M%S").map_err(|_| bad())?;
    kst_offset()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(bad)
}

fn parse_number(name: &str, value: &str) -> Result<String, FieldError> {
    let digits = digits_only(value, &['-']);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new(name, "1 to 20 digits ('-' allowed)", value));
    }
    Ok(digits)
}

fn digits_only(value: &str, ignored: &[char]) -> String {
    value.chars().filter(|c| !ignored.contains(c)).collect()
}

/// Normalises a phone number as stores register it: digits only.
pub fn normalize_number(value: &str) -> Option<String> {
    let digits: String = value
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '(' | ')' | '+'))
        .collect();
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Cdr, FieldError> {
        Cdr::from_params(&Params::from_urlencoded(query.as_bytes())?)
    }

    const BASE: &str =
        "seq=A1&sdt=20261122101500&fromn=010-1234-5678&ton=0212345678&vn=050-1234-5678";

    #[test]
    fn a_ringing_call() {
        let cdr = parse(BASE).unwrap();
        assert_eq!(cdr.seq, "A1");
        assert_eq!(cdr.caller, "01012345678");
        assert_eq!(cdr.virtual_number.as_deref(), Some("05012345678"));
        assert_eq!(cdr.destination, "0212345678");
        assert_eq!(cdr.status(), CallStatus::Ringing);
        assert_eq!(cdr.started_at.to_rfc3339(), "2026-11-22T01:15:00+00:00");
    }

    #[test]
    fn statuses() {
        let answered = parse(&format!("{BASE}&swidt=20261122101510&edt=")).unwrap();
        assert_eq!(answered.status(), CallStatus::Answered);
        let done = parse(&format!("{BASE}&swidt=20261122101510&edt=20261122102000")).unwrap();
        assert_eq!(done.status(), CallStatus::Completed);
        let missed = parse(&format!("{BASE}&edt=20261122101530")).unwrap();
        assert_eq!(missed.status(), CallStatus::Missed);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            ("sdt=20261122101500&fromn=0101&ton=02", "seq"),
            ("seq=A1&sdt=2026-11-22&fromn=0101&ton=02", "sdt"),
            ("seq=A1&sdt=20261322101500&fromn=0101&ton=02", "sdt"),
            ("seq=A1&sdt=20261122101500&fromn=01a0&ton=02", "fromn"),
            ("seq=A1&sdt=20261122101500&fromn=0&ton=02", "fromn"),
            ("seq=A1&sdt=20261122101500&fromn=0101&ton=", "ton"),
            ("seq=A1&sdt=20261122101500&fromn=0101&ton=02&vn=05x", "vn"),
            (
                "seq=A1&sdt=20261122101500&fromn=0101&ton=02&edt=yesterday",
                "edt",
            ),
            (
                "seq=A1&sdt=20261122101500&fromn=0101&ton=02&swidt=2026112210150",
                "swidt",
            ),
            ("seq=A%201&sdt=20261122101500&fromn=0101&ton=02", "seq"),
            ("seq=A1&seq=B2&sdt=20261122101500&fromn=0101&ton=02", "seq"),
            (
                "seq=A1&sdt=20261122101500&fromn=0101&ton=02&memo=%FF",
                "memo",
            ),
        ];
        for (query, field) in cases {
            let err = parse(query).unwrap_err();
            assert_eq!(err.field, field, "{query}: {err}");
        }
        let long_seq = format!(
            "seq={}&sdt=20261122101500&fromn=0101&ton=02",
            "a".repeat(33)
        );
        assert_eq!(parse(&long_seq).unwrap_err().field, "seq");
        let ok_seq = format!(
            "seq={}&sdt=20261122101500&fromn=0101&ton=02",
            "a".repeat(32)
        );
        assert!(parse(&ok_seq).is_ok());
    }

    #[test]
    fn error_text_follows_the_spec() {
        let err = parse("seq=A1&sdt=2026-11-22&fromn=0101&ton=02").unwrap_err();
        assert_eq!(
            err.to_string(),
            "sdt: yyyyMMddHHmmss (Korea time), got \"2026-11-22\""
        );
        let err = parse("seq=A1&sdt=20261122101500&fromn=%22%0A&ton=02").unwrap_err();
        assert_eq!(
            err.to_string(),
            "fromn: 2 to 20 digits ('-' and spaces allowed), got \"\\\"\\n\""
        );
    }

    #[test]
    fn text_fields_are_limited_and_decoded() {
        let memo = "가".repeat(1000);
        let encoded: String =
            percent_encoding::utf8_percent_encode(&memo, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let cdr = parse(&format!("{BASE}&memo={encoded}")).unwrap();
        assert_eq!(cdr.extra("memo"), Some(memo.as_str()));
        let too_long = format!("{BASE}&memo={}", "x".repeat(1001));
        assert_eq!(parse(&too_long).unwrap_err().field, "memo");
        let korean = parse(&format!(
            "{BASE}&memo=%EC%84%B8%EC%B0%A8+%EC%98%88%EC%95%BD"
        ))
        .unwrap();
        assert_eq!(korean.extra("memo"), Some("세차 예약"));
    }

    #[test]
    fn json_bodies() {
        let ok = Params::from_json(br#"{"seq":"J1","sdt":"20261122101500","fromn":"01012345678","ton":"0212345678","other":[1]}"#).unwrap();
        assert_eq!(Cdr::from_params(&ok).unwrap().seq, "J1");
        assert_eq!(Params::from_json(b"[1,2]").unwrap_err().field, "body");
        assert_eq!(Params::from_json(b"{nope").unwrap_err().field, "body");
        assert_eq!(
            Params::from_json(br#"{"seq":{"a":1}}"#).unwrap_err().field,
            "seq"
        );
    }

    #[test]
    fn fingerprint_tracks_every_field() {
        let a = parse(BASE).unwrap();
        assert_eq!(a.fingerprint(), parse(BASE).unwrap().fingerprint());
        let b = parse(&format!("{BASE}&edt=20261122101530")).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = parse(&format!("{BASE}&memo=x")).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn normalizes_registered_numbers() {
        assert_eq!(
            normalize_number("050-1234-5678").as_deref(),
            Some("05012345678")
        );
        assert_eq!(normalize_number("abc"), None);
        assert_eq!(normalize_number(""), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for params in [Params::from_urlencoded(&bytes), Params::from_json(&bytes)] {
                match params {
                    Ok(p) => {
                        if let Err(e) = Cdr::from_params(&p) {
                            proptest::prop_assert!(KNOWN.contains(&e.field.as_str()), "{}", e);
                        }
                    }
                    Err(e) => proptest::prop_assert!(e.field == "body" || KNOWN.contains(&e.field.as_str()), "{}", e),
                }
            }
        }

        #[test]
        fn arbitrary_values_never_panic(
            seq in ".{0,40}", sdt in "[0-9]{0,16}", fromn in "[0-9 a-]{0,25}", memo in ".{0,20}"
        ) {
            let mut p = Params::default();
            for (k, v) in [("seq", seq), ("sdt", sdt), ("fromn", fromn), ("ton", "02".to_string()), ("memo", memo)] {
                p.insert(k, v).unwrap();
            }
            if let Err(e) = Cdr::from_params(&p) {
                proptest::prop_assert!(KNOWN.contains(&e.field.as_str()), "{}", e);
            }
        }
    }
}
