//! One connection's HTTP state machine, without I/O: bytes in, response bytes out, and what
//! the connection must do next (read more, wait, close with a reason).

use std::time::Duration;

use super::close::Reason;
use super::config::{Advertise, Config};
use super::parse::{parse_head, BodyKind, Chunked, Head, Reject, Route};
use super::push::req::PushReq;
use super::stats::Stats;

/// The body of `/` and `/close`.
pub const BODY: &[u8] = b"ok\n";

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the server knows beyond this connection.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub stats: &'a Stats,
    pub shutting_down: bool,
}

/// What the connection does after a call to [`Proto::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every complete request was answered; unconsumed bytes are a partial request.
    NeedMore,
    /// A `/delay/` request: flush, wait this long, then call [`Proto::finish_delayed`].
    Delay(Duration),
    /// Write out what was produced, then close for this reason.
    Close(Reason, &'static str),
    /// A push-channel request: hand the connection to [`super::push`] (see
    /// [`Proto::take_push`]); unconsumed input belongs to it.
    Push,
}

/// A push request as the protocol layer saw it, for [`super::push`] to serve.
#[derive(Debug)]
pub struct PushStart {
    pub req: PushReq,
    pub body: BodyKind,
    pub minor: u8,
    /// Why the connection must close after this request, if the request said so.
    pub close: Option<Reason>,
    /// The request sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

#[derive(Debug)]
struct Req {
    route: Route,
    is_head: bool,
    minor: u8,
    close: Option<Reason>,
    advertise: bool,
}

#[derive(Debug)]
enum Left {
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Head,
    Body(Left, Box<Req>),
    Delayed(Box<Req>),
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Proto {
    /// Responses sent on this connection.
    pub served: u64,
    phase: Phase,
    push: Option<Box<PushStart>>,
}

impl Proto {
    /// State for a connection that already answered `served` requests and is idle.
    pub fn resume(served: u64) -> Self {
        Self {
            served,
            phase: Phase::Head,
            push: None,
        }
    }

    /// True between requests (no request head or body partly read).
    pub fn between_requests(&self) -> bool {
        matches!(self.phase, Phase::Head)
    }

    /// The push request behind the last [`Outcome::Push`].
    pub fn take_push(&mut self) -> Option<Box<PushStart>> {
        self.push.take()
    }

    /// True while a request body is being read.
    pub fn in_body(&self) -> bool {
        matches!(self.phase, Phase::Body(..))
    }

