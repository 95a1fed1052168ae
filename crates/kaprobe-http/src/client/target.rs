//! The URL a probe is aimed at: `http://host[:port][/path]` or `https://...`.
//!
//! A deliberately small parser: kaprobe only needs the scheme, the host (name, IPv4 or
//! bracketed IPv6), the port and the request target. Anything else is refused with a reason.

use crate::Error;

/// Plain HTTP or HTTP over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    pub scheme: Scheme,
    /// Host name or address literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl Target {
    /// Parse a URL; errors say what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty; give e.g. http://127.0.0.1:8080/"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains spaces or control characters"));
        }
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(bad(
                "it has no scheme; write http://HOST[:PORT][/PATH] or https://...",
            ));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(Error::UnsupportedScheme {
                    url: url.to_string(),
                    scheme: other.to_string(),
                })
            }
        };
        // Drop a fragment: it never goes on the wire.
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(bad("user:password@ in URLs is not supported"));
        }
        if authority.is_empty() {
            return Err(bad("it has no host"));
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let Some((h, tail)) = after.split_once(']') else {
                return Err(bad(
                    "an IPv6 address opened with '[' is never closed with ']'",
                ));
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(&format!("'{h}' is not an IPv6 address")));
            }
            let port = match tail {
                "" => None,
                t => match t.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return Err(bad("unexpected text after the IPv6 address")),
                },
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if !host.contains(':')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(bad(&format!(
                "'{host}' is not a valid host name (letters, digits, '-', '.')"
            )));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(bad(&format!("port '{p}' is not a number in 1..=65535")))
                }
                Ok(n) => n,
            },
        };
        Ok(Self {
            url: url.to_string(),
            scheme,
            host,
            port,
            path,
        })
    }

    /// The value of the `Host` header.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// A sibling path that almost certainly does not exist (used to tell pipelined answers
    /// apart by their status).
    pub fn missing_path(&self) -> String {
        "/.kaprobe-pipelining-check-4f1c".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_parse_with_default_ports_and_paths() {
        let t = Target::parse("http://example.test").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("example.test", 80, "/")
        );
        let t = Target::parse("HTTPS://127.0.0.1:8443/a/b?c=d#frag").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8443, "/a/b?c=d")
        );
        assert_eq!(t.host_header(), "127.0.0.1:8443");
        let t = Target::parse("http://h?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
    }

    #[test]
    fn ipv6_literals_keep_brackets_in_host_header_only() {
        let t = Target::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.host_header(), "[::1]:8080");
        assert!(Target::parse("http://[::1/").is_err());
        assert!(Target::parse("http://[zz]/").is_err());
    }

    #[test]
    fn bad_urls_are_rejected_with_a_reason() {
        for u in [
            "",
            "127.0.0.1:80",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:abc/",
            "http://u:p@h/",
            "http://h h/",
            "http://h%/",
        ] {
            assert!(
                matches!(Target::parse(u), Err(Error::BadUrl { .. })),
                "{u:?} should be a bad URL"
            );
        }
        assert!(matches!(
            Target::parse("ftp://h/"),
            Err(Error::UnsupportedScheme { .. })
        ));
    }
}
