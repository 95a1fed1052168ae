//! One client connection (TCP or TLS) that sends HTTP/1.x requests and reads responses,
//! plus the idle watch that times how the server ends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request::{RequestOptions, Route};
use super::target::{Scheme, Target};
use super::tls::{client_config, server_name, TlsOptions};
use crate::{h1, Error};

/// Anything a connection can read and write.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest response head kaprobe accepts before calling the answer garbage.
const MAX_HEAD: usize = 64 * 1024;

/// Resolves once, then opens connections to the target.
#[derive(Clone)]
pub struct Connector {
    pub target: Target,
    /// The address connections go to (the first resolved one that accepted, once
    /// [`Connector::open_first`] ran).
    pub addr: SocketAddr,
    /// Every resolved address, in resolver order.
    pub addrs: Vec<SocketAddr>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The user's request options (`-H`, `-X`, `--data`, ...).
    req: Arc<RequestOptions>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How long the steps of opening a connection took.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimes {
    pub connect: Duration,
    pub tls_handshake: Option<Duration>,
}

impl Connector {
    /// Resolve the target's host (bounded by `timeout`) and prepare TLS if needed.
    pub async fn new(target: Target, tls: &TlsOptions, timeout: Duration) -> Result<Self, Error> {
        Self::new_with(target, tls, timeout, &RequestOptions::default()).await
    }

    /// As [`Connector::new`], with the user's request options: `--connect-to` and
    /// `--resolve` decide where connections go (the Host header and the TLS server name stay
    /// the URL's); `-H`, `-X` and `--data` shape every request.
    pub async fn new_with(
        target: Target,
        tls: &TlsOptions,
        timeout: Duration,
        req: &RequestOptions,
    ) -> Result<Self, Error> {
        let tls = match target.scheme {
            Scheme::Http => None,
            Scheme::Https => Some((client_config(tls)?, server_name(&target.host)?)),
        };
        let req = Arc::new(req.clone());
        let (host, port) = match req.route(&target.host, target.port) {
            Route::Pinned(addrs) => {
                let Some(addr) = addrs.first().copied() else {
                    return Err(Error::InvalidOption(format!(
                        "--resolve for {}:{} gives no address",
                        target.host, target.port
                    )));
                };
                return Ok(Self {
                    target,
                    addr,
                    addrs,
                    tls,
                    req,
                });
            }
            Route::Lookup(h, p) => (h, p),
        };
        let (addr, addrs) = resolve(host, port, timeout).await?;
        Ok(Self {
            target,
            addr,
            addrs,
            tls,
            req,
        })
    }

    /// The method a request sent as `method` really uses: `-X`, else POST with `--data`.
    pub fn method(&self, method: &str) -> String {
        self.req.method_or(method)
    }

    /// Open the first connection, trying each resolved address in turn (`localhost` may be
    /// `::1` and `127.0.0.1`); later connections go to the address that worked. The error is
    /// the first address's when none works.
    pub async fn open_first(&mut self, timeout: Duration) -> Result<(Conn, OpenTimes), Error> {
        let this = &*self;
        // A TLS or timeout failure is about the server, not the address: stop.
        let stops = |e: &Error| matches!(e, Error::Tls { .. } | Error::ConnectTimeout { .. });
        let r = first_that_opens(&this.addrs, &this.target.host, timeout, stops, |a, left| {
            this.open_to(a, left)
        })
        .await;
        keep_address(&mut self.addr, &self.addrs, r)
    }

    /// Open one connection: TCP connect, then the TLS handshake for https.
    pub async fn open(&self, timeout: Duration) -> Result<(Conn, OpenTimes), Error> {
        self.open_to(self.addr, timeout).await
    }

