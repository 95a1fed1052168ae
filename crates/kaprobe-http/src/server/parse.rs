//! Request framing: the request head (via httparse, plus the checks httparse leaves to us);
//! the chunked-body decoder is [`crate::h1::Chunked`], re-exported here. Pure functions over
//! byte slices: no I/O, no clock, no panics.

use std::time::Duration;

use super::push::req::PushReq;
pub use super::query::parse_delay;
use crate::h1::bad;
pub use crate::h1::{Chunked, Reject};

/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 100;

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What a request asked for, routed to one of the built-in endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Root,
    Close,
    Delay(Duration),
    Status(u16),
    Bytes(u64),
    Headers(String),
    Stats,
    Metrics,
    /// A push-channel endpoint (`/ws`, `/sse`, `/poll`, `/publish`), checked but not served
    /// here: the connection hands itself to [`super::push`].
    Push(Box<PushReq>),
    NotFound,
    /// A well-framed request for something we cannot answer (bad path argument).
    Invalid(u16, &'static str),
}

/// The parts of a parsed request head the connection logic needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub is_head: bool,
    pub route: Route,
    /// `Connection` lists `close`.
    pub conn_close: bool,
    /// `Connection` lists `keep-alive`.
    pub conn_keep_alive: bool,
    /// A `Keep-Alive` header field was sent.
    pub keep_alive_field: bool,
    pub body: BodyKind,
    pub expect_continue: bool,
}

/// Largest `/bytes/{n}` answered.
pub const MAX_BYTES_ENDPOINT: u64 = 64 << 20;
/// Longest `/delay/{d}` answered.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Parse one request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((len, head)))`: the head is `buf[..len]`.
///
/// # Errors
/// The 4xx status and reason for a malformed, smuggling-prone or non-HTTP request.
pub fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Reject> {
    match parse_head_as_sent(buf) {
        Err(r) if r.detail == UNSUPPORTED_VERSION => match later_minor(buf) {
            // RFC 9110 section 2.5: a higher minor version of a major version we implement
            // is processed as the highest minor version we implement (HTTP/1.7 as HTTP/1.1).
            Some(Ok(at)) => {
                let mut copy = buf.to_vec();
                copy[at] = b'1';
                parse_head_as_sent(&copy)
            }
            // Another major version: 505 (RFC 9110 section 15.6.6).
            Some(Err(())) => Err(Reject {
                status: 505,
                detail: "HTTP major version other than 1",
            }),
            None if version_may_follow(buf) => Ok(None),
            None => Err(r),
        },
        other => other,
    }
}

