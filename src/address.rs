//! Client addresses as the per-address caps count them.

use std::net::IpAddr;

/// How client addresses are grouped for per-address caps: IPv4 addresses
/// alone, IPv6 addresses by their first `ipv6_prefix` bits (`server.ipv6_prefix`,
/// 64 by default: the block one subscriber is usually given, so a client
/// cannot escape a cap by walking its own /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressGroup {
    ipv6_prefix: u8,
}

impl AddressGroup {
    /// `ipv6_prefix` is clamped to 0..=128.
    pub fn new(ipv6_prefix: u8) -> Self {
        AddressGroup {
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    /// The key a cap counts `ip` under.
    pub fn of(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let keep = u32::from(self.ipv6_prefix);
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }
}

impl Default for AddressGroup {
    fn default() -> Self {
        AddressGroup::new(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_group_by_prefix_ipv4_alone() {
        let g = AddressGroup::new(64);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(g.of(a), g.of(b));
        assert_ne!(g.of(a), g.of(c));
        assert_eq!(g.of(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(g.of(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(g.of(mapped), v4);
        assert_eq!(AddressGroup::new(128).of(a), a);
        assert_eq!(AddressGroup::new(0).of(a), "::".parse::<IpAddr>().unwrap());
        assert_eq!(AddressGroup::new(200).of(a), a);
        assert_eq!(
            AddressGroup::new(48).of(c),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }
}