    /// Open one connection to `addr`.
    async fn open_to(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(Conn, OpenTimes), Error> {
        let start = Instant::now();
        let tcp = connect_tcp(&self.target.host, addr, timeout).await?;
        let connect = start.elapsed();
        let Some((config, name)) = &self.tls else {
            return Ok((
                Conn::new(Box::new(tcp)),
                OpenTimes {
                    connect,
                    tls_handshake: None,
                },
            ));
        };
        let hs_start = Instant::now();
        let left = timeout.saturating_sub(connect);
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stream = match tokio::time::timeout(left, connector.connect(name.clone(), tcp)).await {
            Err(_) => {
                return Err(Error::Tls {
                    what: format!("handshake with {addr}"),
                    reason: format!("no answer within {:.2}s", left.as_secs_f64()),
                })
            }
            Ok(Err(e)) => {
                return Err(Error::Tls {
                    what: format!("handshake with {addr}"),
                    reason: tls_failure(&e, &self.target),
                })
            }
            Ok(Ok(s)) => s,
        };
        Ok((
            Conn::new(Box::new(stream)),
            OpenTimes {
                connect,
                tls_handshake: Some(hs_start.elapsed()),
            },
        ))
    }

    /// A request for the target's path (or `path`) with the Host header filled in.
    pub fn request(&self, method: &str, path: Option<&str>, version: HttpVersion) -> Vec<u8> {
        self.request_accepting(method, path, version, &[("Accept", "*/*")])
    }

    /// As [`Connector::request`], with `accept` (the `Accept` field and any that go with it)
    /// in place of `Accept: */*`.
    pub(crate) fn request_accepting(
        &self,
        method: &str,
        path: Option<&str>,
        version: HttpVersion,
        accept: &[(&str, &str)],
    ) -> Vec<u8> {
        let path = path.unwrap_or(&self.target.path);
        let method = self.req.method_or(method);
        let method = method.as_str();
        let mut fields = vec![("User-Agent", h1::USER_AGENT)];
        fields.extend_from_slice(accept);
        // Ask for keep-alive explicitly (as browsers do): some servers, Apache among them,
        // only send their `Keep-Alive: timeout, max` header when asked.
        if version != HttpVersion::Http10 {
            fields.push(("Connection", "keep-alive"));
        }
        let body: Option<&[u8]> = if let Some(b) = &self.req.body {
            Some(b)
        } else if method == "POST" || method == "PUT" {
            fields.push(("Content-Type", "text/plain"));
            Some(b"kaprobe\n")
        } else {
            None
        };
        let host = self.target.host_header();
        if *self.req == RequestOptions::default() {
            return h1::write_request(method, path, version.as_str(), &host, &fields, body);
        }
        let fields = self.req.fields(&host, &fields);
        h1::write_request_fields(method, path, version.as_str(), &fields, body)
    }
}

/// The request line's version and keep-alive wish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http11,
    /// HTTP/1.0 asking for keep-alive with `Connection: keep-alive`.
    Http10KeepAlive,
    /// HTTP/1.0 without any Connection header: the server should close after the response.
    Http10,
}

impl HttpVersion {
    fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http10KeepAlive | HttpVersion::Http10 => "HTTP/1.0",
        }
    }
}

/// Parsed `Keep-Alive: timeout=N, max=M`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeepAliveHeader {
    pub timeout: Option<f64>,
    pub max: Option<u64>,
}

impl KeepAliveHeader {
    /// Parse the header value; unknown parameters are ignored.
    pub fn parse(v: &str) -> Self {
        let mut out = Self::default();
        for part in v.split(',') {
            let Some((k, val)) = part.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "timeout" => out.timeout = val.parse::<f64>().ok().filter(|t| t.is_finite()),
                "max" => out.max = val.parse().ok(),
                _ => {}
            }
        }
        out
    }
}

/// One response, with what matters for keep-alive.
#[derive(Debug, Clone)]
pub struct Response {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The body ran to the end of the connection (no length given).
    pub body_until_close: bool,
    /// The `Keep-Alive` header, if any.
    pub keep_alive: Option<KeepAliveHeader>,
    /// The raw `Connection` header value(s), lower-cased.
    pub connection: Option<String>,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, token: &str) -> bool {
        self.connection
            .as_deref()
            .is_some_and(|c| c.split(',').any(|t| t.trim() == token))
    }

    /// True when the server said it will close (or will, by HTTP/1.0 rules).
    pub fn will_close(&self) -> bool {
        if self.body_until_close || self.has_token("close") {
            return true;
        }
        self.minor_version == 0 && !self.has_token("keep-alive")
    }

    /// True when the response carries `Connection: keep-alive`.
    pub fn says_keep_alive(&self) -> bool {
        self.has_token("keep-alive")
    }
}