    /// Handle the requests in `input`, appending responses to `out`.
    /// Returns how many bytes of `input` were consumed and what to do next.
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>, ctx: &Ctx<'_>) -> (usize, Outcome) {
        let mut pos = 0;
        loop {
            match std::mem::take(&mut self.phase) {
                Phase::Head => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        return (pos, Outcome::NeedMore);
                    }
                    // The head is judged on its first --max-header-bytes bytes only, so the
                    // verdict is the same however the bytes arrive: an error inside the window
                    // is that error, a head that does not end inside it is too large.
                    let window = &rest[..rest.len().min(ctx.cfg.max_header_bytes)];
                    match parse_head(window) {
                        Ok(None) => {
                            if rest.len() > window.len() {
                                return (input.len(), reject(too_big(), out, ctx));
                            }
                            return (pos, Outcome::NeedMore);
                        }
                        Err(r) => return (input.len(), reject(r, out, ctx)),
                        Ok(Some((len, head))) => {
                            pos += len;
                            let close = request_close(&head);
                            if let Route::Push(p) = head.route {
                                self.count(ctx);
                                self.push = Some(Box::new(PushStart {
                                    close,
                                    req: *p,
                                    body: head.body,
                                    minor: head.minor,
                                    expect_continue: head.expect_continue,
                                }));
                                return (pos, Outcome::Push);
                            }
                            let req = Box::new(request(&head, ctx.cfg));
                            let left = match head.body {
                                BodyKind::None => {
                                    if let Some(o) = self.respond_or_delay(req, out, ctx) {
                                        return (pos, o);
                                    }
                                    continue;
                                }
                                BodyKind::Length(n) => {
                                    if n > ctx.cfg.max_body_bytes {
                                        let r = Reject {
                                            status: 413,
                                            detail: "Content-Length larger than --max-body-bytes",
                                        };
                                        return (input.len(), reject(r, out, ctx));
                                    }
                                    Left::Length(n)
                                }
                                BodyKind::Chunked => Left::Chunked(Chunked::new()),
                            };
                            if head.expect_continue && pos == input.len() {
                                out.extend_from_slice(CONTINUE);
                            }
                            self.phase = Phase::Body(left, req);
                        }
                    }
                }
                Phase::Body(left, req) => {
                    let rest = &input[pos..];
                    let left = match left {
                        Left::Length(n) => {
                            let take = n.min(rest.len() as u64);
                            pos += usize::try_from(take).unwrap_or(rest.len());
                            if n - take > 0 {
                                Some(Left::Length(n - take))
                            } else {
                                None
                            }
                        }
                        Left::Chunked(mut c) => match c.feed(rest, ctx.cfg.max_body_bytes) {
                            Err(r) => return (input.len(), reject(r, out, ctx)),
                            Ok(k) => {
                                pos += k;
                                if c.done() {
                                    None
                                } else {
                                    Some(Left::Chunked(c))
                                }
                            }
                        },
                    };
                    if let Some(left) = left {
                        self.phase = Phase::Body(left, req);
                        return (pos, Outcome::NeedMore);
                    }
                    if let Some(o) = self.respond_or_delay(req, out, ctx) {
                        return (pos, o);
                    }
                }
                p @ Phase::Delayed(_) => {
                    self.phase = p;
                    return (pos, Outcome::NeedMore);
                }
            }
        }
    }

    fn respond_or_delay(
        &mut self,
        req: Box<Req>,
        out: &mut Vec<u8>,
        ctx: &Ctx<'_>,
    ) -> Option<Outcome> {
        if let Route::Delay(d) = req.route {
            self.phase = Phase::Delayed(req);
            return Some(Outcome::Delay(d));
        }
        self.respond(&req, out, ctx).map(|r| Outcome::Close(r, ""))
    }

    /// Answer the request that waited for its `/delay/`. Returns the close reason, if any.
    pub fn finish_delayed(&mut self, out: &mut Vec<u8>, ctx: &Ctx<'_>) -> Option<Reason> {
        match std::mem::take(&mut self.phase) {
            Phase::Delayed(req) => self.respond(&req, out, ctx),
            p => {
                self.phase = p;
                None
            }
        }
    }

    fn count(&mut self, ctx: &Ctx<'_>) {
        self.served += 1;
        ctx.stats.requests.set(ctx.stats.requests.get() + 1);
        if self.served > 1 {
            ctx.stats.reused.set(ctx.stats.reused.get() + 1);
        }
    }

    fn respond(&mut self, req: &Req, out: &mut Vec<u8>, ctx: &Ctx<'_>) -> Option<Reason> {
        let cfg = ctx.cfg;
        self.count(ctx);
        let close = req
            .close
            .or_else(|| {
                (cfg.max_requests > 0 && self.served >= cfg.max_requests)
                    .then_some(Reason::MaxRequests)
            })
            .or_else(|| ctx.shutting_down.then_some(Reason::Shutdown))
            .or_else(|| {
                cfg.keepalive_timeout
                    .is_zero()
                    .then_some(Reason::KeepAliveOff)
            });
        let conn = if close.is_some() {
            ConnHeader::Close
        } else if req.advertise {
            let remaining = if cfg.max_requests > 0 {
                Some(cfg.max_requests - self.served)
            } else {
                None
            };
            // Whole seconds, rounded down so a client that trusts it lets go in time. Under a
            // second there is nothing honest to say in whole seconds (`timeout=0` reads as
            // "do not reuse" to some clients and is ignored by others): the parameter is left out.
            let secs = cfg
                .advertise_timeout
                .unwrap_or(cfg.keepalive_timeout)
                .as_secs();
            ConnHeader::KeepAlive {
                timeout: (secs > 0).then_some(secs),
                max: remaining,
            }
        } else if req.minor == 0 {
            ConnHeader::KeepAliveToken
        } else {
            ConnHeader::Nothing
        };
        let owned;
        let (status, ctype, body): (u16, &[u8], Body<'_>) = match &req.route {
            Route::Root | Route::Close | Route::Delay(_) => (200, TEXT, Body::Slice(BODY)),
            Route::Status(c) => (*c, TEXT, Body::Slice(reason_phrase_line(*c))),
            Route::Bytes(n) => (200, OCTETS, Body::Fill(*n)),
            Route::Headers(s) => (200, JSON, Body::Slice(s.as_bytes())),
            Route::Stats => {
                owned = ctx.stats.json(ctx.shutting_down);
                (200, JSON, Body::Slice(owned.as_bytes()))
            }
            Route::Metrics => {
                owned = ctx.stats.prometheus();
                (200, PROM, Body::Slice(owned.as_bytes()))
            }
            Route::NotFound | Route::Push(_) => {
                ctx.stats.bad_requests.set(ctx.stats.bad_requests.get() + 1);
                (404, TEXT, Body::Slice(b"not found\n"))
            }
            Route::Invalid(c, msg) => {
                ctx.stats.bad_requests.set(ctx.stats.bad_requests.get() + 1);
                owned = format!("{msg}\n");
                (*c, TEXT, Body::Slice(owned.as_bytes()))
            }
        };
        let bodyless = status == 204 || status == 304;
        let len = match body {
            Body::Slice(s) => s.len() as u64,
            Body::Fill(n) => n,
        };
        write_head(out, status, ctype, (!bodyless).then_some(len), conn);
        if !req.is_head && !bodyless {
            match body {
                Body::Slice(s) => out.extend_from_slice(s),
                Body::Fill(n) => out.resize(out.len() + usize::try_from(n).unwrap_or(0), b'x'),
            }
        }
        close
    }
}

