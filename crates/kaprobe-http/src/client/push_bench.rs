//! `bench push`: what one delivered message costs on each push channel of one server.
//!
//! Four subscribers listen to the same room of a `kaprobe serve` (or compatible) server:
//! short polling (`/poll?since=N` every interval), long polling (`/poll?since=N&wait=D`),
//! Server-Sent Events (`/sse`) and WebSocket (`/ws`). A publisher posts N numbered messages
//! at a steady rate to `/publish`. Every subscriber socket counts the bytes it sends and
//! receives (headers, framing and idle polls included); every message's latency runs from
//! just before its publish request is written to the moment a subscriber has it.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::target::{Scheme, Target};
use crate::h1::{self, SseDecoder, SseItem};
use crate::Error;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Messages to publish. 1..=100000.
    pub messages: usize,
    /// Messages per second.
    pub rate: f64,
    /// Short polling interval.
    pub poll_interval: Duration,
    /// How long a long poll may be held by the server.
    pub long_poll_wait: Duration,
    /// Room name; `None` picks a fresh one, so earlier runs do not count.
    pub room: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 20,
            rate: 5.0,
            poll_interval: Duration::from_millis(100),
            long_poll_wait: Duration::from_secs(30),
            room: None,
        }
    }
}

/// One channel's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelResult {
    /// `short_polling`, `long_polling`, `sse` or `websocket`.
    pub channel: &'static str,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Bytes the subscriber's sockets sent and received, handshakes and headers included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// (sent + received) / delivered.
    pub bytes_per_message: Option<f64>,
    /// HTTP requests made (polling) or connections opened (SSE, WebSocket).
    pub requests: u64,
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    pub latency_max_s: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub room: String,
    pub messages: usize,
    pub rate: f64,
    pub poll_interval_s: f64,
    /// Size of one message's text.
    pub message_bytes: usize,
    pub channels: Vec<ChannelResult>,
    pub elapsed_s: f64,
}