/// Why reading a response failed (an observation; callers turn fatal ones into [`Error`]).
#[derive(Debug)]
pub enum ReadFail {
    /// The connection ended (FIN) before any byte of the response.
    Eof,
    /// The connection was reset before any byte of the response.
    Reset,
    /// Nothing (or not all) arrived before the deadline; `got` bytes had arrived.
    Timeout { got: usize },
    /// The bytes are not an HTTP/1.x response.
    Garbage(String),
    /// The connection ended or was reset after part of the response.
    Truncated(String),
    /// Writing the request failed.
    Write(std::io::Error),
    /// Any other I/O error.
    Io(std::io::Error),
}

impl ReadFail {
    /// Short snake_case name used in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadFail::Eof => "empty_reply",
            ReadFail::Reset => "reset",
            ReadFail::Timeout { .. } => "no_answer",
            ReadFail::Garbage(_) => "garbage",
            ReadFail::Truncated(_) => "truncated",
            ReadFail::Write(e) if is_reset(e) => "reset",
            ReadFail::Write(_) => "write_error",
            ReadFail::Io(_) => "io_error",
        }
    }

    /// Turn into the crate error, saying what was being done.
    pub fn into_error(self, what: String, waited: Duration) -> Error {
        match self {
            ReadFail::Eof => Error::NoResponse {
                what,
                detail: "the server closed the connection without answering".into(),
            },
            ReadFail::Reset => Error::NoResponse {
                what,
                detail: "the server reset the connection without answering".into(),
            },
            ReadFail::Timeout { got: 0 } => Error::NoAnswer {
                what,
                after: waited,
            },
            ReadFail::Timeout { got } => Error::NoAnswer {
                what: format!("{what} ({got} bytes of an incomplete response arrived)"),
                after: waited,
            },
            ReadFail::Garbage(detail) => Error::Garbage { what, detail },
            ReadFail::Truncated(detail) => Error::ClosedMidResponse { what, detail },
            ReadFail::Write(source) | ReadFail::Io(source) => Error::Io { what, source },
        }
    }
}

/// True for the errors a reset connection gives (RST received, or writing after one).
pub(super) fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// How an idle connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// The server closed with FIN (read returned 0; for TLS also a close_notify).
    Fin,
    /// The server reset the connection (ECONNRESET).
    Rst,
    /// Some other read error.
    Error,
}

/// A client connection with its read buffer.
pub struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// When the last response was completely read (start of idleness).
    pub idle_since: Instant,
    /// Responses read on this connection.
    pub responses: u64,
}

