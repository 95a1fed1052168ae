//! Address and prefix filters for live sockets, as `ss` writes them after `src` and `dst`:
//! `10.0.0.0/8`, `10.0.0.5`, `10.0.0.5:443`, `10.0.0.0/8:443`, `::1`, `fd00::/8`,
//! `[::1]:443`, `[fd00::]/8:443`, `:443` (any address, this port).
//!
//! An IPv4 prefix also matches IPv4-mapped IPv6 addresses (`::ffff:10.0.0.5`), as the
//! kernel's own sock_diag filter does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

/// One `ADDR[/LEN][:PORT]` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrMatch {
    /// The network (host bits beyond `len` are ignored), or none for `:PORT` alone.
    pub net: Option<IpAddr>,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
    /// Only this port, when given.
    pub port: Option<u16>,
}

const FORMS: &str = "use ADDR, ADDR/LEN, ADDR:PORT, ADDR/LEN:PORT, [IPv6]:PORT or :PORT \
                     (e.g. 10.0.0.0/8, 127.0.0.1:8080, [::1]:443)";

impl AddrMatch {
    /// Parse `s` as given to `flag` (`--src`, `--dst`); errors name the flag, the value and
    /// what is wrong with it (a prefix length out of range, a port out of range, ...).
    pub fn parse(flag: &str, s: &str) -> Result<Self> {
        let bad = |why: String| Error::Invalid {
            flag: flag.into(),
            value: s.into(),
            reason: why,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad(FORMS.into()));
        }
        // Split off the port: `[v6]...:P`, `v4...:P`, `:P`; a bare IPv6 address has no port.
        let (addr_part, port) = if let Some(rest) = t.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(bad(format!("'[' is never closed with ']': {FORMS}")));
            };
            // `[fd00::]/8:443` or `[fd00::/8]:443`
            let (prefix, tail) = match after.strip_prefix('/') {
                Some(a) => match a.split_once(':') {
                    Some((l, p)) => (format!("{inside}/{l}"), Some(p)),
                    None => (format!("{inside}/{a}"), None),
                },
                None if after.is_empty() => (inside.to_string(), None),
                None => match after.strip_prefix(':') {
                    Some(p) => (inside.to_string(), Some(p)),
                    None => return Err(bad(format!("unexpected text after ']': {FORMS}"))),
                },
            };
            (prefix, tail)
        } else if t.matches(':').count() == 1 {
            let (a, p) = t.split_once(':').unwrap_or((t, ""));
            (a.to_string(), Some(p))
        } else {
            (t.to_string(), None)
        };
        let port = match port {
            None => None,
            Some("*" | "") if !addr_part.is_empty() => None,
            Some(p) => Some(
                parse_port(p)
                    .ok_or_else(|| bad(format!("port '{p}' is not a TCP port (1..=65535)")))?,
            ),
        };
        if addr_part.is_empty() || addr_part == "*" {
            if port.is_none() {
                return Err(bad(FORMS.into()));
            }
            return Ok(Self {
                net: None,
                len: 0,
                port,
            });
        }
        let (ip, len) = match addr_part.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (addr_part.as_str(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(format!("'{ip}' is not an IPv4 or IPv6 address: {FORMS}")))?;
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(bad(format!(
                        "prefix length '/{l}' is out of range: an {} prefix is /0../{max}",
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )))
                }
            },
        };
        Ok(Self {
            net: Some(ip),
            len,
            port,
        })
    }

    /// Whether `a` is inside the prefix (and has the port, when one was given).
    pub fn matches(&self, a: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != a.port()) {
            return false;
        }
        let Some(net) = self.net else {
            return true;
        };
        match (net, a.ip()) {
            (IpAddr::V4(n), IpAddr::V4(x)) => v4_in(n, self.len, x),
            (IpAddr::V4(n), IpAddr::V6(x)) => {
                x.to_ipv4_mapped().is_some_and(|x| v4_in(n, self.len, x))
            }
            (IpAddr::V6(n), IpAddr::V6(x)) => v6_in(n, self.len, x),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

fn v4_in(net: Ipv4Addr, len: u8, x: Ipv4Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(net) & mask == u32::from(x) & mask
}

fn v6_in(net: Ipv6Addr, len: u8, x: Ipv6Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(net) & mask == u128::from(x) & mask
}

impl std::fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.net, self.port) {
            (None, Some(p)) => write!(f, ":{p}"),
            (None, None) => f.write_str("*"),
            (Some(IpAddr::V4(a)), p) => {
                write!(f, "{a}/{}", self.len)?;
                p.map_or(Ok(()), |p| write!(f, ":{p}"))
            }
            (Some(IpAddr::V6(a)), p) => {
                write!(f, "[{a}]/{}", self.len)?;
                p.map_or(Ok(()), |p| write!(f, ":{p}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(s: &str) -> AddrMatch {
        AddrMatch::parse("--dst", s).unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_prefixes_and_ports_match_like_ss() {
        assert!(m("10.0.0.0/8").matches(sa("10.200.1.2:443")));
        assert!(!m("10.0.0.0/8").matches(sa("11.0.0.1:443")));
        assert!(m("10.0.0.0/8:443").matches(sa("10.1.1.1:443")));
        assert!(!m("10.0.0.0/8:443").matches(sa("10.1.1.1:80")));
        assert!(m("127.0.0.1").matches(sa("127.0.0.1:1")));
        assert!(!m("127.0.0.1").matches(sa("127.0.0.2:1")));
        assert!(m("127.0.0.1:8080").matches(sa("127.0.0.1:8080")));
        assert!(m("0.0.0.0/0").matches(sa("1.2.3.4:5")));
        assert!(
            m("10.0.0.0/8").matches(sa("[::ffff:10.0.0.1]:1")),
            "v4-mapped"
        );
        assert!(!m("10.0.0.0/8").matches(sa("[::1]:1")));
        assert!(m(":443").matches(sa("[::1]:443")) && m(":443").matches(sa("1.1.1.1:443")));
        assert!(!m(":443").matches(sa("1.1.1.1:80")));
    }

    #[test]
    fn ipv6_prefixes_with_and_without_brackets() {
        assert!(m("::1").matches(sa("[::1]:9")));
        assert!(m("fd00::/8").matches(sa("[fd12::1]:9")));
        assert!(!m("fd00::/8").matches(sa("[fe80::1]:9")));
        assert!(m("[::1]:443").matches(sa("[::1]:443")));
        assert!(!m("[::1]:443").matches(sa("[::1]:80")));
        assert!(m("[fd00::]/8:443").matches(sa("[fd00::5]:443")));
        assert!(m("[fd00::/8]:443").matches(sa("[fd00::5]:443")));
        assert!(!m("::1").matches(sa("127.0.0.1:9")));
        assert_eq!(m("[fd00::]/8:443").to_string(), "[fd00::]/8:443");
    }

    #[test]
    fn bad_prefixes_name_the_flag_the_value_and_the_range() {
        for (bad, needle) in [
            ("10.0.0.0/33", "/0../32"),
            ("::1/129", "/0../128"),
            ("10.0.0.0/x", "'/x'"),
            ("10.0.0.300", "not an IPv4 or IPv6"),
            ("10.0.0.1:0", "1..=65535"),
            ("10.0.0.1:70000", "1..=65535"),
            ("[::1", "never closed"),
            ("", "ADDR/LEN"),
            (":", "1..=65535"),
            ("host.example", "not an IPv4"),
        ] {
            let e = AddrMatch::parse("--dst", bad).unwrap_err().to_string();
            assert!(e.contains("--dst") && e.contains(needle), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