/// The request line has not ended and what follows its last space could still become
/// `HTTP/M.N`: wait for the rest before judging the version.
fn version_may_follow(buf: &[u8]) -> bool {
    if buf.contains(&b'\r') || buf.contains(&b'\n') {
        return false;
    }
    // Method SP target SP version: the version is everything after the second space.
    let Some(tail) = buf.splitn(3, |&b| b == b' ').nth(2) else {
        return false;
    };
    tail.len() <= 8
        && tail.iter().zip(b"HTTP/d.d").all(|(&c, &p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

const UNSUPPORTED_VERSION: &str = "unsupported HTTP version";

/// Where the request line's version (after its second space) is `HTTP/1.N` with N from 2 to
/// 9: `Ok(index of N)`; `Err(())` for a well-formed `HTTP/M.N` with M other than 1; `None`
/// otherwise.
fn later_minor(buf: &[u8]) -> Option<Result<usize, ()>> {
    let line_end = buf.iter().position(|&b| b == b'\r')?;
    let line = &buf[..line_end];
    let version = line.splitn(3, |&b| b == b' ').nth(2)?;
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => Some(Ok(line_end - 1)),
        [b'H', b'T', b'T', b'P', b'/', b'0' | b'2'..=b'9', b'.', b'0'..=b'9'] => Some(Err(())),
        _ => None,
    }
}

fn parse_head_as_sent(buf: &[u8]) -> Result<Option<(usize, Head)>, Reject> {
    // httparse tolerates a bare LF; we do not. Of the two checks, the error that shows in the
    // shorter prefix wins, so the verdict is the same however the bytes are cut: httparse only
    // sees what comes before the first bad line ending.
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |i| i + 4);
    let line_error = line_ending_error(&buf[..head_end]);
    let seen = line_error.map_or(buf, |(at, _)| &buf[..at]);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(seen) {
        Ok(httparse::Status::Complete(n)) => match line_error {
            Some((_, r)) => return Err(r),
            None => n,
        },
        Ok(httparse::Status::Partial) => {
            return match line_error {
                Some((_, r)) => Err(r),
                None => Ok(None),
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject {
                status: 431,
                detail: "too many header fields",
            })
        }
        Err(httparse::Error::Version) => return Err(bad(UNSUPPORTED_VERSION)),
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Err(bad(
                "malformed header field (obs-fold, bare CR or bad byte)",
            ))
        }
        Err(httparse::Error::NewLine | httparse::Error::Status) => {
            return Err(bad("malformed request line"))
        }
        Err(_) => return Err(bad("not an HTTP/1.x request")),
    };
    let minor = req.version.unwrap_or(1);
    let method = req.method.unwrap_or("GET");
    let target = req.path.unwrap_or("/");

    let mut h = Head {
        minor,
        is_head: method == "HEAD",
        route: Route::NotFound,
        conn_close: false,
        conn_keep_alive: false,
        keep_alive_field: false,
        body: BodyKind::None,
        expect_continue: false,
    };
    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_last_chunked = false;
    let mut te_chunked_count = 0u32;
    let mut hosts = 0u32;
    for f in req.headers.iter() {
        let name = f.name;
        let value = f.value;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(bad("duplicate Content-Length"));
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            for tok in tokens(value) {
                let chunked = tok.eq_ignore_ascii_case(b"chunked");
                te_chunked_count += u32::from(chunked);
                te_last_chunked = chunked;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in tokens(value) {
                if tok.eq_ignore_ascii_case(b"close") {
                    h.conn_close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    h.conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("keep-alive") {
            h.keep_alive_field = true;
        } else if name.eq_ignore_ascii_case("expect") {
            h.expect_continue = tokens(value).any(|t| t.eq_ignore_ascii_case(b"100-continue"));
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if te_seen {
        if content_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if minor == 0 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !te_last_chunked || te_chunked_count != 1 {
            return Err(bad("Transfer-Encoding does not end in a single chunked"));
        }
        h.body = BodyKind::Chunked;
    } else if let Some(n) = content_length {
        if n > 0 {
            h.body = BodyKind::Length(n);
        }
    }
    if minor == 1 && hosts != 1 {
        return Err(bad(if hosts == 0 {
            "HTTP/1.1 request without Host"
        } else {
            "more than one Host"
        }));
    }
    let path = origin_form(target).ok_or(bad(
        "request target is neither a path nor an absolute http:// or https:// URI",
    ))?;
    h.route = route(method, minor, path, target, req.headers);
    Ok(Some((len, h)))
}

/// The path and query of a request target: origin-form (`/path?q`) as it is, absolute-form
/// (`http://host:port/path?q`, RFC 9112 section 3.2.2, which a server must accept) without its
/// scheme and authority (an empty path is `/`), and asterisk-form (`*`) as it is. `None` for
/// anything else (authority-form is only for CONNECT, which this server does not proxy).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') || target == "*" {
        return Some(target);
    }
    let b = target.as_bytes();
    let after_scheme = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[after_scheme..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    match &rest[end..] {
        "" => Some("/"),
        p if p.starts_with('/') => Some(p),
        // `http://host?q`: the path is empty, so `/`; the query goes with it (routing ignores it).
        _ => Some("/"),
    }
}

/// Every LF in the head must follow a CR, and every CR must precede an LF: the first byte
/// that breaks the rule (a bare LF, or the byte after a bare CR), and the rejection.
fn line_ending_error(head: &[u8]) -> Option<(usize, Reject)> {
    let mut prev = 0u8;
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return Some((i, bad("bare LF in the request head")));
        }
        if prev == b'\r' && b != b'\n' {
            return Some((i, bad("bare CR in the request head")));
        }
        prev = b;
    }
    None
}

fn parse_content_length(v: &[u8]) -> Result<u64, Reject> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad("bad Content-Length"));
    }
    Ok(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The non-empty elements of a comma-separated field value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

/// Route a request: `origin` is the target in origin form (see [`origin_form`]), `target` as
/// the client sent it (echoed by `/headers`).
pub(crate) fn route(
    method: &str,
    minor: u8,
    origin: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
) -> Route {
    let path = origin.split('?').next().unwrap_or(origin);
    if let Some(p) = super::push::req::parse(method, minor, origin, headers) {
        return Route::Push(Box::new(p));
    }
    match path {
        "/" => Route::Root,
        "/close" => Route::Close,
        "/_kaprobe/stats" => Route::Stats,
        "/metrics" => Route::Metrics,
        "/headers" => Route::Headers(headers_json(method, target, headers)),
        _ => {
            if let Some(d) = path.strip_prefix("/delay/") {
                match parse_delay(d) {
                    Some(d) if d <= MAX_DELAY => Route::Delay(d),
                    Some(_) => Route::Invalid(400, "delay longer than 1h"),
                    None => Route::Invalid(400, "bad duration in /delay/"),
                }
            } else if let Some(c) = path.strip_prefix("/status/") {
                match c.parse::<u16>() {
                    Ok(c) if (200..=599).contains(&c) => Route::Status(c),
                    _ => Route::Invalid(400, "status must be 200..=599"),
                }
            } else if let Some(n) = path.strip_prefix("/bytes/") {
                match n.parse::<u64>() {
                    Ok(n) if n <= MAX_BYTES_ENDPOINT => Route::Bytes(n),
                    _ => Route::Invalid(400, "byte count must be 0..=67108864"),
                }
            } else {
                Route::NotFound
            }
        }
    }
}

fn headers_json(method: &str, target: &str, headers: &[httparse::Header<'_>]) -> String {
    let fields: Vec<serde_json::Value> = headers
        .iter()
        .map(|h| {
            serde_json::json!({
                "name": h.name,
                "value": String::from_utf8_lossy(h.value),
            })
        })
        .collect();
    let mut s = serde_json::json!({
        "method": method,
        "target": target,
        "headers": fields,
    })
    .to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<(usize, Head)>, Reject> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn simple_get_parses_with_its_length() {
        let r = "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET";
        let (n, h) = head(r).unwrap().unwrap();
        assert_eq!(n, r.len() - 3);
        assert_eq!(h.minor, 1);
        assert_eq!(h.route, Route::Root);
        assert_eq!(h.body, BodyKind::None);
    }

    #[test]
    fn absolute_form_targets_route_by_their_path() {
        let route = |t: &str| {
            head(&format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n")).map(|r| r.map(|(_, h)| h.route))
        };
        assert_eq!(route("http://h/").unwrap(), Some(Route::Root));
        assert_eq!(route("HTTP://h:8080").unwrap(), Some(Route::Root));
        assert_eq!(
            route("https://h/status/202?x=1").unwrap(),
            Some(Route::Status(202))
        );
        assert_eq!(route("http://h?x=1").unwrap(), Some(Route::Root));
        assert_eq!(route("*").unwrap(), Some(Route::NotFound));
        for bad in ["http://", "http:///x", "h:80", "ftp://h/", "x"] {
            assert_eq!(route(bad).unwrap_err().status, 400, "{bad}");
        }
        let (_, h) = head("GET http://h/headers HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            matches!(&h.route, Route::Headers(j) if j.contains("\"target\":\"http://h/headers\"")),
            "{:?}",
            h.route
        );
    }

    #[test]
    fn later_minor_versions_read_as_1_1_and_other_majors_get_505() {
        let (_, h) = head("GET / HTTP/1.7\r\nHost: a\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.minor, 1);
        assert_eq!(h.route, Route::Root);
        assert_eq!(
            head("GET / HTTP/2.0\r\nHost: a\r\n\r\n")
                .unwrap_err()
                .status,
            505
        );
        assert_eq!(
            head("GET / HTTP/1.x\r\nHost: a\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(head("GET / HTTP/1.7\r\nHo").unwrap(), None);
        let line = "GET / HTTP/2.0\r\nHost: a\r\n\r\n";
        for cut in 1..line.len() {
            match head(&line[..cut]) {
                Ok(None) => {}
                Err(r) => assert_eq!(r.status, 505, "cut at {cut}"),
                Ok(Some(_)) => panic!("complete at {cut}"),
            }
        }
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(head("GET / HTTP/1.1\r\nHo").unwrap(), None);
    }

    #[test]
    fn connection_tokens_are_case_insensitive_lists() {
        let (_, h) = head("GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.conn_keep_alive && !h.conn_close);
        let (_, h) =
            head("GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nconnection: CLOSE\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.conn_close);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let cases = [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "\x16\x03\x01\x00\x05\x01\x00\x00",
        ];
        for c in cases {
            let e = head(c).expect_err(c);
            assert_eq!(e.status, 400, "{c:?}: {e:?}");
        }
    }

    #[test]
    fn routes() {
        let r = |t: &str| {
            head(&format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n"))
                .unwrap()
                .unwrap()
                .1
                .route
        };
        assert_eq!(r("/delay/250ms"), Route::Delay(Duration::from_millis(250)));
        assert_eq!(r("/delay/0.5"), Route::Delay(Duration::from_millis(500)));
        assert_eq!(r("/status/503"), Route::Status(503));
        assert_eq!(r("/bytes/10?x=1"), Route::Bytes(10));
        assert_eq!(r("/nope"), Route::NotFound);
        assert!(matches!(r("/status/99"), Route::Invalid(400, _)));
        assert!(
            matches!(r("/headers"), Route::Headers(s) if s.contains("\"host\"") || s.contains("\"Host\""))
        );
    }

    #[test]
    fn chunked_bodies_decode_across_splits() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunked::new();
            let a = c.feed(&body[..split], 1000).unwrap();
            assert_eq!(a, split.min(body.len() - 4));
            let b = c.feed(&body[a..], 1000).unwrap();
            if c.done() {
                assert_eq!(a + b, body.len() - 4, "split {split}");
            } else {
                panic!("not done at split {split}");
            }
            assert_eq!(c.total, 9);
        }
    }

    #[test]
    fn bad_chunks_are_rejected() {
        for b in [
            &b"g\r\n"[..],
            b"\r\n",
            b"4\nWiki",
            b"4\r\nWikiX\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(
                Chunked::new().feed(b, u64::MAX).unwrap_err().status,
                400,
                "{b:?}"
            );
        }
        assert_eq!(Chunked::new().feed(b"100\r\n", 10).unwrap_err().status, 413);
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: the fuzz target does this at scale.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet =
            b"GET /HTTP1.\r\n:;, \t0123456789abcdefxContent-LengthTransfer-Encodingchunked\x00\xff";
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            let mut buf = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let pick = (y >> 33) as usize;
                buf.push(if pick.is_multiple_of(5) {
                    (pick >> 8) as u8
                } else {
                    alphabet[pick % alphabet.len()]
                });
            }
            let _ = parse_head(&buf);
            let _ = Chunked::new().feed(&buf, 1 << 20);
        }
    }
}