/// A stream that counts the bytes through it.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Byte counters shared by all sockets of one channel.
#[derive(Clone, Default)]
struct Meter {
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// What every subscriber shares: the base target, publish times, the stop signal.
#[derive(Clone)]
struct Shared {
    target: Target,
    room: String,
    sent: Arc<Mutex<Vec<Option<Instant>>>>,
    stop: watch::Receiver<bool>,
    poll_interval: Duration,
}

/// One subscriber's tally.
#[derive(Default)]
struct Tally {
    seen: HashSet<usize>,
    latencies: Vec<Duration>,
    duplicates: u64,
    requests: u64,
}

impl Tally {
    /// Record a message text; returns true when every message has arrived.
    fn got(&mut self, text: &str, sh: &Shared, total: usize) -> bool {
        let now = Instant::now();
        if let Some(seq) = parse_seq(text) {
            if seq < total {
                if self.seen.insert(seq) {
                    let sent = sh
                        .sent
                        .lock()
                        .ok()
                        .and_then(|v| v.get(seq).copied().flatten());
                    if let Some(t) = sent {
                        self.latencies.push(now.saturating_duration_since(t));
                    }
                } else {
                    self.duplicates += 1;
                }
            }
        }
        self.seen.len() >= total
    }
}

const PREFIX: &str = "kaprobe-bench ";

fn message_text(seq: usize) -> String {
    format!("{PREFIX}{seq:06}")
}

fn parse_seq(text: &str) -> Option<usize> {
    text.strip_prefix(PREFIX)?.trim().parse().ok()
}

/// Run the benchmark against the server at `url` (http://HOST:PORT).
pub async fn bench_push(url: &str, opts: &BenchOptions) -> Result<BenchReport, Error> {
    let start = Instant::now();
    let target = Target::parse(url)?;
    if target.scheme != Scheme::Http {
        return Err(Error::BadUrl {
            url: url.to_string(),
            reason: "bench push speaks plain http:// only".into(),
        });
    }
    if opts.messages == 0 || !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(Error::InvalidOption(
            "bench push needs at least one message and a rate above 0".into(),
        ));
    }
    let room = opts.room.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("kaprobe-bench-{}-{nanos}", std::process::id())
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let sh = Shared {
        target: target.clone(),
        room: room.clone(),
        sent: Arc::new(Mutex::new(vec![None; opts.messages])),
        stop: stop_rx,
        poll_interval: opts.poll_interval,
    };
    let n = opts.messages;
    let meters: Vec<Meter> = (0..4).map(|_| Meter::default()).collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), Error>>(4);

    let ws = tokio::spawn(websocket(
        sh.clone(),
        meters[3].clone(),
        n,
        ready_tx.clone(),
    ));
    let sse = tokio::spawn(sse(sh.clone(), meters[2].clone(), n, ready_tx.clone()));
    let long = tokio::spawn(polling(
        sh.clone(),
        meters[1].clone(),
        n,
        Some(opts.long_poll_wait),
        ready_tx.clone(),
    ));
    let short = tokio::spawn(polling(
        sh.clone(),
        meters[0].clone(),
        n,
        None,
        ready_tx.clone(),
    ));
    let tasks = [short, long, sse, ws];
    drop(ready_tx);
    let stop_all = |tasks: &[tokio::task::JoinHandle<Result<Tally, Error>>]| {
        for t in tasks {
            t.abort();
        }
    };
    // Every subscriber must be listening before the first message goes out.
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(10), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                stop_all(&tasks);
                return Err(e);
            }
            Ok(None) | Err(_) => {
                stop_all(&tasks);
                return Err(Error::NoAnswer {
                    what: format!("subscribing to room {room} at {url}"),
                    after: Duration::from_secs(10),
                });
            }
        }
    }
    if let Err(e) = publish_all(&sh, opts).await {
        stop_all(&tasks);
        return Err(e);
    }
    // Let the last messages arrive: every subscriber stops by itself when it has all of
    // them; the rest are stopped after a grace period.
    let grace = (opts.poll_interval * 2).max(Duration::from_secs(2));
    let grace_end = Instant::now() + grace;
    let mut results = Vec::new();
    let names = ["short_polling", "long_polling", "sse", "websocket"];
    let mut stop_tx = Some(stop_tx);
    for (i, mut task) in tasks.into_iter().enumerate() {
        let joined = tokio::select! {
            r = &mut task => r,
            () = tokio::time::sleep_until(grace_end) => {
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(true);
                }
                match tokio::time::timeout(Duration::from_secs(2), &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        task.abort();
                        Ok(Ok(Tally::default()))
                    }
                }
            }
        };
        let tally = match joined {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e),
            Err(_) => Tally::default(),
        };
        results.push(summarise(names[i], &meters[i], tally, n));
    }
    if let Some(tx) = stop_tx.take() {
        let _ = tx.send(true);
    }
    Ok(BenchReport {
        url: url.to_string(),
        room,
        messages: n,
        rate: opts.rate,
        poll_interval_s: opts.poll_interval.as_secs_f64(),
        message_bytes: message_text(0).len(),
        channels: results,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

fn summarise(channel: &'static str, m: &Meter, mut t: Tally, total: usize) -> ChannelResult {
    t.latencies.sort();
    let pct = |p: usize| -> Option<f64> {
        if t.latencies.is_empty() {
            return None;
        }
        let idx = ((t.latencies.len() - 1) * p).div_ceil(100);
        t.latencies
            .get(idx.min(t.latencies.len() - 1))
            .map(Duration::as_secs_f64)
    };
    let sent = m.written.load(Ordering::Relaxed);
    let recv = m.read.load(Ordering::Relaxed);
    let delivered = t.seen.len() as u64;
    ChannelResult {
        channel,
        delivered,
        lost: (total as u64).saturating_sub(delivered),
        duplicates: t.duplicates,
        bytes_sent: sent,
        bytes_received: recv,
        #[allow(clippy::cast_precision_loss)]
        bytes_per_message: (delivered > 0).then(|| (sent + recv) as f64 / delivered as f64),
        requests: t.requests,
        latency_p50_s: pct(50),
        latency_p99_s: pct(99),
        latency_max_s: t.latencies.last().map(Duration::as_secs_f64),
    }
}

async fn connect(target: &Target, meter: &Meter) -> Result<Counted, Error> {
    let timeout = Duration::from_secs(5);
    let (_, addrs) = super::conn::resolve(target.host.clone(), target.port, timeout).await?;
    // Each resolved address in turn (`localhost` may be `::1` first), as the probes do.
    let stops = |e: &Error| matches!(e, Error::ConnectTimeout { .. });
    let (_, tcp) =
        super::conn::first_that_opens(&addrs, &target.host, timeout, stops, |a, left| {
            super::conn::connect_tcp(&target.host, a, left)
        })
        .await?;
    Ok(Counted {
        inner: tcp,
        read: meter.read.clone(),
        written: meter.written.clone(),
    })
}

fn get_request(target: &Target, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![("User-Agent", h1::USER_AGENT)];
    fields.extend_from_slice(extra);
    h1::write_request(
        "GET",
        path,
        "HTTP/1.1",
        &target.host_header(),
        &fields,
        None,
    )
}

/// A minimal keep-alive HTTP/1.1 client that returns whole bodies.
struct Http<S> {
    io: S,
    buf: Vec<u8>,
    what: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http<S> {
    fn new(io: S, what: String) -> Self {
        Self {
            io,
            buf: Vec::new(),
            what,
        }
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::NoResponse {
            what: self.what.clone(),
            detail: detail.into(),
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let mut chunk = [0u8; 16 * 1024];
        match self.io.read(&mut chunk).await {
            Ok(0) => Err(self.err("the server closed the connection")),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(source) => Err(Error::Io {
                what: self.what.clone(),
                source,
            }),
        }
    }

    /// Send a request, read the answer: status, headers (lower-case names) and the body.
    async fn call(&mut self, req: &[u8]) -> Result<(u16, Vec<(String, String)>, Vec<u8>), Error> {
        self.io.write_all(req).await.map_err(|source| Error::Io {
            what: self.what.clone(),
            source,
        })?;
        let (status, headers, used) = loop {
            match h1::parse_response_head::<64>(&self.buf) {
                Ok(Some((head, used))) => {
                    let headers: Vec<(String, String)> = head
                        .fields
                        .into_iter()
                        .map(|(name, value)| (name.to_ascii_lowercase(), value))
                        .collect();
                    break (head.status.unwrap_or(0), headers, used);
                }
                Ok(None) if self.buf.len() < 64 * 1024 => self.fill().await?,
                Ok(None) => return Err(self.err("response head too long")),
                Err(e) => {
                    return Err(Error::Garbage {
                        what: self.what.clone(),
                        detail: e.to_string(),
                    })
                }
            }
        };
        self.buf.drain(..used);
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut d = h1::Chunked::new();
            let mut out = Vec::new();
            loop {
                let taken = std::mem::take(&mut self.buf);
                d.decode(&taken, u64::MAX, &mut out)
                    .map_err(|e| self.err(format!("bad chunked body: {}", e.detail)))?;
                if d.done() {
                    break;
                }
                self.fill().await?;
            }
            out
        } else {
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        };
        Ok((status, headers, body))
    }
}

async fn publish_all(sh: &Shared, opts: &BenchOptions) -> Result<(), Error> {
    // The publisher's bytes are not counted against any channel.
    let io = connect(&sh.target, &Meter::default()).await?;
    let mut http = Http::new(io, format!("publishing to {}", sh.target.url));
    let t0 = Instant::now();
    let room = &sh.room;
    // Messages go out at the rate on average, each shifted by up to half a spacing
    // (a fixed pseudo-random sequence), so a polling clock never lines up with them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for seq in 0..opts.messages {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        #[allow(clippy::cast_precision_loss)]
        let jitter = (x % 1000) as f64 / 2000.0;
        #[allow(clippy::cast_precision_loss)]
        let at = t0 + Duration::from_secs_f64((seq as f64 + jitter) / opts.rate);
        tokio::time::sleep_until(at).await;
        let body = message_text(seq);
        let req = h1::write_request(
            "POST",
            &format!("/publish?room={room}"),
            "HTTP/1.1",
            &sh.target.host_header(),
            &[("Content-Type", "text/plain; charset=utf-8")],
            Some(body.as_bytes()),
        );
        if let Ok(mut v) = sh.sent.lock() {
            if let Some(slot) = v.get_mut(seq) {
                *slot = Some(Instant::now());
            }
        }
        let (status, _, resp) = http.call(&req).await?;
        if status != 200 {
            return Err(Error::NotPush {
                what: format!("POST /publish?room={room}"),
                detail: format!(
                    "the server answered {status} ({}): is it kaprobe serve with push channels?",
                    String::from_utf8_lossy(&resp).trim()
                ),
            });
        }
    }
    Ok(())
}

type Ready = tokio::sync::mpsc::Sender<Result<(), Error>>;

/// Connect a client; on failure, hand the error to the run through `ready` (the client then
/// ends with nothing received).
async fn connect_or_report(target: &Target, meter: &Meter, ready: &Ready) -> Option<Counted> {
    match connect(target, meter).await {
        Ok(io) => Some(io),
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            None
        }
    }
}

/// Short polling (`wait` = None) or long polling.
async fn polling(
    mut sh: Shared,
    meter: Meter,
    total: usize,
    wait: Option<Duration>,
    ready: Ready,
) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    let Some(io) = connect_or_report(&sh.target, &meter, &ready).await else {
        return Ok(tally);
    };
    let kind = if wait.is_some() { "long" } else { "short" };
    let mut http = Http::new(io, format!("{kind} polling {}", sh.target.url));
    let _ = ready.send(Ok(())).await;
    let mut since = 0u64;
    let mut next = Instant::now();
    loop {
        if *sh.stop.borrow() {
            break;
        }
        let path = match wait {
            None => format!("/poll?room={}&since={since}", sh.room),
            Some(w) => format!(
                "/poll?room={}&since={since}&wait={}ms",
                sh.room,
                w.as_millis()
            ),
        };
        let req = get_request(&sh.target, &path, &[("Accept", "application/json")]);
        tally.requests += 1;
        let answer = tokio::select! {
            r = http.call(&req) => r,
            _ = sh.stop.changed() => break,
        };
        // A server may close a keep-alive connection (request limit, idle timeout): a
        // polling client opens a new one and asks again.
        let answer = match answer {
            Ok(a) => a,
            Err(Error::NoResponse { .. } | Error::Io { .. }) => {
                http = Http::new(connect(&sh.target, &meter).await?, http.what.clone());
                tally.requests += 1;
                tokio::select! {
                    r = http.call(&req) => r?,
                    _ = sh.stop.changed() => break,
                }
            }
            Err(e) => return Err(e),
        };
        let (status, _, body) = answer;
        if status != 200 {
            return Err(Error::NotPush {
                what: format!("GET {path}"),
                detail: format!("the server answered {status}, not 200 with JSON"),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Garbage {
            what: format!("GET {path}"),
            detail: format!("the body is not JSON ({e})"),
        })?;
        let mut done = false;
        if let Some(msgs) = v.get("messages").and_then(serde_json::Value::as_array) {
            for m in msgs {
                if let Some(id) = m.get("id").and_then(serde_json::Value::as_u64) {
                    since = since.max(id);
                }
                if let Some(d) = m.get("data").and_then(serde_json::Value::as_str) {
                    done |= tally.got(d, &sh, total);
                }
            }
        }
        if let Some(id) = v.get("last_id").and_then(serde_json::Value::as_u64) {
            since = since.max(id);
        }
        if done {
            break;
        }
        if wait.is_none() {
            next += sh.poll_interval;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = sh.stop.changed() => break,
            }
        }
    }
    Ok(tally)
}

async fn sse(mut sh: Shared, meter: Meter, total: usize, ready: Ready) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    let Some(mut io) = connect_or_report(&sh.target, &meter, &ready).await else {
        return Ok(tally);
    };
    let path = format!("/sse?room={}", sh.room);
    let what = format!("GET {path}");
    // Last-Event-ID: 0 replays anything published before the subscription took hold.
    let req = get_request(
        &sh.target,
        &path,
        &[("Accept", "text/event-stream"), ("Last-Event-ID", "0")],
    );
    tally.requests += 1;
    if let Err(source) = io.write_all(&req).await {
        let _ = ready.send(Err(Error::Io { what, source })).await;
        return Ok(tally);
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (status, chunked, used) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(used)) => {
                let chunked = r.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("chunked")
                });
                break (r.code.unwrap_or(0), chunked, used);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                let _ = ready
                    .send(Err(Error::Garbage {
                        what,
                        detail: e.to_string(),
                    }))
                    .await;
                return Ok(tally);
            }
        }
        match io.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                let _ = ready
                    .send(Err(Error::NoResponse {
                        what,
                        detail: "the server closed the connection without answering".into(),
                    }))
                    .await;
                return Ok(tally);
            }
        }
    };
    if status != 200 {
        let _ = ready
            .send(Err(Error::NotPush {
                what,
                detail: format!("the server answered {status}, not an event stream"),
            }))
            .await;
        return Ok(tally);
    }
    let _ = ready.send(Ok(())).await;
    let mut dec = SseDecoder::new(chunked);
    let mut pending = buf.split_off(used);
    loop {
        let items = dec.feed(&pending).map_err(|detail| Error::Garbage {
            what: what.clone(),
            detail,
        })?;
        for it in items {
            if let SseItem::Event { data, .. } = it {
                if tally.got(&data, &sh, total) {
                    return Ok(tally);
                }
            }
        }
        let n = tokio::select! {
            r = io.read(&mut chunk) => r.unwrap_or(0),
            _ = sh.stop.changed() => return Ok(tally),
        };
        if n == 0 {
            return Ok(tally);
        }
        pending = chunk[..n].to_vec();
    }
}