enum Body<'a> {
    Slice(&'a [u8]),
    Fill(u64),
}

pub(crate) const TEXT: &[u8] = b"text/plain";
pub(crate) const JSON: &[u8] = b"application/json";
pub(crate) const OCTETS: &[u8] = b"application/octet-stream";
pub(crate) const PROM: &[u8] = b"text/plain; version=0.0.4";

fn too_big() -> Reject {
    Reject {
        status: 431,
        detail: "request header section larger than --max-header-bytes",
    }
}

/// Why the request itself asks for the connection to close, if it does.
fn request_close(head: &Head) -> Option<Reason> {
    if head.minor == 0 && !head.conn_keep_alive {
        Some(Reason::Http10)
    } else if head.conn_close {
        Some(Reason::ClientCloseHeader)
    } else {
        None
    }
}

fn request(head: &Head, cfg: &Config) -> Req {
    let close = if head.minor == 0 && !head.conn_keep_alive {
        Some(Reason::Http10)
    } else if head.conn_close {
        Some(Reason::ClientCloseHeader)
    } else if head.route == Route::Close {
        Some(Reason::CloseEndpoint)
    } else {
        None
    };
    let advertise = match cfg.advertise {
        Advertise::Always => true,
        Advertise::WhenAsked => head.conn_keep_alive || head.keep_alive_field,
        Advertise::Never => false,
    };
    Req {
        route: head.route.clone(),
        is_head: head.is_head,
        minor: head.minor,
        close,
        advertise,
    }
}

/// Answer a rejected request: its status, `Connection: close`, and the reason as body.
fn reject(r: Reject, out: &mut Vec<u8>, ctx: &Ctx<'_>) -> Outcome {
    ctx.stats.bad_requests.set(ctx.stats.bad_requests.get() + 1);
    error_response(out, r.status, r.detail);
    Outcome::Close(Reason::BadRequest, r.detail)
}

/// Write a complete error response that closes the connection.
pub fn error_response(out: &mut Vec<u8>, status: u16, detail: &str) {
    write_head(
        out,
        status,
        TEXT,
        Some(detail.len() as u64 + 1),
        ConnHeader::Close,
    );
    out.extend_from_slice(detail.as_bytes());
    out.push(b'\n');
}

#[derive(Clone, Copy)]
enum ConnHeader {
    Close,
    KeepAlive {
        timeout: Option<u64>,
        max: Option<u64>,
    },
    KeepAliveToken,
    Nothing,
}

