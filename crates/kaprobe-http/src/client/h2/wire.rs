//! A small HTTP/2 client over raw frames, for the measurements where the client must do
//! exactly what it is told and see everything the server does: keep reading after a GOAWAY
//! (a second GOAWAY, a PING, then FIN or RST), open a stream after a GOAWAY on purpose (as a
//! buggy pool would), ping at chosen instants. It acknowledges SETTINGS and PINGs as RFC 9113
//! requires, opens flow-control windows wide once (so response bodies never stall) and
//! decodes nothing of HPACK but the `:status` of a response.
//!
//! Frames are cut from the byte stream here and summarised by [`crate::h2wire::Scanner`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::client::conn::{IdleEnd, Io, OpenTimes};
use crate::client::target::Target;
use crate::client::tls::{client_config, server_name, TlsOptions};
use crate::h2wire::{self, Frame, Kind, Scanner, FLAG_END_HEADERS, FLAG_END_STREAM};
use crate::Error;

/// The largest frame payload accepted (our SETTINGS_MAX_FRAME_SIZE stays at the default).
const MAX_FRAME: usize = h2wire::DEFAULT_MAX_FRAME as usize;
/// The flow-control window opened once at the start (RFC 9113 section 6.9: 2^31-1 at most).
const WINDOW: u32 = 0x7fff_ffff;

/// Resolves once, then opens TCP (h2c, prior knowledge) or TLS (ALPN `h2`) connections.
#[derive(Clone)]
pub struct H2Connector {
    pub target: Target,
    pub addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl H2Connector {
    /// Resolve the host (bounded by `timeout`); with `tls`, prepare rustls offering only `h2`.
    pub async fn new(
        target: Target,
        tls: Option<&TlsOptions>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let tls = match tls {
            None => None,
            Some(opts) => {
                let mut config = (*client_config(opts)?).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                Some((Arc::new(config), server_name(&target.host)?))
            }
        };
        let host = target.host.clone();
        let (addr, addrs) = crate::client::conn::resolve(host, target.port, timeout).await?;
        Ok(Self {
            target,
            addr,
            addrs,
            tls,
        })
    }

    /// True for TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The `:scheme` pseudo-header.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// Open the first connection, trying each resolved address in turn; later connections
    /// go to the address that worked.
    pub async fn open_first(
        &mut self,
        timeout: Duration,
    ) -> Result<(Box<dyn Io>, OpenTimes), Error> {
        let this = &*self;
        let stops = |e: &Error| {
            matches!(
                e,
                Error::Tls { .. } | Error::ConnectTimeout { .. } | Error::NotHttp2 { .. }
            )
        };
        let r = crate::client::conn::first_that_opens(
            &this.addrs,
            &this.target.host,
            timeout,
            stops,
            |a, left| this.open_to(a, left),
        )
        .await;
        crate::client::conn::keep_address(&mut self.addr, &self.addrs, r)
    }

    /// Open one connection: TCP, then for TLS the handshake, which must select `h2`.
    pub async fn open(&self, timeout: Duration) -> Result<(Box<dyn Io>, OpenTimes), Error> {
        self.open_to(self.addr, timeout).await
    }

    /// Open one connection to `addr`.
    async fn open_to(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(Box<dyn Io>, OpenTimes), Error> {
        let start = Instant::now();
        let tcp = crate::client::conn::connect_tcp(&self.target.host, addr, timeout).await?;
        let connect = start.elapsed();
        let Some((config, name)) = &self.tls else {
            return Ok((
                Box::new(tcp),
                OpenTimes {
                    connect,
                    tls_handshake: None,
                },
            ));
        };
        let hs = Instant::now();
        let left = timeout.saturating_sub(connect);
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let what = || format!("handshake with {addr}");
        let stream = match tokio::time::timeout(left, connector.connect(name.clone(), tcp)).await {
            Err(_) => {
                return Err(Error::Tls {
                    what: what(),
                    reason: format!("no answer within {:.2}s", left.as_secs_f64()),
                })
            }
            Ok(Err(e)) => {
                let plain = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::InvalidMessage(
                                rustls::InvalidMessage::InvalidContentType
                            )
                        )
                    });
                let no_alpn = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::AlertReceived(
                                rustls::AlertDescription::NoApplicationProtocol
                            )
                        )
                    });
                if no_alpn {
                    return Err(Error::NotHttp2 {
                        what: format!("TLS handshake with {addr}"),
                        detail: "the server will not speak HTTP/2: asked for h2 by ALPN, it answered no_application_protocol; probe it without --http2".into(),
                    });
                }
                let reason = if plain {
                    let rest = self
                        .target
                        .url
                        .trim()
                        .split_once("://")
                        .map_or(self.target.url.as_str(), |(_, r)| r);
                    format!("the server answered in plain text, not TLS: for HTTP/2 without TLS use h2c://{rest}")
                } else {
                    e.to_string()
                };
                return Err(Error::Tls {
                    what: what(),
                    reason,
                });
            }
            Ok(Ok(s)) => s,
        };
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2") {
            let chose = match alpn {
                Some(p) => format!("it selected '{}'", String::from_utf8_lossy(&p)),
                None => "it selected no protocol".into(),
            };
            return Err(Error::NotHttp2 {
                what: format!("TLS handshake with {addr}"),
                detail: format!(
                    "the server will not speak HTTP/2: asked for h2 by ALPN, {chose}; probe it without --http2"
                ),
            });
        }
        Ok((
            Box::new(stream),
            OpenTimes {
                connect,
                tls_handshake: Some(hs.elapsed()),
            },
        ))
    }

    /// Open a connection and start HTTP/2 on it (prefaces exchanged).
    pub async fn start(&self, timeout: Duration) -> Result<Raw, Error> {
        let deadline = Instant::now() + timeout;
        let (io, _) = self.open(timeout).await?;
        Raw::start(io, self.addr, deadline).await
    }
}

