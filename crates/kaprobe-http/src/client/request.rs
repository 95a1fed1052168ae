//! What a user adds to the requests and connections of `probe` and `race`, the way curl
//! takes it: `-H 'Name: value'`, `-X METHOD`, `--data BODY` / `--data @FILE`,
//! `--resolve HOST:PORT:ADDR` and `--connect-to HOST:PORT:HOST2:PORT2`.
//!
//! Each value is parsed into a typed option here; a bad one is a one-line
//! [`Error::InvalidOption`] naming the flag, the value and what would do. The semantics follow
//! curl's manual:
//! - `-H 'Name: value'` adds a field; a name kaprobe sends itself (`Host`, `User-Agent`,
//!   `Accept`) is replaced by the user's, in its place for `Host`; `-H 'Name:'` removes such
//!   a field; `-H 'Name;'` sends the field with an empty value.
//! - `--data` makes the request a POST (unless `-X` says otherwise) with
//!   `Content-Type: application/x-www-form-urlencoded` (unless `-H` gives one) and a
//!   `Content-Length`. `--data @FILE` reads FILE (`-` is stdin) and, like curl's `-d`, drops
//!   carriage returns and newlines from it; `--data-binary @FILE` keeps them.
//! - `-X METHOD` changes the method word only.
//! - `--resolve HOST:PORT:ADDR[,ADDR]...` answers HOST:PORT with ADDR instead of asking the
//!   resolver; `--connect-to HOST:PORT:HOST2:PORT2` connects to HOST2:PORT2 whenever the
//!   URL's authority is HOST:PORT (an empty part matches anything or keeps the original).
//!   The Host header and the TLS server name stay the URL's: this pins one node of a load
//!   balancer or one ingress backend while naming the virtual host.

use std::net::{IpAddr, SocketAddr};

use crate::Error;

/// One `--resolve` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    /// Host name as in the URL (lower case), or `*` for any.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
}

/// One `--connect-to` entry; `None` parts match anything (`from_*`) or keep the original
/// (`to_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    pub from_host: Option<String>,
    pub from_port: Option<u16>,
    pub to_host: Option<String>,
    pub to_port: Option<u16>,
}

/// The request and connection options a user gave (all empty by default: kaprobe's own
/// requests, the URL's address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `-X`: the method word.
    pub method: Option<String>,
    /// `-H`, in the order given. An empty value with `remove` set removes a field kaprobe
    /// would send.
    pub headers: Vec<Header>,
    /// `--data`: the body.
    pub body: Option<Vec<u8>>,
    pub resolve: Vec<Resolve>,
    pub connect_to: Vec<ConnectTo>,
}

/// One `-H` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
    /// `Name:` with nothing after it: do not send this field.
    pub remove: bool,
}

fn invalid(flag: &str, value: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidOption(format!("{flag} '{}': {why}", value.escape_debug()))
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Fields kaprobe frames the messages with: a user's value would desynchronise it.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

impl Header {
    /// Parse `Name: value`, `Name:` (remove) or `Name;` (empty value).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, value, remove) = if let Some((n, v)) = s.split_once(':') {
            let v = v.trim_matches([' ', '\t']);
            (n, v, v.is_empty())
        } else if let Some(n) = s.strip_suffix(';') {
            (n, "", false)
        } else {
            return Err(invalid(
                "-H",
                s,
                "write 'Name: value' (or 'Name:' to drop a field kaprobe sends, 'Name;' for an empty value)",
            ));
        };
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(invalid(
                "-H",
                s,
                format!(
                    "'{}' is not a header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)",
                    name.escape_debug()
                ),
            ));
        }
        if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(invalid("-H", s, "a header value cannot hold CR, LF or NUL"));
        }
        if FRAMING.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                "-H",
                s,
                format!(
                    "kaprobe sets {name} itself (the measurement depends on it): use --data for a body"
                ),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            value: value.to_string(),
            remove,
        })
    }
}