async fn websocket(
    mut sh: Shared,
    meter: Meter,
    total: usize,
    ready: Ready,
) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    let Some(io) = connect_or_report(&sh.target, &meter, &ready).await else {
        return Ok(tally);
    };
    let uri = format!("ws://{}/ws?room={}", sh.target.host_header(), sh.room);
    let what = format!("WebSocket /ws?room={}", sh.room);
    tally.requests += 1;
    let mut ws = match tokio_tungstenite::client_async(uri, io).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = ready
                .send(Err(Error::NotPush {
                    what,
                    detail: format!("the WebSocket handshake failed ({e})"),
                }))
                .await;
            return Ok(tally);
        }
    };
    // A room member's own message comes back once it is a member: that is the signal.
    let hello = format!("kaprobe-bench ready {}", sh.room);
    if let Err(e) = ws.send(Message::text(hello.clone())).await {
        let _ = ready
            .send(Err(Error::NotPush {
                what,
                detail: format!("sending to the room failed ({e})"),
            }))
            .await;
        return Ok(tally);
    }
    let mut joined = false;
    let join_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let next = tokio::select! {
            m = ws.next() => m,
            () = tokio::time::sleep_until(join_deadline), if !joined => {
                let _ = ready
                    .send(Err(Error::NotPush {
                        what: what.clone(),
                        detail: "a message sent to the room never came back: is this kaprobe serve with rooms?".into(),
                    }))
                    .await;
                return Ok(tally);
            }
            _ = sh.stop.changed() => break,
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                if !joined && t.as_str() == hello {
                    joined = true;
                    let _ = ready.send(Ok(())).await;
                } else if tally.got(t.as_str(), &sh, total) {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                if !joined {
                    let _ = ready
                        .send(Err(Error::NoResponse {
                            what: what.clone(),
                            detail: "the WebSocket ended before joining the room".into(),
                        }))
                        .await;
                }
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), ws.close(None)).await;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_seq(&message_text(42)), Some(42));
        assert_eq!(parse_seq("kaprobe-bench ready room"), None);
        assert_eq!(parse_seq("hello"), None);
    }
}