/// What a request looks like on the wire: a header block (and for gRPC a body).
#[derive(Clone, Debug)]
pub struct ReqSpec {
    pub block: Vec<u8>,
    pub body: Option<Vec<u8>>,
}

impl ReqSpec {
    /// A GET (or the gRPC health check with `grpc`) for `path` on the connector's target.
    pub fn new(c: &H2Connector, path: &str, grpc: bool) -> ReqSpec {
        let mut b = Vec::with_capacity(128);
        if grpc {
            b.push(0x83); // :method POST (static table 3)
        } else {
            b.push(0x82); // :method GET (static table 2)
        }
        b.push(if c.is_tls() { 0x87 } else { 0x86 }); // :scheme https / http
        if path == "/" {
            b.push(0x84); // :path / (static table 4)
        } else {
            literal(&mut b, 4, path.as_bytes());
        }
        literal(&mut b, 1, c.target.host_header().as_bytes()); // :authority
        literal(&mut b, 58, crate::h1::USER_AGENT.as_bytes()); // user-agent
        if grpc {
            literal(&mut b, 31, b"application/grpc"); // content-type
            b.push(0x00); // literal without indexing, new name
            string(&mut b, b"te");
            string(&mut b, b"trailers");
        } else {
            literal(&mut b, 19, b"*/*"); // accept
        }
        ReqSpec {
            block: b,
            // A gRPC message: not compressed, length 0 (an empty HealthCheckRequest).
            body: grpc.then(|| vec![0u8; 5]),
        }
    }
}

