//! Which network addresses a server-side fetch (an input URL, a webhook) may reach: public
//! unicast only, unless the operator allows private ones (`VIPAVATAR_FETCH_ALLOW_PRIVATE`) or
//! lists networks or host names (`VIPAVATAR_FETCH_ALLOW`). Checked on every resolved address,
//! so a name that resolves to loopback, or a redirect to a private address, is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allow-list entry: a network (`10.1.0.0/16`, `127.0.0.1`) or a host name.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Net(IpAddr, u8),
    Host(String),
}

impl Allowed {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    Some(b) => {
                        b.parse::<u8>().ok().filter(|b| *b <= max).ok_or(format!("bad prefix length in {s:?}"))?
                    }
                    None => max,
                };
                Ok(Self::Net(ip, bits))
            }
            Err(_)
                if bits.is_none()
                    && !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)) =>
            {
                Ok(Self::Host(s.to_ascii_lowercase()))
            }
            Err(_) => Err(format!("{s:?} is neither an address, a network (a.b.c.d/n) nor a host name")),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::Net(IpAddr::V4(n), bits), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            (Self::Net(IpAddr::V6(n), bits), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (full, rest) = ((bits / 8) as usize, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// The operator's policy.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow_private: bool,
    pub allow: Vec<Allowed>,
}

impl AddressPolicy {
    /// Whether `host` (as written in the URL, lower-case) may be reached at `ip`; `Err` says why not.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if self.allow.iter().any(|a| matches!(a, Allowed::Host(h) if *h == host) || a.contains(ip)) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(why) => Err(format!("{host} resolves to {ip}, a {why} address")),
            None => Ok(()),
        }
    }
}

/// Why `ip` is not a public unicast address, if it is not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let why = match o {
        [169, 254, 169, 254] => "cloud metadata",
        [0, ..] => "\"this network\"",
        [127, ..] => "loopback",
        [10, ..] | [192, 168, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT",
        [169, 254, ..] => "link-local",
        [192, 0, 0, _] => "IETF protocol assignment",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    };
    Some(why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let why = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "cloud metadata"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if s[0..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        "IPv4-mapped"
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        "IPv4-compatible"
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        "NAT64"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        "documentation"
    } else {
        return None;
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_forbidden_public_ones_not() {
        for bad in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::7f00:1",
            "ff02::1",
        ] {
            assert!(forbidden(ip(bad)).is_some(), "{bad} must be forbidden");
        }
        for good in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "2a00:1450::1"] {
            assert_eq!(forbidden(ip(good)), None, "{good} is public");
        }
        assert_eq!(forbidden(ip("169.254.169.254")), Some("cloud metadata"));
    }

    #[test]
    fn the_operator_can_allow_private_networks_or_hosts() {
        let policy = AddressPolicy { allow_private: false, allow: vec![] };
        assert!(policy.check("localhost", ip("127.0.0.1")).unwrap_err().contains("loopback"));
        let policy = AddressPolicy {
            allow_private: false,
            allow: vec![Allowed::parse("10.1.0.0/16").unwrap(), Allowed::parse("files.internal").unwrap()],
        };
        assert!(policy.check("a", ip("10.1.2.3")).is_ok());
        assert!(policy.check("a", ip("10.2.0.1")).is_err());
        assert!(policy.check("files.internal", ip("192.168.0.9")).is_ok());
        assert!(AddressPolicy { allow_private: true, allow: vec![] }.check("x", ip("127.0.0.1")).is_ok());
        assert_eq!(Allowed::parse("::1").unwrap(), Allowed::Net(ip("::1"), 128));
        for bad in ["10.0.0.0/33", "a b", "", "1.2.3.4/x"] {
            assert!(Allowed::parse(bad).is_err(), "{bad}");
        }
    }
}
