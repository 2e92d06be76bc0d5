//! Tablet and admin sign-in, whatever the surface (STOMP CONNECT, the HTTP
//! API): the bearer scheme, read once, and the guard against guessing
//! tokens. Failed sign-ins are counted, logged within a budget (never the
//! token), and an address that fails too often is refused for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics as m;

/// The token of an `Authorization` value `Bearer <token>`; the scheme is
/// case-insensitive (RFC 7235) and may be followed by several spaces.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// Where a sign-in was tried, for the metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// STOMP CONNECT on the WebSocket.
    Stomp,
    /// A store endpoint of the HTTP API.
    Api,
    /// An admin endpoint.
    Admin,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Stomp => "stomp",
            Surface::Api => "api",
            Surface::Admin => "admin",
        }
    }
}

/// Failed sign-ins of one address in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// Log lines about failed sign-ins, across all addresses, per second.
const LOG_LINES_PER_SECOND: u32 = 10;
/// Addresses remembered before expired ones are swept out.
const SWEEP_ABOVE: usize = 10_000;

/// Counts failed sign-ins per client address. Once an address has failed
/// `limit` times within `window`, its sign-ins are refused until that
/// window ends, whatever token they carry. IPv6 clients count per `server.ipv6_prefix`
/// block (/64 by default: the block one subscriber usually holds).
#[derive(Debug)]
pub struct LoginGuard {
    /// Failures allowed per window; 0 turns refusing off (still counted).
    limit: u32,
    /// How addresses are grouped (IPv6 by `server.ipv6_prefix`).
    group: crate::address::AddressGroup,
    window: Duration,
    state: Mutex<GuardState>,
}

#[derive(Debug)]
struct GuardState {
    by_address: HashMap<IpAddr, Failures>,
    sweep_above: usize,
    log_second: Option<Instant>,
    log_lines: u32,
    log_dropped: u64,
}

impl LoginGuard {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::grouped(limit, window, crate::address::AddressGroup::default())
    }

    /// The same, grouping addresses by `group`.
    pub fn grouped(limit: u32, window: Duration, group: crate::address::AddressGroup) -> Self {
        LoginGuard {
            limit,
            group,
            window,
            state: Mutex::new(GuardState {
                by_address: HashMap::new(),
                sweep_above: SWEEP_ABOVE,
                log_second: None,
                log_lines: 0,
                log_dropped: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(retry_after)` when sign-ins from `client` are refused now.
    /// A refused attempt counts as a failure of its surface.
    pub fn check(&self, surface: Surface, client: IpAddr) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let state = self.lock();
        let Some(f) = state.by_address.get(&self.group.of(client)).copied() else {
            return Ok(());
        };
        let ends = f.since + self.window;
        if f.count < self.limit || now >= ends {
            return Ok(());
        }
        drop(state);
        m::auth_failure(surface.as_str());
        // Said once at warn when the address was refused (see `failed`).
        tracing::debug!(surface = surface.as_str(), %client, "sign-in refused: too many failed sign-ins");
        Err(ends - now)
    }

    /// Records a failed sign-in (`why` must never contain the token).
    pub fn failed(&self, surface: Surface, client: IpAddr, why: &str) {
        m::auth_failure(surface.as_str());
        let now = Instant::now();
        let window = self.window;
        let mut state = self.lock();
        if state.by_address.len() > state.sweep_above {
            state.by_address.retain(|_, f| now < f.since + window);
            state.sweep_above = (state.by_address.len() * 2).max(SWEEP_ABOVE);
        }
        let f = state
            .by_address
            .entry(self.group.of(client))
            .or_insert(Failures {
                since: now,
                count: 0,
            });
        if now >= f.since + window {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
        let count = f.count;
        let locked = self.limit > 0 && count == self.limit;
        // One line for the first failure of a window and one when the
        // address is refused; the rest only at debug.
        if (count == 1 || locked) && state.may_log(now) {
            if locked {
                tracing::warn!(
                    surface = surface.as_str(),
                    %client,
                    failures = count,
                    refused_for = %humantime::format_duration(window),
                    "failed sign-in: {why}; refusing this address for the rest of the window"
                );
            } else {
                tracing::warn!(surface = surface.as_str(), %client, "failed sign-in: {why}");
            }
        } else {
            tracing::debug!(surface = surface.as_str(), %client, failures = count, "failed sign-in: {why}");
        }
    }
}

impl GuardState {
    /// Whether one more line fits this second's budget; says how many were
    /// dropped when a new second starts.
    fn may_log(&mut self, now: Instant) -> bool {
        let new_second = self
            .log_second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1));
        if new_second {
            if self.log_dropped > 0 {
                tracing::warn!(
                    dropped = self.log_dropped,
                    "failed sign-in lines dropped to keep the log readable"
                );
            }
            self.log_second = Some(now);
            self.log_lines = 0;
            self.log_dropped = 0;
        }
        if self.log_lines < LOG_LINES_PER_SECOND {
            self.log_lines += 1;
            true
        } else {
            self.log_dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_window_ends() {
        let guard = LoginGuard::new(3, Duration::from_millis(300));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..2 {
            assert!(guard.check(Surface::Api, a).is_ok());
            guard.failed(Surface::Api, a, "unknown token");
        }
        assert!(guard.check(Surface::Api, a).is_ok());
        guard.failed(Surface::Stomp, a, "unknown token");
        let wait = guard.check(Surface::Api, a).unwrap_err();
        assert!(wait <= Duration::from_millis(300));
        assert!(guard.check(Surface::Stomp, a).is_err());
        // Another address is not affected.
        assert!(guard.check(Surface::Api, b).is_ok());
        std::thread::sleep(Duration::from_millis(350));
        assert!(guard.check(Surface::Api, a).is_ok());
        guard.failed(Surface::Api, a, "unknown token");
        assert!(guard.check(Surface::Api, a).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_zero_turns_refusing_off() {
        let guard = LoginGuard::new(2, Duration::from_secs(60));
        guard.failed(Surface::Api, "2001:db8:1:2::1".parse().unwrap(), "x");
        guard.failed(Surface::Api, "2001:db8:1:2::ffff".parse().unwrap(), "x");
        assert!(guard
            .check(Surface::Api, "2001:db8:1:2:abcd::9".parse().unwrap())
            .is_err());
        assert!(guard
            .check(Surface::Api, "2001:db8:1:3::1".parse().unwrap())
            .is_ok());

        let off = LoginGuard::new(0, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            off.failed(Surface::Api, a, "x");
        }
        assert!(off.check(Surface::Api, a).is_ok());
    }
}