impl Conn {
    /// Wrap any byte stream (a TCP or TLS stream, or an in-memory pipe in tests).
    pub fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(16 * 1024),
            idle_since: Instant::now(),
            responses: 0,
        }
    }

    /// Send raw request bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ReadFail> {
        self.io.write_all(bytes).await.map_err(ReadFail::Write)?;
        self.io.flush().await.map_err(ReadFail::Write)
    }

    /// Send one request and read its response, all before `deadline`.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        head: bool,
        deadline: Instant,
    ) -> Result<Response, ReadFail> {
        match tokio::time::timeout_at(deadline, self.send(request)).await {
            Err(_) => return Err(ReadFail::Timeout { got: 0 }),
            Ok(r) => r?,
        }
        self.read_response(head, deadline).await
    }

    /// Read more bytes into the buffer; Ok(0) on FIN.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadFail> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
            Err(_) => Err(ReadFail::Timeout {
                got: self.buf.len(),
            }),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            Ok(Err(e)) if is_reset(&e) => {
                if self.buf.is_empty() {
                    Err(ReadFail::Reset)
                } else {
                    Err(ReadFail::Truncated(format!(
                        "reset after {} bytes",
                        self.buf.len()
                    )))
                }
            }
            Ok(Err(e)) => Err(ReadFail::Io(e)),
        }
    }

    /// Read one response (skipping 1xx interim responses).
    pub async fn read_response(
        &mut self,
        head: bool,
        deadline: Instant,
    ) -> Result<Response, ReadFail> {
        loop {
            let (resp, used) = self.read_head(deadline).await?;
            self.buf.drain(..used);
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            let resp = self.read_body(resp, head, deadline).await?;
            self.responses += 1;
            self.idle_since = Instant::now();
            return Ok(resp);
        }
    }

    async fn read_head(&mut self, deadline: Instant) -> Result<(Response, usize), ReadFail> {
        loop {
            if !self.buf.is_empty() {
                match h1::parse_response_head::<128>(&self.buf) {
                    Ok(Some((head, used))) => return Ok((to_response(head)?, used)),
                    Ok(None) => {
                        if self.buf.len() > MAX_HEAD {
                            return Err(ReadFail::Garbage(format!(
                                "no end of the response head within {MAX_HEAD} bytes"
                            )));
                        }
                    }
                    Err(e) => return Err(ReadFail::Garbage(garbage_detail(&self.buf, &e))),
                }
            }
            let had = self.buf.len();
            if self.fill(deadline).await? == 0 {
                return Err(if had == 0 {
                    ReadFail::Eof
                } else {
                    ReadFail::Truncated(format!("closed after {had} bytes of the response head"))
                });
            }
        }
    }

    async fn read_body(
        &mut self,
        mut resp: Response,
        head: bool,
        deadline: Instant,
    ) -> Result<Response, ReadFail> {
        if head || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body_len = self.read_chunked(deadline).await?;
            return Ok(resp);
        }
        if let Some(cl) = resp.header("content-length") {
            let len: u64 = cl
                .trim()
                .parse()
                .map_err(|_| ReadFail::Garbage(format!("Content-Length '{cl}' is not a number")))?;
            let mut left = len;
            loop {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.drain(..take);
                left -= take as u64;
                if left == 0 {
                    break;
                }
                if self
                    .fill(deadline)
                    .await
                    .map_err(|e| truncate(e, len - left))?
                    == 0
                {
                    return Err(ReadFail::Truncated(format!(
                        "closed after {} of {len} body bytes",
                        len - left
                    )));
                }
            }
            resp.body_len = len;
            return Ok(resp);
        }
        // No length: the body runs to the close.
        let mut total = self.buf.len() as u64;
        self.buf.clear();
        loop {
            let n = self.fill(deadline).await.map_err(|e| truncate(e, total))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            self.buf.clear();
        }
        resp.body_len = total;
        resp.body_until_close = true;
        Ok(resp)
    }

    /// Read a chunked body (and its trailers), leaving what follows it in the buffer.
    async fn read_chunked(&mut self, deadline: Instant) -> Result<u64, ReadFail> {
        let mut dec = h1::Chunked::new();
        loop {
            let used = dec
                .feed(&self.buf, u64::MAX)
                .map_err(|e| ReadFail::Garbage(format!("bad chunked body: {}", e.detail)))?;
            self.buf.drain(..used);
            if dec.done() {
                return Ok(dec.total);
            }
            let got = dec.received();
            if self.fill(deadline).await.map_err(|e| truncate(e, got))? == 0 {
                return Err(ReadFail::Truncated(format!(
                    "closed in the chunked body after {got} bytes"
                )));
            }
        }
    }

    /// Wait while idle for the server to end the connection (or send something).
    /// Returns how it ended and when, or the number of bytes that arrived instead.
    pub async fn watch(&mut self) -> Result<(IdleEnd, Instant), usize> {
        let mut chunk = [0u8; 4096];
        match self.io.read(&mut chunk).await {
            Ok(0) => Ok((IdleEnd::Fin, Instant::now())),
            Ok(n) => Err(n),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Ok((IdleEnd::Fin, Instant::now()))
            }
            Err(e) if is_reset(&e) => Ok((IdleEnd::Rst, Instant::now())),
            Err(_) => Ok((IdleEnd::Error, Instant::now())),
        }
    }

    /// True when bytes the server sent unasked are waiting in the buffer.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The byte stream and the bytes already read past the last response head (push
    /// channels take over the connection after the handshake).
    pub fn into_parts(self) -> (Box<dyn Io>, Vec<u8>) {
        (self.io, self.buf)
    }
}

