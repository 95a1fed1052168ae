//! The query of `/probe`: `target=URL` (required), `max_wait=D` and `connections=N`
//! (optional), percent-encoded as Prometheus sends them (`params` and `__param_*` labels).

use std::time::Duration;

use crate::client::Target;
use crate::Error;

/// One scrape's probe: what to probe and with which settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub target: String,
    pub max_wait: Option<Duration>,
    pub connections: Option<usize>,
}

impl ProbeRequest {
    /// Parse and check a query string (without the `?`).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (or the URL's own error) saying which parameter is wrong.
    pub fn from_query(query: &str) -> Result<ProbeRequest, Error> {
        let mut target = None;
        let mut max_wait = None;
        let mut connections = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name)?;
            let value = percent_decode(value)?;
            match name.as_str() {
                "target" => target = Some(value),
                "max_wait" => {
                    let d = kaprobe_sock::fmt::parse_duration(&value).map_err(|e| {
                        Error::InvalidOption(format!("max_wait={value:?} is not a duration: {e}"))
                    })?;
                    crate::client::check_duration("max_wait", d, 1_000, 86_400_000, "1s..=24h")?;
                    max_wait = Some(d);
                }
                "connections" => {
                    let n: usize = value.parse().map_err(|_| {
                        Error::InvalidOption(format!(
                            "connections={value:?} is not a number: use 2..=1000"
                        ))
                    })?;
                    crate::client::check_count("connections", n, 2..=1000)?;
                    connections = Some(n);
                }
                // Prometheus may add its own parameters; unknown ones are ignored as the
                // blackbox exporter does.
                _ => {}
            }
        }
        let Some(target) = target.filter(|t| !t.trim().is_empty()) else {
            return Err(Error::InvalidOption(
                "no target: use /probe?target=http://HOST:PORT/PATH".into(),
            ));
        };
        Target::parse(&target)?;
        Ok(ProbeRequest {
            target,
            max_wait,
            connections,
        })
    }

    /// Scrapes with the same key share one probe.
    pub fn key(&self) -> String {
        format!(
            "{} max_wait={:?} connections={:?}",
            self.target, self.max_wait, self.connections
        )
    }
}

/// Decode `%XX` escapes and `+` (a space in a query). Bytes that do not form UTF-8 are an
/// error, as is a `%` not followed by two hex digits.
///
/// # Errors
/// [`Error::InvalidOption`] naming the bad escape.
pub fn percent_decode(s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                let Some(v) = hex else {
                    let bad: String = s[i..].chars().take(3).collect();
                    return Err(Error::InvalidOption(format!(
                        "{bad:?} in the query is not a percent escape (%XX)"
                    )));
                };
                out.push(v);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::InvalidOption(format!("{s:?} does not decode to UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_prometheus_sends() {
        let r = ProbeRequest::from_query(
            "target=http%3A%2F%2F127.0.0.1%3A8080%2Fa%3Fb%3Dc&max_wait=90s&connections=10&module=x",
        )
        .expect("valid");
        assert_eq!(r.target, "http://127.0.0.1:8080/a?b=c");
        assert_eq!(r.max_wait, Some(Duration::from_secs(90)));
        assert_eq!(r.connections, Some(10));
        let plain = ProbeRequest::from_query("target=http://127.0.0.1:8080/").expect("plain");
        assert_eq!(plain.max_wait, None);
        assert_ne!(plain.key(), r.key());
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (q, says) in [
            ("", "no target"),
            ("target=", "no target"),
            ("target=%zz", "not a percent escape"),
            ("target=%", "not a percent escape"),
            ("target=%ff", "UTF-8"),
            ("target=http://127.0.0.1/&max_wait=0s", "max_wait"),
            ("target=http://127.0.0.1/&max_wait=soon", "max_wait"),
            ("target=http://127.0.0.1/&connections=1", "connections"),
            ("target=http://127.0.0.1/&connections=-1", "connections"),
        ] {
            let e = ProbeRequest::from_query(q).expect_err(q).to_string();
            assert!(e.contains(says), "{q}: {e}");
        }
        assert!(ProbeRequest::from_query("target=ftp://x/").is_err());
    }

    #[test]
    fn decode_never_panics_on_short_or_multibyte_input() {
        for s in ["%", "%4", "%4g", "é%", "%é1", "%+1", "%2"] {
            assert!(percent_decode(s).is_err(), "{s}");
        }
        assert_eq!(percent_decode("a+b%20c").ok().as_deref(), Some("a b c"));
    }
}
