//! What each fuzz target does with one input, shared by the cargo-fuzz
//! targets (fuzz/fuzz_targets/) and the corpus replay in the normal test
//! suite (tests/fuzz_corpus.rs), which include this file with `#[path]`.
//!
//! Every function calls the real parser on bytes a stranger could send and
//! checks a few properties that must hold whatever the bytes are; a panic
//! (or a failed assertion) is a finding.

// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use bizcall::address::AddressGroup;
use bizcall::cdr::{normalize_number, Cdr, Params, TEXT_FIELDS};
use bizcall::http::client_ip::{client_address, parse_hop};
use bizcall::sockjs::frame::{messages, parse_array, parse_ws_message};
use bizcall::stomp::frame::{Command, Decoder, Frame, Item, Version, MAX_HEADERS};
use ipnet::IpNet;

/// Runs target `name` (also its corpus directory's name) on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "stomp_decoder" => stomp_decoder(data),
        "sockjs_frame" => sockjs_frame(data),
        "cdr" => cdr(data),
        "forwarded_for" => forwarded_for(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

// --- STOMP -----------------------------------------------------------------

/// A small limit (the hostile case) and the service's usual one.
const MAX_FRAMES: [usize; 2] = [1024, 65536];
/// `None`: the decoder's default, before any CONNECT negotiated a version.
const VERSIONS: [Option<Version>; 4] = [
    None,
    Some(Version::V1_0),
    Some(Version::V1_1),
    Some(Version::V1_2),
];
/// Inputs up to this size are also fed one byte at a time.
const BYTEWISE_UP_TO: usize = 512;

/// Decodes the input in one push, in a few chunks cut where the first bytes
/// say, and (when short) a byte at a time, for every version and both
/// limits. However the bytes are split, the same items must come out, and
/// either all three stop on an error or none does.
pub fn stomp_decoder(data: &[u8]) {
    let cuts = cut_points(data);
    let bytewise: Vec<usize> = if data.len() <= BYTEWISE_UP_TO {
        (1..data.len()).collect()
    } else {
        Vec::new()
    };
    for max_frame in MAX_FRAMES {
        for version in VERSIONS {
            let whole = decode(data, &[], max_frame, version);
            let chunked = decode(data, &cuts, max_frame, version);
            assert_eq!(
                whole, chunked,
                "cut at {cuts:?}, max {max_frame}, {version:?}"
            );
            if !bytewise.is_empty() {
                let one_by_one = decode(data, &bytewise, max_frame, version);
                assert_eq!(whole, one_by_one, "bytewise, max {max_frame}, {version:?}");
            }
            for item in &whole.0 {
                if let Item::Frame(frame) = item {
                    check_frame(frame, version);
                }
            }
        }
    }
}

/// Up to three cut positions taken from the first three bytes.
fn cut_points(data: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = data
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, b)| (usize::from(*b) * 13 + i * 101) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The items decoded, and whether decoding stopped on an error.
fn decode(
    data: &[u8],
    cuts: &[usize],
    max_frame: usize,
    version: Option<Version>,
) -> (Vec<Item>, bool) {
    let mut d = Decoder::new(max_frame);
    if let Some(v) = version {
        d.set_version(v);
    }
    let mut items = Vec::new();
    let mut at = 0;
    for end in cuts.iter().copied().chain([data.len()]) {
        if end < at {
            continue;
        }
        d.push(&data[at..end]);
        at = end;
        loop {
            match d.next_item() {
                Ok(Some(item)) => {
                    items.push(item);
                    // Each item uses at least one byte.
                    assert!(items.len() <= at, "more items than bytes");
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = (e.to_string(), e.summary());
                    return (items, true);
                }
            }
        }
        let _ = (d.is_idle(), d.buffered());
    }
    (items, false)
}

/// Encodes a decoded frame again; for STOMP 1.2 frames whose headers are
/// escaped, decoding that gives the same frame back (apart from the
/// content-length the encoder adds).
fn check_frame(frame: &Frame, version: Option<Version>) {
    let _ = frame.get("content-length");
    let v = version.unwrap_or(Version::V1_2);
    let wire = frame.encode(v);
    let escaped = !matches!(
        frame.command,
        Command::Connect | Command::Stomp | Command::Connected
    );
    // The encoder's added content-length would be one header too many.
    if v != Version::V1_2 || !escaped || frame.headers.len() >= MAX_HEADERS {
        return;
    }
    let mut d = Decoder::new(wire.len() + 1);
    d.set_version(Version::V1_2);
    d.push(&wire);
    let again = match d.next_item() {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("re-encoded frame does not decode: {other:?}\n{wire:?}"),
    };
    let strip = |f: &Frame| {
        let mut f = f.clone();
        f.headers.retain(|(n, _)| n != "content-length");
        f
    };
    assert_eq!(strip(&again), strip(frame), "round trip of {wire:?}");
    assert_eq!(d.next_item(), Ok(None));
}

// --- SockJS ----------------------------------------------------------------

/// Reads the input as an `xhr_send` body and, when it is text, as a
/// WebSocket message. What is read must survive the server's own message
/// frame: pure printable ASCII that decodes back to the same strings.
pub fn sockjs_frame(data: &[u8]) {
    if let Ok(list) = parse_array(data) {
        round_trip(&list);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(list) = parse_ws_message(text) {
            round_trip(&list);
        }
    }
}

fn round_trip(list: &[String]) {
    let frame = messages(list);
    assert!(
        frame.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "not printable ASCII: {frame:?}"
    );
    let back = parse_array(&frame.as_bytes()[1..]).expect("own frame parses");
    assert_eq!(back, list);
}

// --- Call-detail records -----------------------------------------------------

/// Reads the input as a query string or form body and as a JSON body, and
/// validates what comes out.
pub fn cdr(data: &[u8]) {
    for params in [Params::from_urlencoded(data), Params::from_json(data)] {
        let cdr = match params.and_then(|p| Cdr::from_params(&p)) {
            Ok(cdr) => cdr,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let _ = cdr.status();
        assert_eq!(cdr.fingerprint().len(), 32);
        let _ = bizcall::call::to_kst_string(cdr.started_at);
        for name in TEXT_FIELDS {
            let _ = cdr.extra(name);
        }
        assert!(!cdr.caller.is_empty() && cdr.caller.bytes().all(|b| b.is_ascii_digit()));
        assert!(!cdr.destination.is_empty() && cdr.destination.len() <= 20);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = normalize_number(text);
    }
}

// --- X-Forwarded-For -------------------------------------------------------

const TRUSTED: [&str; 4] = ["127.0.0.1/32", "::1/128", "10.0.0.0/8", "fd00::/8"];
const PEERS: [&str; 4] = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "203.0.113.9"];

/// Parses each comma-separated hop, then resolves the client behind
/// trusted proxies with the input as `X-Forwarded-For` (one header line per
/// input line). The answer is always the peer or an address the header
/// names, and an untrusted peer is always its own answer.
pub fn forwarded_for(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for part in text.split(',') {
            let _ = parse_hop(part);
        }
    }
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", value);
        }
    }
    let named: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .filter_map(parse_hop)
        .collect();
    let trusted: Vec<IpNet> = TRUSTED.iter().map(|s| s.parse().unwrap()).collect();
    let group = AddressGroup::new(data.first().copied().unwrap_or(64));
    for peer in PEERS {
        let peer: IpAddr = peer.parse().unwrap();
        let peer = peer.to_canonical();
        let got = client_address(&trusted, peer, &headers);
        if trusted.iter().any(|net| net.contains(&peer)) {
            assert!(
                got == peer || named.contains(&got),
                "{got} is neither the peer nor in the header"
            );
        } else {
            assert_eq!(got, peer);
        }
        let _ = group.of(got);
    }
}