fn truncate(e: ReadFail, got: u64) -> ReadFail {
    match e {
        ReadFail::Eof | ReadFail::Reset => {
            ReadFail::Truncated(format!("ended after {got} body bytes"))
        }
        other => other,
    }
}

fn garbage_detail(buf: &[u8], e: &httparse::Error) -> String {
    let shown: String = String::from_utf8_lossy(&buf[..buf.len().min(40)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    format!("{e}; it starts with \"{shown}\"")
}

fn to_response(head: h1::ResponseHead) -> Result<Response, ReadFail> {
    let status = head
        .status
        .ok_or_else(|| ReadFail::Garbage("no status code".into()))?;
    let minor_version = head.minor_version;
    let headers = head.fields;
    let joined = |name: &str| {
        let vals: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    };
    let keep_alive = joined("keep-alive").map(|v| KeepAliveHeader::parse(&v));
    let connection = joined("connection").map(|v| v.to_ascii_lowercase());
    Ok(Response {
        minor_version,
        status,
        headers,
        body_len: 0,
        body_until_close: false,
        keep_alive,
        connection,
    })
}

/// Why a TLS handshake failed, in words: a server that answered in plain HTTP (its first
/// bytes are not a TLS record) gets the `http://` URL to use instead.
fn tls_failure(e: &std::io::Error, target: &Target) -> String {
    let plain = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        });
    if plain {
        let scheme = if target
            .url
            .trim_start()
            .get(..4)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss:"))
        {
            "ws"
        } else {
            "http"
        };
        let rest = target
            .url
            .trim()
            .split_once("://")
            .map_or(target.url.as_str(), |(_, r)| r);
        return format!("the server answered in plain HTTP, not TLS: use {scheme}://{rest}");
    }
    e.to_string()
}

/// Point `addr` at the address that worked (at the first of `addrs` when none did) and
/// hand on what was opened, or the error.
pub(crate) fn keep_address<T>(
    addr: &mut SocketAddr,
    addrs: &[SocketAddr],
    r: Result<(SocketAddr, T), Error>,
) -> Result<T, Error> {
    match r {
        Ok((worked, c)) => {
            *addr = worked;
            Ok(c)
        }
        Err(e) => {
            if let Some(a) = addrs.first() {
                *addr = *a;
            }
            Err(e)
        }
    }
}

/// Try `open` on each of `addrs` in turn, sharing `timeout` among them: the address that
/// worked and what it opened, or, when none did, the first error (an error `stops` accepts
/// ends the search at once: it is about the server, not the address).
pub(crate) async fn first_that_opens<T, Fut>(
    addrs: &[SocketAddr],
    host: &str,
    timeout: Duration,
    stops: impl Fn(&Error) -> bool,
    mut open: impl FnMut(SocketAddr, Duration) -> Fut,
) -> Result<(SocketAddr, T), Error>
where
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut first_err = None;
    for &addr in addrs {
        match open(addr, deadline.saturating_duration_since(Instant::now())).await {
            Ok(c) => return Ok((addr, c)),
            Err(e) if stops(&e) => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Error::Resolve {
        host: host.to_owned(),
        reason: "the name has no addresses".into(),
    }))
}

