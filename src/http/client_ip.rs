//! The client's address behind trusted proxies.
//!
//! A proxy appends the address it received a request from to
//! `X-Forwarded-For`, so only the right end of the list was written by
//! machines we trust; anything to the left may be whatever the client sent.
//! The list is therefore walked from the right, skipping the addresses of
//! trusted proxies, and the first address that is not one is the client.
//! The `Forwarded` header (RFC 7239) is ignored: the nginx template sends
//! `X-Forwarded-For`, and believing two headers would give a client two
//! places to forge.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::app::App;

/// The request's client address (see `client_address`), as an extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    App: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = App::from_ref(state);
        // Without connection info (a router driven without a socket) the
        // request is taken to come from this machine.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        Ok(ClientAddr(client_address(
            &app.config.server.trusted_proxies,
            peer,
            &parts.headers,
        )))
    }
}

/// Most `X-Forwarded-For` hops looked at; a longer chain of trusted proxies
/// is not a real deployment, and the walk stays bounded.
const MAX_HOPS: usize = 32;

/// The client's address: the socket peer, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` hop that is not a trusted proxy.
///
/// A hop that is not an address (garbage, `unknown`, an empty entry) ends
/// the walk: the client is then the last trusted hop reached, which is never
/// an address the client chose.
pub fn client_address(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    // Several header lines form one list, in order (RFC 9110 section 5.3).
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    let hops = lines.iter().rev().flat_map(|line| line.rsplit(','));
    for hop in hops.take(MAX_HOPS) {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5678`, with spaces around.
/// IPv4-mapped IPv6 addresses become IPv4, so that `10.0.0.0/8` matches them.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches(|c| c == ' ' || c == '\t');
    if hop.is_empty() {
        return None;
    }
    let ip = if let Ok(ip) = hop.parse::<IpAddr>() {
        ip
    } else if let Ok(sock) = hop.parse::<SocketAddr>() {
        sock.ip()
    } else {
        hop.strip_prefix('[')?
            .strip_suffix(']')?
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .ok()?
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(lines: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append("x-forwarded-for", HeaderValue::from_bytes(line).unwrap());
        }
        h
    }

    fn resolve(trusted: &[&str], peer: &str, lines: &[&[u8]]) -> IpAddr {
        client_address(&nets(trusted), ip(peer), &headers(lines))
    }

    const PROXY: &[&str] = &["127.0.0.1/32", "::1/128"];

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(
            resolve(PROXY, "203.0.113.9", &[b"10.1.2.3"]),
            ip("203.0.113.9")
        );
        assert_eq!(resolve(&[], "127.0.0.1", &[b"10.1.2.3"]), ip("127.0.0.1"));
    }

    #[test]
    fn one_entry_from_a_trusted_proxy_is_the_client() {
        assert_eq!(resolve(PROXY, "127.0.0.1", &[b"10.1.2.3"]), ip("10.1.2.3"));
    }

    #[test]
    fn a_forged_left_part_is_never_believed() {
        // nginx appends the real peer after what the client sent.
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"10.1.2.3, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"10.1.2.3,10.9.9.9,198.51.100.7"]),
            ip("198.51.100.7")
        );
        // A forged trusted address on the left is skipped like any other.
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"127.0.0.1, 198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let trusted = &["127.0.0.1/32", "10.0.0.0/8"];
        assert_eq!(
            resolve(trusted, "127.0.0.1", &[b"1.1.1.1, 198.51.100.7, 10.0.0.2"]),
            ip("198.51.100.7")
        );
        // Every hop trusted: the left-most one reached.
        assert_eq!(
            resolve(trusted, "127.0.0.1", &[b"10.0.0.3, 10.0.0.2"]),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn several_header_lines_are_one_list() {
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"10.1.2.3", b"198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"198.51.100.7, 127.0.0.1", b"::1"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn spaces_tabs_and_empty_entries() {
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"  10.1.2.3 ,\t198.51.100.7\t"]),
            ip("198.51.100.7")
        );
        // An empty entry stops the walk at the proxy itself.
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"10.1.2.3, "]),
            ip("127.0.0.1")
        );
        assert_eq!(resolve(PROXY, "127.0.0.1", &[b""]), ip("127.0.0.1"));
        assert_eq!(resolve(PROXY, "127.0.0.1", &[b",,,"]), ip("127.0.0.1"));
        assert_eq!(resolve(PROXY, "127.0.0.1", &[]), ip("127.0.0.1"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        for junk in [
            &b"10.1.2.3 garbage"[..],
            b"unknown",
            b"10.1.2.3, not-an-ip",
            b"10.1.2.3; 10.1.2.4",
            b"999.1.2.3",
            b"_hidden",
            b"\xff\xfe",
            b"10.1.2.3:99999",
            b"[10.1.2.3]",
        ] {
            assert_eq!(
                resolve(PROXY, "127.0.0.1", &[junk]),
                ip("127.0.0.1"),
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
        // Garbage left of a real hop is never reached.
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"garbage, 198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ports_brackets_and_ipv6() {
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"198.51.100.7:5678"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"2001:db8::7"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[b"[2001:db8::7]"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve(PROXY, "::1", &[b"10.1.2.3, [2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        // An IPv4-mapped address is the IPv4 address, on both sides.
        assert_eq!(
            resolve(PROXY, "::ffff:127.0.0.1", &[b"::ffff:10.1.2.3"]),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn a_long_chain_is_cut() {
        let long = vec!["127.0.0.1"; 1000].join(",");
        let mut chain = String::from("10.1.2.3,");
        chain.push_str(&long);
        assert_eq!(
            resolve(PROXY, "127.0.0.1", &[chain.as_bytes()]),
            ip("127.0.0.1")
        );
    }
}