/// Parse `-X METHOD`: an RFC 9110 token.
pub fn parse_method(s: &str) -> Result<String, Error> {
    if s.is_empty() || !s.chars().all(is_tchar) {
        return Err(invalid(
            "-X",
            s,
            "a method is one word of letters, digits and !#$%&'*+-.^_`|~ (e.g. GET, POST, PUT)",
        ));
    }
    Ok(s.to_string())
}

/// Parse a `--data` value: the text itself, or `@FILE` (`@-` for stdin) with carriage
/// returns and newlines dropped as curl's `-d` does (`binary`: kept, as `--data-binary`).
pub fn parse_data(flag: &str, s: &str, binary: bool) -> Result<Vec<u8>, Error> {
    let Some(path) = s.strip_prefix('@') else {
        return Ok(s.as_bytes().to_vec());
    };
    let bytes = if path == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .map_err(|e| invalid(flag, s, format!("cannot read stdin: {e}")))?;
        v
    } else {
        std::fs::read(path).map_err(|e| {
            Error::InvalidOption(format!(
                "{flag} '{s}': cannot read {path}: {}",
                kaprobe_sock::fmt::os_error(&e)
            ))
        })?
    };
    Ok(if binary {
        bytes
    } else {
        bytes
            .into_iter()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect()
    })
}

fn parse_port(flag: &str, whole: &str, p: &str) -> Result<u16, Error> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            flag,
            whole,
            format!("'{p}' is not a TCP port (1..=65535)"),
        )),
    }
}

/// Split `a:b:c` on colons outside `[...]`.
fn split_colons(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unbracket(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h)
}

impl Resolve {
    /// Parse `HOST:PORT:ADDR[,ADDR]...` (IPv6 addresses in brackets; `*` for any host).
    pub fn parse(s: &str) -> Result<Self, Error> {
        const FLAG: &str = "--resolve";
        let form = "write HOST:PORT:ADDR (e.g. example.com:443:127.0.0.1 or example.com:443:[::1])";
        // HOST:PORT: then the rest is the address list (bare IPv6 addresses contain colons).
        let mut it = s.splitn(3, ':');
        let (Some(host), Some(port), Some(list)) = (it.next(), it.next(), it.next()) else {
            return Err(invalid(FLAG, s, form));
        };
        if host.is_empty() || list.is_empty() {
            return Err(invalid(FLAG, s, form));
        }
        let port = parse_port(FLAG, s, port)?;
        let mut addrs = Vec::new();
        for a in list.split(',') {
            let a = a.trim();
            let ip: IpAddr = unbracket(a)
                .parse()
                .map_err(|_| invalid(FLAG, s, format!("'{a}' is not an IP address ({form})")))?;
            addrs.push(ip);
        }
        Ok(Self {
            host: unbracket(host).to_ascii_lowercase(),
            port,
            addrs,
        })
    }
}

impl ConnectTo {
    /// Parse `HOST:PORT:HOST2:PORT2`; any part may be empty; IPv6 addresses in brackets.
    pub fn parse(s: &str) -> Result<Self, Error> {
        const FLAG: &str = "--connect-to";
        let parts = split_colons(s);
        let [h1, p1, h2, p2] = parts.as_slice() else {
            return Err(invalid(
                FLAG,
                s,
                "write HOST:PORT:HOST2:PORT2 (e.g. example.com:443:127.0.0.1:8443; empty parts match any or keep the URL's; IPv6 in brackets)",
            ));
        };
        let host = |h: &str| -> Result<Option<String>, Error> {
            if h.is_empty() {
                return Ok(None);
            }
            let bare = unbracket(h);
            if h.starts_with('[') && bare.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(FLAG, s, format!("'{h}' is not an IPv6 address")));
            }
            if !h.starts_with('[')
                && !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
            {
                return Err(invalid(
                    FLAG,
                    s,
                    format!("'{h}' is not a host name or address"),
                ));
            }
            Ok(Some(bare.to_ascii_lowercase()))
        };
        let port = |p: &str| -> Result<Option<u16>, Error> {
            if p.is_empty() {
                Ok(None)
            } else {
                parse_port(FLAG, s, p).map(Some)
            }
        };
        Ok(Self {
            from_host: host(h1)?,
            from_port: port(p1)?,
            to_host: host(h2)?,
            to_port: port(p2)?,
        })
    }
}