/// The start of every response head the server writes: status line, `Server`, `Date` and
/// `Content-Type` (its value, without the line's CRLF).
pub(crate) fn write_head_start(out: &mut Vec<u8>, status: u16, ctype: &[u8]) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status));
    out.extend_from_slice(b"\r\nServer: kaprobe\r\nDate: ");
    super::date::with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(ctype);
}

fn write_head(out: &mut Vec<u8>, status: u16, ctype: &[u8], len: Option<u64>, conn: ConnHeader) {
    let mut num = itoa::Buffer::new();
    write_head_start(out, status, ctype);
    if let Some(len) = len {
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(num.format(len).as_bytes());
    }
    match conn {
        ConnHeader::Close => out.extend_from_slice(b"\r\nConnection: close"),
        ConnHeader::KeepAlive { timeout, max } => {
            out.extend_from_slice(b"\r\nConnection: keep-alive");
            match (timeout, max) {
                (Some(t), m) => {
                    out.extend_from_slice(b"\r\nKeep-Alive: timeout=");
                    out.extend_from_slice(num.format(t).as_bytes());
                    if let Some(m) = m {
                        out.extend_from_slice(b", max=");
                        out.extend_from_slice(num.format(m).as_bytes());
                    }
                }
                (None, Some(m)) => {
                    out.extend_from_slice(b"\r\nKeep-Alive: max=");
                    out.extend_from_slice(num.format(m).as_bytes());
                }
                (None, None) => {}
            }
        }
        ConnHeader::KeepAliveToken => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        ConnHeader::Nothing => {}
    }
    out.extend_from_slice(b"\r\n\r\n");
}

pub(crate) fn reason_phrase(status: u16) -> &'static [u8] {
    let line = reason_phrase_line(status);
    &line[..line.len() - 1]
}

/// The reason phrase and a newline: the registered phrase (RFC 9110 section 15 and the IANA
/// registry), or for an unregistered code the name of its class.
pub(crate) fn reason_phrase_line(status: u16) -> &'static [u8] {
    registered_phrase(status).unwrap_or(match status {
        100..=199 => b"Informational\n",
        200..=299 => b"Success\n",
        300..=399 => b"Redirection\n",
        400..=499 => b"Client Error\n",
        _ => b"Server Error\n",
    })
}