/// A TCP connection to `addr` (for `host`) within `timeout`, with Nagle off:
/// [`Error::ConnectTimeout`] or [`Error::Connect`] when it cannot be had.
pub(crate) async fn connect_tcp(
    host: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, Error> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(Error::ConnectTimeout {
                host: host.to_string(),
                addr,
                after: timeout,
            })
        }
        Ok(Err(source)) => {
            return Err(Error::Connect {
                host: host.to_string(),
                addr,
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Resolve `host` (within `timeout`): the first address and all of them, or
/// [`Error::Resolve`] saying why not.
pub(crate) async fn resolve(
    host: String,
    port: u16,
    timeout: Duration,
) -> Result<(SocketAddr, Vec<SocketAddr>), Error> {
    let lookup = tokio::net::lookup_host((host.clone(), port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, lookup).await {
        Err(_) => {
            return Err(Error::Resolve {
                host,
                reason: format!("no answer within {:.2}s", timeout.as_secs_f64()),
            })
        }
        Ok(Err(e)) => {
            return Err(Error::Resolve {
                host,
                reason: e.to_string(),
            })
        }
        Ok(Ok(a)) => a.collect(),
    };
    match addrs.first().copied() {
        Some(addr) => Ok((addr, addrs)),
        None => Err(Error::Resolve {
            host,
            reason: "the name has no addresses".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `server_bytes` (then EOF) to a connection and read one response.
    async fn read_one(server_bytes: &'static [u8], head: bool) -> Result<Response, ReadFail> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = server.write_all(server_bytes).await;
            let _ = server.shutdown().await;
            // Keep the pipe's other end alive long enough to read everything.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let mut c = Conn::new(Box::new(client));
        c.read_response(head, Instant::now() + Duration::from_secs(2))
            .await
    }

    #[tokio::test]
    async fn content_length_chunked_and_close_delimited_bodies_are_framed() {
        let r = read_one(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5, max=99\r\n\r\nhello",
            false,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body_len, r.will_close()), (200, 5, false));
        assert_eq!(r.keep_alive.unwrap().max, Some(99));
        let r = read_one(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(r.body_len, 9);
        let r = read_one(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", false)
            .await
            .unwrap();
        assert!(r.body_until_close && r.will_close());
        assert_eq!(r.body_len, 13);
    }

    #[tokio::test]
    async fn interim_head_and_bodiless_responses_are_handled() {
        let r = read_one(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 204);
        assert!(r.will_close());
        let r = read_one(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true)
            .await
            .unwrap();
        assert_eq!(
            r.body_len, 0,
            "HEAD has no body whatever Content-Length says"
        );
        let r = read_one(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert!(!r.will_close() && r.says_keep_alive());
    }

    #[tokio::test]
    async fn garbage_truncation_and_silence_are_told_apart() {
        assert!(matches!(read_one(b"", false).await, Err(ReadFail::Eof)));
        assert!(matches!(
            read_one(b"SSH-2.0-OpenSSH\r\n\r\n", false).await,
            Err(ReadFail::Garbage(_))
        ));
        assert!(matches!(
            read_one(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false).await,
            Err(ReadFail::Truncated(_))
        ));
        assert!(matches!(
            read_one(b"HTTP/1.1 200 OK\r\nContent-Le", false).await,
            Err(ReadFail::Truncated(_))
        ));
        assert!(matches!(
            read_one(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).await,
            Err(ReadFail::Garbage(_))
        ));
        assert!(matches!(
            read_one(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            )
            .await,
            Err(ReadFail::Garbage(_))
        ));
        // Chunk data not followed by CRLF.
        assert!(matches!(
            read_one(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
                false
            )
            .await,
            Err(ReadFail::Garbage(_))
        ));
        // Nothing at all, connection open: a timeout, not a hang.
        let (client, _server) = tokio::io::duplex(1024);
        let mut c = Conn::new(Box::new(client));
        let r = c
            .read_response(false, Instant::now() + Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(ReadFail::Timeout { got: 0 })));
    }

    #[tokio::test]
    async fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: many shapes of broken responses.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet: &[u8] =
            b"HTP/1.0 2\r\n:;aZ-Content-Length: Transfer-Encoding: chunked 0f\x00\xff";
        for _ in 0..300 {
            let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let _ = read_one(leaked, x & 1 == 0).await;
        }
    }

    #[test]
    fn keep_alive_header_parses_timeout_and_max() {
        let k = KeepAliveHeader::parse("timeout=5, max=100");
        assert_eq!(k.timeout, Some(5.0));
        assert_eq!(k.max, Some(100));
        let k = KeepAliveHeader::parse("TIMEOUT=\"9\"");
        assert_eq!(k.timeout, Some(9.0));
        assert_eq!(k.max, None);
        assert_eq!(
            KeepAliveHeader::parse("garbage"),
            KeepAliveHeader::default()
        );
        assert_eq!(KeepAliveHeader::parse("timeout=inf").timeout, None);
    }
}