impl ReqSpec {
    /// A request with `method` (GET, HEAD or POST; a POST carries a small text body).
    pub fn with_method(c: &H2Connector, path: &str, method: &str) -> ReqSpec {
        let mut spec = ReqSpec::new(c, path, false);
        match method {
            "POST" => {
                spec.block[0] = 0x83;
                literal(&mut spec.block, 31, b"text/plain");
                spec.body = Some(b"kaprobe\n".to_vec());
            }
            "HEAD" => {
                let mut b = Vec::with_capacity(spec.block.len() + 6);
                literal(&mut b, 2, b"HEAD");
                b.extend_from_slice(&spec.block[1..]);
                spec.block = b;
            }
            _ => {}
        }
        spec
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1); `flags` fills the bits
/// above the prefix in the first byte.
fn integer(out: &mut Vec<u8>, n: u32, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// A literal header field without indexing, its name from the static table (RFC 7541
/// section 6.2.2): the server's decoder state never depends on ours.
fn literal(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    integer(out, 4, 0x00, name_index);
    string(out, value);
}

/// What the next step on a connection brought.
#[derive(Debug)]
pub enum Ev {
    Frame(Instant, Frame),
    /// The transport ended: FIN (or a TLS close), RST, or another error.
    End(IdleEnd, Instant),
    /// The deadline passed first.
    Timeout,
}

/// One HTTP/2 connection driven frame by frame.
pub struct Raw {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    scan: Scanner,
    next_stream: u32,
    pub addr: SocketAddr,
    /// SETTINGS_MAX_CONCURRENT_STREAMS from the server's SETTINGS (None: not sent).
    pub max_concurrent_streams: Option<u32>,
    /// The `:status` of each response HEADERS frame that could be decoded, by stream.
    pub statuses: Vec<(u32, u16)>,
    ended: Option<(IdleEnd, Instant)>,
    pings_sent: u64,
}

impl Raw {
    /// Send the client preface and SETTINGS, then read the server's preface (its SETTINGS).
    /// A server that answers in HTTP/1.x, or closes, is not speaking HTTP/2.
    pub async fn start(io: Box<dyn Io>, addr: SocketAddr, deadline: Instant) -> Result<Raw, Error> {
        let mut raw = Raw {
            io,
            buf: Vec::with_capacity(16 * 1024),
            scan: Scanner::server_to_client(),
            next_stream: 1,
            addr,
            max_concurrent_streams: None,
            statuses: Vec::new(),
            ended: None,
            pings_sent: 0,
        };
        let mut hello = h2wire::PREFACE.to_vec();
        hello.extend(h2wire::settings(
            false,
            &[
                (h2wire::SETTINGS_ENABLE_PUSH, 0),
                (h2wire::SETTINGS_INITIAL_WINDOW_SIZE, WINDOW),
            ],
        ));
        hello.extend(h2wire::frame(
            Kind::WindowUpdate,
            0,
            0,
            &(WINDOW - 65_535).to_be_bytes(),
        ));
        let what = format!("HTTP/2 connection preface to {addr}");
        raw.write(&hello).await.map_err(|e| Error::Io {
            what: what.clone(),
            source: e,
        })?;
        // The first bytes must be a SETTINGS frame (RFC 9113 section 3.4).
        loop {
            if raw.buf.len() >= 9 {
                if raw.buf[3] == Kind::Settings.as_u8() && raw.buf[4] & h2wire::FLAG_ACK == 0 {
                    break;
                }
                return Err(Error::NotHttp2 {
                    what,
                    detail: not_h2(&raw.buf),
                });
            }
            if raw.buf.len() >= 5 && raw.buf.starts_with(b"HTTP/") {
                return Err(Error::NotHttp2 {
                    what,
                    detail: not_h2(&raw.buf),
                });
            }
            match tokio::time::timeout_at(deadline, raw.fill()).await {
                Err(_) => {
                    return Err(Error::NoAnswer {
                        what: format!("{what} (waiting for the server's SETTINGS)"),
                        after: deadline.saturating_duration_since(Instant::now()),
                    })
                }
                Ok(Ok(0)) => {
                    return Err(Error::NotHttp2 {
                        what,
                        detail: "the server closed the connection instead of sending its SETTINGS: it does not speak HTTP/2 with prior knowledge".into(),
                    })
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(Error::NotHttp2 {
                        what,
                        detail: format!(
                            "the connection failed before the server's SETTINGS ({}): it does not speak HTTP/2 with prior knowledge",
                            kaprobe_sock::fmt::os_error(&e)
                        ),
                    })
                }
            }
        }
        Ok(raw)
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Send a request on a new stream; its stream id.
    pub async fn request(&mut self, req: &ReqSpec) -> std::io::Result<u32> {
        let id = self.next_stream;
        self.next_stream += 2;
        let mut bytes = Vec::with_capacity(req.block.len() + 32);
        let mut flags = FLAG_END_HEADERS;
        if req.body.is_none() {
            flags |= FLAG_END_STREAM;
        }
        bytes.extend(h2wire::frame(Kind::Headers, flags, id, &req.block));
        if let Some(body) = &req.body {
            bytes.extend(h2wire::frame(Kind::Data, FLAG_END_STREAM, id, body));
        }
        self.write(&bytes).await?;
        Ok(id)
    }

    /// Send a PING with a fresh opaque value; the value.
    pub async fn ping(&mut self) -> std::io::Result<[u8; 8]> {
        self.pings_sent += 1;
        let opaque = self.pings_sent.to_be_bytes();
        self.write(&h2wire::ping(false, opaque)).await?;
        Ok(opaque)
    }

    /// The next frame or the end of the transport, before `deadline` (None: wait forever).
    /// SETTINGS and PINGs from the server are acknowledged here, and still reported.
    pub async fn next(&mut self, deadline: Option<Instant>) -> Ev {
        loop {
            if let Some((at, frame)) = self.cut() {
                match &frame {
                    Frame::Settings { ack: false, params } => {
                        for (id, v) in params {
                            if *id == h2wire::SETTINGS_MAX_CONCURRENT_STREAMS {
                                self.max_concurrent_streams = Some(*v);
                            }
                        }
                        let _ = self.write(&h2wire::settings(true, &[])).await;
                    }
                    Frame::Ping { ack: false, opaque } => {
                        let _ = self.write(&h2wire::ping(true, *opaque)).await;
                    }
                    _ => {}
                }
                return Ev::Frame(at, frame);
            }
            if let Some((end, at)) = self.ended {
                return Ev::End(end, at);
            }
            let got = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.fill()).await {
                    Err(_) => return Ev::Timeout,
                    Ok(r) => r,
                },
                None => self.fill().await,
            };
            let now = Instant::now();
            match got {
                Ok(0) => self.ended = Some((IdleEnd::Fin, now)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.ended = Some((IdleEnd::Fin, now));
                }
                Err(e) if crate::client::conn::is_reset(&e) => {
                    self.ended = Some((IdleEnd::Rst, now));
                }
                Err(_) => self.ended = Some((IdleEnd::Error, now)),
            }
        }
    }

    /// Cut one complete frame off the buffer. A frame larger than allowed ends the
    /// connection as an error (the rest of the stream cannot be trusted).
    fn cut(&mut self) -> Option<(Instant, Frame)> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if len > MAX_FRAME {
            self.buf.clear();
            self.ended.get_or_insert((IdleEnd::Error, Instant::now()));
            return None;
        }
        if self.buf.len() < 9 + len {
            return None;
        }
        let mut frames = Vec::with_capacity(1);
        self.scan.feed(&self.buf[..9 + len], &mut frames);
        if let Some(Frame::Headers { stream, .. }) = frames.first() {
            if let Some(s) = status(self.buf[4], &self.buf[9..9 + len]) {
                self.statuses.push((*stream, s));
            }
        }
        self.buf.drain(..9 + len);
        frames.pop().map(|f| (Instant::now(), f))
    }