/// Where a connection goes: a host to resolve and a port, or addresses given by
/// `--resolve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Lookup(String, u16),
    Pinned(Vec<SocketAddr>),
}

impl RequestOptions {
    /// The method to send: `-X`, else POST when there is a body, else `default`.
    pub fn method_or(&self, default: &str) -> String {
        match (&self.method, &self.body) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) => "POST".into(),
            (None, None) => default.to_string(),
        }
    }

    /// Where to connect for the URL's `host` and `port`: the first matching
    /// `--connect-to` rewrites them, then the first matching `--resolve` pins the address.
    pub fn route(&self, host: &str, port: u16) -> Route {
        let host_l = host.to_ascii_lowercase();
        let (mut h, mut p) = (host_l, port);
        if let Some(c) = self.connect_to.iter().find(|c| {
            c.from_host.as_deref().is_none_or(|x| x == h) && c.from_port.is_none_or(|x| x == p)
        }) {
            if let Some(x) = &c.to_host {
                h.clone_from(x);
            }
            if let Some(x) = c.to_port {
                p = x;
            }
        }
        match self
            .resolve
            .iter()
            .find(|r| (r.host == h || r.host == "*") && r.port == p)
        {
            Some(r) => Route::Pinned(r.addrs.iter().map(|a| SocketAddr::new(*a, p)).collect()),
            None => Route::Lookup(h, p),
        }
    }

    /// Apply `-H` to the fields kaprobe would send (`Host` first, then `fields`), returning
    /// the final list: replaced fields keep their place (`Host` first), removed ones go,
    /// the rest of the user's follow in order; with a body and no user Content-Type,
    /// `Content-Type: application/x-www-form-urlencoded` ends the list.
    pub fn fields<'a>(
        &'a self,
        host: &'a str,
        fields: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let user = |name: &str| {
            self.headers
                .iter()
                .rev()
                .find(|h| h.name.eq_ignore_ascii_case(name))
        };
        let mut out: Vec<(&str, &str)> = Vec::with_capacity(fields.len() + self.headers.len() + 2);
        let mut used = vec![false; self.headers.len()];
        let mut place =
            |name: &'a str, ours: &'a str, out: &mut Vec<(&'a str, &'a str)>| match user(name) {
                None => out.push((name, ours)),
                Some(h) => {
                    for (u, x) in used.iter_mut().zip(&self.headers) {
                        if x.name.eq_ignore_ascii_case(name) {
                            *u = true;
                        }
                    }
                    if !h.remove {
                        out.push((h.name.as_str(), h.value.as_str()));
                    }
                }
            };
        place("Host", host, &mut out);
        for (n, v) in fields {
            place(n, v, &mut out);
        }
        for (h, u) in self.headers.iter().zip(&used) {
            if !*u && !h.remove {
                out.push((h.name.as_str(), h.value.as_str()));
            }
        }
        if self.body.is_some()
            && !self
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-type"))
        {
            out.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts(h: &[&str]) -> RequestOptions {
        RequestOptions {
            headers: h.iter().map(|s| Header::parse(s).unwrap()).collect(),
            ..RequestOptions::default()
        }
    }

    #[test]
    fn headers_replace_remove_and_add_like_curl() {
        let o = opts(&[
            "Host: api.internal",
            "X-A: 1",
            "Accept:",
            "x-b;",
            "user-agent: t",
        ]);
        let f = o.fields(
            "h:80",
            &[
                ("User-Agent", "kaprobe/1"),
                ("Accept", "*/*"),
                ("Connection", "keep-alive"),
            ],
        );
        assert_eq!(
            f,
            vec![
                ("Host", "api.internal"),
                ("user-agent", "t"),
                ("Connection", "keep-alive"),
                ("X-A", "1"),
                ("x-b", ""),
            ]
        );
        let plain = RequestOptions::default();
        assert_eq!(
            plain.fields("h", &[("Accept", "*/*")]),
            vec![("Host", "h"), ("Accept", "*/*")]
        );
        let mut body = opts(&[]);
        body.body = Some(b"a=1".to_vec());
        assert_eq!(body.method_or("GET"), "POST");
        assert_eq!(
            body.fields("h", &[]).last(),
            Some(&("Content-Type", "application/x-www-form-urlencoded"))
        );
        body.method = Some("PUT".into());
        assert_eq!(body.method_or("GET"), "PUT");
    }

    #[test]
    fn bad_headers_and_methods_are_one_line_errors() {
        for (bad, needle) in [
            ("NoColon", "Name: value"),
            ("Bad Name: x", "not a header name"),
            (": x", "not a header name"),
            ("Content-Length: 5", "kaprobe sets"),
            ("connection: close", "kaprobe sets"),
            ("X: a\nb", "CR, LF"),
        ] {
            let e = Header::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("-H") && e.contains(needle) && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        assert!(parse_method("GET").is_ok());
        let e = parse_method("GE T").unwrap_err().to_string();
        assert!(e.contains("-X") && e.contains("one word"), "{e}");
        assert!(parse_method("").is_err());
    }

    #[test]
    fn resolve_and_connect_to_route_like_curl() {
        let mut o = RequestOptions::default();
        o.resolve
            .push(Resolve::parse("example.test:8080:127.0.0.2,[::1]").unwrap());
        assert_eq!(
            o.route("Example.Test", 8080),
            Route::Pinned(vec![
                "127.0.0.2:8080".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ])
        );
        assert_eq!(
            o.route("example.test", 80),
            Route::Lookup("example.test".into(), 80)
        );
        o.connect_to
            .push(ConnectTo::parse("example.test:443:127.0.0.3:9443").unwrap());
        assert_eq!(
            o.route("example.test", 443),
            Route::Lookup("127.0.0.3".into(), 9443)
        );
        let any = ConnectTo::parse("::[::1]:").unwrap();
        assert_eq!(any.to_host.as_deref(), Some("::1"));
        let o2 = RequestOptions {
            connect_to: vec![any],
            resolve: vec![Resolve::parse("*:9:10.0.0.1").unwrap()],
            ..Default::default()
        };
        assert_eq!(
            o2.route("a", 9),
            Route::Pinned(vec!["10.0.0.1:9".parse().unwrap()])
        );
        assert_eq!(
            Resolve::parse("h:1:fd00::1").unwrap().addrs[0],
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        for (bad, needle) in [
            ("h:80", "HOST:PORT:ADDR"),
            ("h:0:127.0.0.1", "1..=65535"),
            ("h:80:nothost", "not an IP address"),
        ] {
            let e = Resolve::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--resolve") && e.contains(needle), "{e}");
        }
        for (bad, needle) in [
            ("a:1:b", "HOST:PORT:HOST2:PORT2"),
            ("a:1:b:99999", "1..=65535"),
            ("a:1:[zz]:2", "not an IPv6"),
            ("a:1:b c:2", "not a host name"),
        ] {
            let e = ConnectTo::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--connect-to") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn data_from_a_file_drops_newlines_unless_binary() {
        let dir = std::env::temp_dir().join(format!("kaprobe-data-{}", std::process::id()));
        std::fs::write(&dir, b"a=1\r\nb=2\n").unwrap();
        let at = format!("@{}", dir.display());
        assert_eq!(parse_data("--data", &at, false).unwrap(), b"a=1b=2");
        assert_eq!(
            parse_data("--data-binary", &at, true).unwrap(),
            b"a=1\r\nb=2\n"
        );
        assert_eq!(parse_data("--data", "x\ny", false).unwrap(), b"x\ny");
        std::fs::remove_file(&dir).unwrap();
        let e = parse_data("--data", "@/nonexistent/kaprobe", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--data") && e.contains("/nonexistent/kaprobe"),
            "{e}"
        );
    }
}
