//! A raw HTTP/1.1 client for tests that must control how request bytes are cut into TCP
//! segments, and a corpus of valid and malformed requests to send that way.
//!
//! Each exchange ends with a sentinel request (`GET /status/203`): when its response comes
//! back the connection stayed open after everything before it; when the server closes first,
//! it did not. So a test learns a connection's fate without waiting for a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The request that ends every exchange; its status tells it apart from the rest.
pub const SENTINEL: &[u8] = b"GET /status/203 HTTP/1.1\r\nHost: a\r\n\r\n";

/// One response as the client read it: status and the part that must not vary (status line,
/// header fields except `Date`, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub text: String,
}

/// What a client saw on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Final responses in order (1xx left out), the sentinel's included when it came.
    pub responses: Vec<Resp>,
    /// The server closed the connection before answering the sentinel.
    pub closed: bool,
}

impl Seen {
    /// Statuses in order, the sentinel's left out.
    pub fn statuses(&self) -> Vec<u16> {
        let mut s: Vec<u16> = self.responses.iter().map(|r| r.status).collect();
        if !self.closed {
            s.pop();
        }
        s
    }
}

/// How to send a request: the pieces, written one by one with `gap` between them (with
/// `TCP_NODELAY`, so each write leaves as its own segment).
pub struct Send<'a> {
    pub pieces: Vec<&'a [u8]>,
    pub gap: Duration,
    /// Send one plain GET first and read its answer, so the request goes on a reused
    /// connection.
    pub reuse: bool,
    /// The request is a HEAD (its response has no body).
    pub head: bool,
}

/// Connect to `addr`, send as described, then the sentinel, and read until the sentinel's
/// response or the close. Returns what was seen and the client's local address (to find the
/// server's log line for this connection).
///
/// # Panics
/// When the connection fails or no answer comes within 20 s.
pub fn exchange(addr: SocketAddr, how: &Send<'_>) -> (Seen, SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let local = s.local_addr().unwrap_or(addr);
    let mut buf = Vec::new();
    if how.reuse {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        match read_response(&mut s, &mut buf, false) {
            Some(r) if r.status == 200 => {}
            other => panic!("warm-up request got {other:?}"),
        }
    }
    let mut wrote_all = true;
    for (i, p) in how.pieces.iter().enumerate() {
        if i > 0 && !how.gap.is_zero() {
            std::thread::sleep(how.gap);
        }
        if s.write_all(p).is_err() {
            // The server already rejected what it saw and closed: the rest cannot matter.
            wrote_all = false;
            break;
        }
    }
    if wrote_all {
        let _ = s.write_all(SENTINEL);
    }
    let mut seen = Seen {
        responses: Vec::new(),
        closed: true,
    };
    // Responses to a HEAD have no body; only the first request of the exchange can be one.
    let mut head = how.head;
    while let Some(r) = read_response(&mut s, &mut buf, head) {
        head = false;
        let sentinel = r.status == 203;
        // A response that announces the close ends the exchange (the server may linger a
        // while, reading and discarding, before its FIN).
        let closing = r
            .text
            .to_ascii_lowercase()
            .contains("\nconnection: close\n");
        seen.responses.push(r);
        if sentinel && !closing {
            seen.closed = false;
        }
        if sentinel || closing {
            break;
        }
    }
    (seen, local)
}

/// Read one final response (skipping 1xx); `None` at EOF or a reset before a whole one.
///
/// # Panics
/// When nothing arrives for 20 s, or the response is not HTTP.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_req: bool) -> Option<Resp> {
    loop {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if !more(s, buf) {
                return None;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status: u16 = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
        if (100..200).contains(&status) {
            buf.drain(..end + 4);
            continue;
        }
        let mut text = String::new();
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for (i, line) in head.split("\r\n").enumerate() {
            let lower = line.to_ascii_lowercase();
            if i > 0 && lower.starts_with("date:") {
                continue;
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            text.push_str(line);
            text.push('\n');
        }
        buf.drain(..end + 4);
        let bodyless = head_req || status == 204 || status == 304;
        let body = if bodyless {
            Vec::new()
        } else if chunked {
            read_chunked(s, buf)?
        } else {
            let n = length.unwrap_or(0);
            while buf.len() < n {
                if !more(s, buf) {
                    return None;
                }
            }
            buf.drain(..n).collect()
        };
        text.push_str(&String::from_utf8_lossy(&body));
        return Some(Resp { status, text });
    }
}

fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !more(s, buf) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        return Some(body);
                    }
                } else if !more(s, buf) {
                    return None;
                }
            }
        }
        while buf.len() < size + 2 {
            if !more(s, buf) {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read more into `buf`; false at EOF or reset.
fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match s.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("no answer within the read timeout")
        }
        Err(_) => false,
    }
}

/// A named request of the corpus.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// A HEAD request (its response has no body).
    pub head: bool,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        head: false,
    }
}

/// A body of `n` bytes framed by Content-Length.
pub fn post_length(n: usize) -> Vec<u8> {
    let mut r = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    r.extend(std::iter::repeat_n(b'b', n));
    r
}

/// A body of `n` bytes in chunks of at most `chunk` bytes.
pub fn post_chunked(n: usize, chunk: usize) -> Vec<u8> {
    let mut r = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk);
        r.extend_from_slice(format!("{k:x}\r\n").as_bytes());
        r.extend(std::iter::repeat_n(b'c', k));
        r.extend_from_slice(b"\r\n");
        left -= k;
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// Small requests servers answer the same way (valid ones), and the shapes RFC 9112 says to
/// reject (malformed ones).
pub fn valid() -> Vec<Case> {
    vec![
        case("get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Case {
            head: true,
            ..case("head", "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        },
        case("post_empty", post_length(0)),
        case("post_small", post_length(11)),
        case(
            "post_expect_continue",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        ),
        case(
            "post_chunked_ext_trailer",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n",
        ),
        case("post_chunked", post_chunked(40, 16)),
        case("http10_keep_alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        case("http10_plain", "GET / HTTP/1.0\r\n\r\n"),
        case("connection_close", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        case(
            "pipelined_pair",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        ),
        case("later_minor_version", "GET / HTTP/1.7\r\nHost: a\r\n\r\n"),
        case(
            "absolute_form",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        case(
            "body_then_next_request",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nGET GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ]
}

/// Malformed requests (each should get a 4xx and a close).
pub fn malformed() -> Vec<Case> {
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(70_000)
    );
    vec![
        case(
            "cl_and_te",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        case(
            "duplicate_cl",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        case(
            "list_cl",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        ),
        case("bad_cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc"),
        case(
            "bad_chunk_size",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        case(
            "missing_chunk_crlf",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        ),
        case("obs_fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n"),
        case("bare_cr", "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
        case("bare_lf", "GET / HTTP/1.1\nHost: a\n\n"),
        case(
            "list_cl_same",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        ),
        case("nul_in_target", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("nul_in_header", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
        case("no_host", "GET / HTTP/1.1\r\n\r\n"),
        case("two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        case("http_2_0_line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        case("bad_version", "GET / HTTP/1.x\r\nHost: a\r\n\r\n"),
        case("space_before_colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        case("oversize_head", big_head),
        case("tls_hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec()),
    ]
}