fn registered_phrase(status: u16) -> Option<&'static [u8]> {
    Some(match status {
        100 => b"Continue\n",
        101 => b"Switching Protocols\n",
        102 => b"Processing\n",
        103 => b"Early Hints\n",
        200 => b"OK\n",
        201 => b"Created\n",
        202 => b"Accepted\n",
        203 => b"Non-Authoritative Information\n",
        204 => b"No Content\n",
        205 => b"Reset Content\n",
        206 => b"Partial Content\n",
        207 => b"Multi-Status\n",
        208 => b"Already Reported\n",
        226 => b"IM Used\n",
        300 => b"Multiple Choices\n",
        301 => b"Moved Permanently\n",
        302 => b"Found\n",
        303 => b"See Other\n",
        304 => b"Not Modified\n",
        305 => b"Use Proxy\n",
        307 => b"Temporary Redirect\n",
        308 => b"Permanent Redirect\n",
        400 => b"Bad Request\n",
        401 => b"Unauthorized\n",
        402 => b"Payment Required\n",
        403 => b"Forbidden\n",
        404 => b"Not Found\n",
        405 => b"Method Not Allowed\n",
        406 => b"Not Acceptable\n",
        407 => b"Proxy Authentication Required\n",
        408 => b"Request Timeout\n",
        409 => b"Conflict\n",
        410 => b"Gone\n",
        411 => b"Length Required\n",
        412 => b"Precondition Failed\n",
        413 => b"Content Too Large\n",
        414 => b"URI Too Long\n",
        415 => b"Unsupported Media Type\n",
        416 => b"Range Not Satisfiable\n",
        417 => b"Expectation Failed\n",
        421 => b"Misdirected Request\n",
        422 => b"Unprocessable Content\n",
        423 => b"Locked\n",
        424 => b"Failed Dependency\n",
        425 => b"Too Early\n",
        426 => b"Upgrade Required\n",
        428 => b"Precondition Required\n",
        429 => b"Too Many Requests\n",
        431 => b"Request Header Fields Too Large\n",
        451 => b"Unavailable For Legal Reasons\n",
        500 => b"Internal Server Error\n",
        501 => b"Not Implemented\n",
        502 => b"Bad Gateway\n",
        503 => b"Service Unavailable\n",
        504 => b"Gateway Timeout\n",
        505 => b"HTTP Version Not Supported\n",
        506 => b"Variant Also Negotiates\n",
        507 => b"Insufficient Storage\n",
        508 => b"Loop Detected\n",
        511 => b"Network Authentication Required\n",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            max_requests: 3,
            ..Config::default()
        }
    }

    fn run(p: &mut Proto, cfg: &Config, input: &[u8]) -> (usize, Outcome, String) {
        let stats = Stats::default();
        let ctx = Ctx {
            cfg,
            stats: &stats,
            shutting_down: false,
        };
        let mut out = Vec::new();
        let (n, o) = p.process(input, &mut out, &ctx);
        (n, o, String::from_utf8_lossy(&out).into_owned())
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn max_counts_down_and_the_last_response_closes() {
        let c = cfg();
        let mut p = Proto::default();
        let (_, o, out) = run(&mut p, &c, GET);
        assert_eq!(o, Outcome::NeedMore);
        assert!(out.contains("Keep-Alive: timeout=5, max=2\r\n"), "{out}");
        let (_, _, out) = run(&mut p, &c, GET);
        assert!(out.contains("max=1\r\n"), "{out}");
        let (_, o, out) = run(&mut p, &c, GET);
        assert_eq!(o, Outcome::Close(Reason::MaxRequests, ""));
        assert!(
            out.contains("Connection: close\r\n") && !out.contains("Keep-Alive"),
            "{out}"
        );
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let c = Config::default();
        let mut p = Proto::default();
        let input = b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/2";
        let (n, o, out) = run(&mut p, &c, input);
        assert_eq!(o, Outcome::NeedMore);
        assert_eq!(&input[n..], b"GET /status/2");
        let a = out.find("201 Created").unwrap();
        let b = out.find("202 Accepted").unwrap();
        assert!(a < b);
    }

    #[test]
    fn bodies_are_skipped_so_the_next_request_is_read() {
        let c = Config::default();
        let mut p = Proto::default();
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /close HTTP/1.1\r\nHost: a\r\n\r\n";
        let (n, o, out) = run(&mut p, &c, input);
        assert_eq!(n, input.len());
        assert_eq!(o, Outcome::Close(Reason::CloseEndpoint, ""));
        assert_eq!(out.matches("200 OK").count(), 3, "{out}");
    }

    #[test]
    fn http10_needs_keep_alive_and_gets_it_echoed() {
        let c = Config::default();
        let mut p = Proto::default();
        let (_, o, out) = run(&mut p, &c, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(o, Outcome::Close(Reason::Http10, ""));
        assert!(out.contains("Connection: close"));
        let mut p = Proto::default();
        let c = Config {
            advertise: Advertise::Never,
            ..Config::default()
        };
        let (_, o, out) = run(
            &mut p,
            &c,
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        );
        assert_eq!(o, Outcome::NeedMore);
        assert!(out.contains("Connection: keep-alive\r\n"), "{out}");
    }

    #[test]
    fn expect_continue_gets_100_before_the_body() {
        let c = Config::default();
        let mut p = Proto::default();
        let (_, o, out) = run(
            &mut p,
            &c,
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(o, Outcome::NeedMore);
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        let (_, _, out) = run(&mut p, &c, b"hi");
        assert!(out.starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn sub_second_timeouts_are_never_advertised_as_timeout_0() {
        let c = Config {
            keepalive_timeout: Duration::from_millis(500),
            max_requests: 3,
            ..Config::default()
        };
        let mut p = Proto::default();
        let (_, _, out) = run(&mut p, &c, GET);
        assert!(out.contains("Keep-Alive: max=2\r\n"), "{out}");
        assert!(!out.contains("timeout="), "{out}");
        let c = Config {
            keepalive_timeout: Duration::from_millis(2500),
            max_requests: 0,
            ..Config::default()
        };
        let (_, _, out) = run(&mut Proto::default(), &c, GET);
        assert!(out.contains("Keep-Alive: timeout=2\r\n"), "{out}");
        let c = Config {
            keepalive_timeout: Duration::from_millis(500),
            max_requests: 0,
            ..Config::default()
        };
        let (_, _, out) = run(&mut Proto::default(), &c, GET);
        assert!(
            out.contains("Connection: keep-alive\r\n") && !out.contains("Keep-Alive:"),
            "{out}"
        );
    }

    #[test]
    fn keepalive_timeout_0_closes_with_its_own_reason() {
        let c = Config {
            keepalive_timeout: Duration::ZERO,
            ..Config::default()
        };
        let (_, o, out) = run(&mut Proto::default(), &c, GET);
        assert_eq!(o, Outcome::Close(Reason::KeepAliveOff, ""));
        assert!(out.contains("Connection: close\r\n"), "{out}");
    }

    #[test]
    fn every_status_has_a_reason_phrase() {
        assert_eq!(reason_phrase(418), b"Client Error");
        assert_eq!(reason_phrase(299), b"Success");
        assert_eq!(reason_phrase(599), b"Server Error");
        assert_eq!(reason_phrase(308), b"Permanent Redirect");
        for c in 100..=599 {
            let p = reason_phrase(c);
            assert!(!p.is_empty() && p.iter().all(|b| b.is_ascii_graphic() || *b == b' '));
        }
    }

    #[test]
    fn head_has_length_but_no_body() {
        let c = Config::default();
        let mut p = Proto::default();
        let (_, _, out) = run(&mut p, &c, b"HEAD /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            out.contains("Content-Length: 10\r\n") && out.ends_with("\r\n\r\n"),
            "{out}"
        );
    }

    #[test]
    fn oversized_head_and_body_get_431_and_413() {
        let c = Config {
            max_header_bytes: 64,
            max_body_bytes: 10,
            ..Config::default()
        };
        let mut p = Proto::default();
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "y".repeat(100));
        let (_, o, out) = run(&mut p, &c, big.as_bytes());
        assert!(matches!(o, Outcome::Close(Reason::BadRequest, _)));
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        let mut p = Proto::default();
        let (_, _, out) = run(
            &mut p,
            &c,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
        );
        assert!(
            out.starts_with("HTTP/1.1 413 ") && out.contains("Connection: close"),
            "{out}"
        );
    }

    #[test]
    fn a_push_request_hands_over_with_the_bytes_after_its_head() {
        let c = Config::default();
        let mut p = Proto::default();
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /publish?room=r HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (n, o, out) = run(&mut p, &c, input);
        assert_eq!(o, Outcome::Push);
        assert_eq!(&input[n..], b"hello");
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        assert_eq!(p.served, 2);
        let start = p.take_push().unwrap();
        assert_eq!(start.req, PushReq::Publish { room: "r".into() });
        assert_eq!(start.body, BodyKind::Length(5));
        assert_eq!(start.close, None);
        assert!(p.take_push().is_none());
    }

    #[test]
    fn random_bytes_never_panic_the_state_machine() {
        let c = Config {
            max_header_bytes: 256,
            max_body_bytes: 64,
            ..Config::default()
        };
        let mut x: u64 = 12345;
        let pieces: [&[u8]; 8] = [
            GET,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"\x00\xff\x16",
            b"GET /delay/0 HTTP/1.0\r\n",
            b"HEAD /bytes/3 HTTP/1.1\r\n",
        ];
        for _ in 0..5000 {
            let mut buf = Vec::new();
            for _ in 0..6 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1442695040888963407);
                let piece = pieces[(x >> 60) as usize % pieces.len()];
                let cut = (x >> 20) as usize % (piece.len() + 1);
                buf.extend_from_slice(&piece[..cut]);
            }
            let mut p = Proto::default();
            let (n, _, _) = run(&mut p, &c, &buf);
            assert!(n <= buf.len());
        }
    }
}