    /// The decoded `:status` of a stream's response, if it was seen and could be decoded.
    pub fn status_of(&self, stream: u32) -> Option<u16> {
        self.statuses
            .iter()
            .rev()
            .find(|(s, _)| *s == stream)
            .map(|(_, st)| *st)
    }
}

/// Why the first bytes are not an HTTP/2 server preface, in words.
fn not_h2(buf: &[u8]) -> String {
    if buf.starts_with(b"HTTP/") {
        let line: String = String::from_utf8_lossy(&buf[..buf.len().min(40)])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        return format!(
            "the server answered in HTTP/1.x (\"{line}\"): it does not speak HTTP/2 with prior knowledge (h2c); probe it with http://"
        );
    }
    if buf.first() == Some(&0x15) || buf.first() == Some(&0x16) {
        return "the server answered with TLS: use --http2 https://".into();
    }
    "the first frame from the server is not SETTINGS: it does not speak HTTP/2".into()
}

/// The `:status` of a response header block, when it is the first field and encoded either
/// as a static-table index or as a literal with the `:status` name (plain or Huffman). The
/// dynamic table is not kept, so a status indexed there stays unknown.
pub fn status(flags: u8, payload: &[u8]) -> Option<u16> {
    let mut p = payload;
    if flags & 0x8 != 0 {
        // PADDED: pad length byte; the padding is at the end and never reached here
        p = p.get(1..)?;
    }
    if flags & 0x20 != 0 {
        // PRIORITY: stream dependency (4) and weight (1)
        p = p.get(5..)?;
    }
    // Dynamic table size updates (001xxxxx) may come first.
    while let Some(&b) = p.first() {
        if b & 0xe0 != 0x20 {
            break;
        }
        p = skip_integer(p, 5)?;
    }
    let first = *p.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal with incremental indexing (01), without indexing (0000) or never indexed
    // (0001), name index 8 (`:status`).
    let rest = if first & 0xc0 == 0x40 {
        (first & 0x3f == 8).then(|| &p[1..])?
    } else if first & 0xe0 == 0 {
        (first & 0x0f == 8).then(|| &p[1..])?
    } else {
        return None;
    };
    let h = *rest.first()?;
    let len = usize::from(h & 0x7f);
    let value = rest.get(1..1 + len)?;
    let digits = if h & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        value.to_vec()
    };
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn skip_integer(p: &[u8], n: u32) -> Option<&[u8]> {
    let max = (1u8 << n) - 1;
    if p.first()? & max != max {
        return p.get(1..);
    }
    let mut i = 1;
    while p.get(i)? & 0x80 != 0 {
        i += 1;
    }
    p.get(i + 1..)
}

/// Decode a Huffman-coded string made only of digits (RFC 7541 appendix B: '0'-'2' are 5-bit
/// codes 0-2, '3'-'9' are 6-bit codes 0x19-0x1f); anything else is None.
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(4);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            let five = (acc >> (bits - 5)) & 0x1f;
            if five <= 2 {
                out.push(b'0' + five as u8);
                bits -= 5;
                continue;
            }
            if bits < 6 {
                break;
            }
            let six = (acc >> (bits - 6)) & 0x3f;
            if (0x19..=0x1f).contains(&six) {
                out.push(b'3' + (six - 0x19) as u8);
                bits -= 6;
                continue;
            }
            // Padding: the most significant bits of EOS, all ones, fewer than 8.
            if bits < 8 && acc & ((1 << bits) - 1) == (1 << bits) - 1 {
                bits = 0;
                break;
            }
            return None;
        }
        acc &= (1u32 << bits) - 1;
    }
    if bits >= 8 || (bits > 0 && acc != (1 << bits) - 1) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_static_plain_and_huffman_encodings() {
        // RFC 7541 C.6.1 and C.6.2: `:status 302` and `307`, Huffman-coded.
        assert_eq!(status(0x4, &[0x48, 0x82, 0x64, 0x02]), Some(302));
        assert_eq!(status(0x4, &[0x48, 0x83, 0x64, 0x0e, 0xff]), Some(307));
        // RFC 7541 C.5.1: the same without Huffman.
        assert_eq!(status(0x4, b"\x48\x03302"), Some(302));
        assert_eq!(status(0x4, &[0x88]), Some(200));
        assert_eq!(status(0x4, &[0x8d]), Some(404));
        // literal without indexing, name index 8, "502"
        assert_eq!(status(0x4, b"\x08\x03502"), Some(502));
        // a dynamic table size update first
        assert_eq!(status(0x4, &[0x20, 0x88]), Some(200));
        // PADDED and PRIORITY prefixes
        assert_eq!(status(0x4 | 0x8, &[0, 0x88]), Some(200));
        assert_eq!(status(0x4 | 0x20, &[0, 0, 0, 0, 16, 0x88]), Some(200));
        // dynamic index, other names, empty and cut-off blocks: unknown, never a panic
        assert_eq!(status(0x4, &[0xbe]), None);
        assert_eq!(status(0x4, &[0x41, 0x01, b'x']), None);
        assert_eq!(status(0x4, &[]), None);
        assert_eq!(status(0x4, &[0x48, 0x85, 0x64]), None);
        assert_eq!(status(0x8, &[]), None);
    }

    #[test]
    fn huffman_digits_reject_non_digits_and_bad_padding() {
        assert_eq!(huffman_digits(&[0x64, 0x02]), Some(b"302".to_vec()));
        assert_eq!(huffman_digits(&[0xff, 0xff]), None);
        assert_eq!(huffman_digits(&[0x64, 0x00]), Some(b"300".to_vec()));
        assert_eq!(huffman_digits(&[0x64, 0x03]), None);
        assert_eq!(huffman_digits(&[]), Some(Vec::new()));
    }

    #[test]
    fn hpack_integers_follow_rfc_7541_c1() {
        let mut b = Vec::new();
        integer(&mut b, 5, 0, 10);
        assert_eq!(b, [10]);
        b.clear();
        integer(&mut b, 5, 0, 1337);
        assert_eq!(b, [31, 154, 10]);
        b.clear();
        integer(&mut b, 4, 0, 58);
        assert_eq!(b, [0x0f, 43]);
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A Raw over one end of an in-memory pipe, past the server preface.
    async fn raw_over(bytes: Vec<u8>, seed: u64) -> (Vec<Frame>, Vec<(u32, u16)>, bool) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            let mut x = seed;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = ((xorshift(&mut x) % 50) as usize + 1).min(rest.len());
                if server.write_all(&rest[..n]).await.is_err() {
                    return;
                }
                rest = &rest[n..];
            }
            let _ = server.shutdown().await;
            // drain what the client writes (preface, acks) until it goes away
            let mut sink = [0u8; 4096];
            while let Ok(n) = server.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let Ok(mut raw) = Raw::start(Box::new(client), addr, deadline).await else {
            writer.abort();
            return (Vec::new(), Vec::new(), false);
        };
        let mut frames = Vec::new();
        while let Ev::Frame(_, f) = raw
            .next(Some(Instant::now() + Duration::from_millis(200)))
            .await
        {
            frames.push(f);
        }
        writer.abort();
        (frames, raw.statuses.clone(), true)
    }

    #[tokio::test]
    async fn frames_cut_from_any_segmentation_match_the_scanner() {
        let mut stream = h2wire::settings(false, &[(h2wire::SETTINGS_MAX_CONCURRENT_STREAMS, 7)]);
        stream.extend(h2wire::ping(false, *b"pingpong"));
        stream.extend(h2wire::frame(Kind::Headers, FLAG_END_HEADERS, 1, &[0x88]));
        stream.extend(h2wire::frame(Kind::Data, FLAG_END_STREAM, 1, &[7u8; 9000]));
        stream.extend(h2wire::frame(
            Kind::Headers,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &[0x48, 0x82, 0x64, 0x02],
        ));
        stream.extend(h2wire::frame(Kind::RstStream, 0, 5, &7u32.to_be_bytes()));
        stream.extend(h2wire::goaway(5, 0, b"bye"));
        let mut want = Vec::new();
        Scanner::server_to_client().feed(&stream, &mut want);
        for seed in 1..40u64 {
            let (frames, statuses, started) = raw_over(stream.clone(), seed * 7919).await;
            assert!(started);
            assert_eq!(frames, want, "seed {seed}");
            assert_eq!(statuses, vec![(1, 200), (3, 302)]);
        }
    }

    #[tokio::test]
    async fn random_bytes_after_the_preface_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..60u64 {
            let mut stream = h2wire::settings(false, &[]);
            let len = (xorshift(&mut x) % 300) as usize;
            for _ in 0..len {
                stream.push(xorshift(&mut x) as u8);
            }
            // sometimes a plausible frame header with a random payload
            if round % 3 == 0 {
                let payload: Vec<u8> = (0..(xorshift(&mut x) % 40))
                    .map(|_| xorshift(&mut x) as u8)
                    .collect();
                stream.extend(h2wire::frame(
                    Kind::Headers,
                    (xorshift(&mut x) & 0x2d) as u8,
                    1,
                    &payload,
                ));
            }
            let _ = raw_over(stream, round + 1).await;
        }
        // and garbage where the preface should be
        for seed in 0..20u64 {
            let mut y = seed + 11;
            let junk: Vec<u8> = (0..64).map(|_| xorshift(&mut y) as u8).collect();
            let _ = raw_over(junk, seed + 1).await;
        }
    }

    #[test]
    fn not_h2_names_what_answered() {
        assert!(not_h2(b"HTTP/1.1 400 Bad Request\r\n").contains("HTTP/1.x"));
        assert!(not_h2(&[0x15, 3, 3, 0, 2]).contains("TLS"));
    }
}
