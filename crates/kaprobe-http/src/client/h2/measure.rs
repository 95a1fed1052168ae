//! The measuring half of the HTTP/2 probe: the first request (through the `h2` crate, with
//! a [`Tap`] on the wire), the idle ladder, the request count, the PING round trip, the PING
//! keep-alive check and the PING policy search (raw frames). Everything here talks to the
//! server; nothing here judges.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::wire::{Ev, H2Connector, Raw, ReqSpec};
use super::{
    GoAwaySeen, H2Close, H2CountEnd, H2Idle, H2Options, PingCheck, PingOutcome, PingPolicy,
    PolicyResult,
};
use crate::client::conn::IdleEnd;
use crate::client::probe::ladder;
use crate::h2wire::{error_name, Frame, Tap};
use crate::Error;

/// The gRPC health check method (grpc/grpc doc/health-checking.md).
pub(super) const HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// ENHANCE_YOUR_CALM (RFC 9113 section 7).
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// REFUSED_STREAM.
pub(super) const REFUSED_STREAM: u32 = 0x7;

/// How long a rung keeps watching after a GOAWAY for the FIN or RST that follows.
const AFTER_GOAWAY: Duration = Duration::from_secs(2);

pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(super) fn cap(d: Duration, deadline: Instant) -> Instant {
    (Instant::now() + d).min(deadline)
}

fn secs_since(at: Instant, since: Instant) -> f64 {
    at.saturating_duration_since(since).as_secs_f64()
}

pub(super) fn goaway_seen(at: Instant, since: Instant, f: &Frame) -> Option<GoAwaySeen> {
    let Frame::GoAway {
        last_stream,
        code,
        debug,
    } = f
    else {
        return None;
    };
    Some(GoAwaySeen {
        at_s: secs_since(at, since),
        last_stream_id: *last_stream,
        error: error_name(*code).to_string(),
        code: *code,
        debug: String::from_utf8_lossy(debug).into_owned(),
    })
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// END_STREAM arrived.
    Done,
    /// RST_STREAM with this error code.
    Reset(u32),
    /// A GOAWAY whose last stream id is below the stream: never processed.
    Refused,
    /// The connection ended first.
    Closed(IdleEnd),
    Timeout,
}

/// Wait for stream `id` to end, recording GOAWAYs (their time measured from `since`).
pub(super) async fn await_stream(
    raw: &mut Raw,
    id: u32,
    deadline: Instant,
    since: Instant,
    goaways: &mut Vec<GoAwaySeen>,
) -> StreamEnd {
    loop {
        match raw.next(Some(deadline)).await {
            Ev::Frame(_, Frame::Headers { stream, end_stream })
            | Ev::Frame(
                _,
                Frame::Data {
                    stream, end_stream, ..
                },
            ) if stream == id && end_stream => return StreamEnd::Done,
            Ev::Frame(_, Frame::RstStream { stream, code }) if stream == id => {
                return StreamEnd::Reset(code)
            }
            Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                if let Some(g) = goaway_seen(at, since, &f) {
                    let refused = g.last_stream_id < id;
                    goaways.push(g);
                    if refused {
                        return StreamEnd::Refused;
                    }
                }
            }
            Ev::Frame(..) => {}
            Ev::End(e, _) => return StreamEnd::Closed(e),
            Ev::Timeout => return StreamEnd::Timeout,
        }
    }
}

/// Median PING round trip over five PINGs on `raw`.
pub(super) async fn ping_rtt(raw: &mut Raw, deadline: Instant) -> Option<Duration> {
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        let opaque = raw.ping().await.ok()?;
        if await_ack(
            raw,
            opaque,
            cap(Duration::from_secs(2), deadline),
            &mut Vec::new(),
        )
        .await
        .is_none()
        {
            break;
        }
        rtts.push(sent.elapsed());
    }
    rtts.sort();
    rtts.get(rtts.len() / 2).copied()
}

/// Wait for the ACK of the PING `opaque`; None if a GOAWAY, the end or the deadline came
/// first (GOAWAYs are recorded, with their time as seconds since the call).
async fn await_ack(
    raw: &mut Raw,
    opaque: [u8; 8],
    deadline: Instant,
    goaways: &mut Vec<GoAwaySeen>,
) -> Option<Instant> {
    let since = Instant::now();
    loop {
        match raw.next(Some(deadline)).await {
            Ev::Frame(
                at,
                Frame::Ping {
                    ack: true,
                    opaque: o,
                },
            ) if o == opaque => return Some(at),
            Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                goaways.extend(goaway_seen(at, since, &f));
                return None;
            }
            Ev::Frame(..) => {}
            Ev::End(..) | Ev::Timeout => return None,
        }
    }
}

/// What the first request (through the `h2` crate) returned.
pub(super) struct First {
    pub status: u16,
    pub server: Option<String>,
    pub took: Duration,
    pub max_concurrent_streams: Option<u32>,
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
    pub serving: Option<String>,
}

/// The first request, made with the `h2` crate over a [`Tap`]: the status and Server
/// header, and for gRPC the `grpc-status` (trailers, or the headers of a trailers-only
/// answer) and the HealthCheckResponse.
pub(super) async fn first_request(
    c: &H2Connector,
    path: &str,
    grpc: bool,
    deadline: Instant,
) -> Result<First, Error> {
    let what = format!("first request to {}", c.addr);
    let bad = |detail: String| Error::NoResponse {
        what: what.clone(),
        detail,
    };
    let wait = left(deadline).min(Duration::from_secs(15));
    let (io, _) = c.open(wait).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tap = Tap::client(io, tx);
    let t = Instant::now();
    let work = async {
        let (mut send, conn) = h2::client::Builder::new()
            .enable_push(false)
            .handshake::<_, Bytes>(tap)
            .await
            .map_err(|e| bad(format!("HTTP/2 handshake failed: {e}")))?;
        let driver = tokio::spawn(conn);
        let uri = format!("{}://{}{}", c.scheme(), c.target.host_header(), path);
        let mut req = http::Request::builder()
            .method(if grpc { "POST" } else { "GET" })
            .uri(uri)
            .header("user-agent", crate::h1::USER_AGENT);
        if grpc {
            req = req
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        } else {
            req = req.header("accept", "*/*");
        }
        let req = req
            .body(())
            .map_err(|e| bad(format!("cannot build the request: {e}")))?;
        let (fut, mut body_tx) = send
            .send_request(req, !grpc)
            .map_err(|e| bad(format!("sending the request failed: {e}")))?;
        if grpc {
            body_tx
                .send_data(Bytes::from_static(&[0u8; 5]), true)
                .map_err(|e| bad(format!("sending the request body failed: {e}")))?;
        }
        let resp = fut.await.map_err(|e| bad(format!("no response: {e}")))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| bad(format!("the response body failed: {e}")))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if bytes.len() < 64 * 1024 {
                bytes.extend_from_slice(&chunk);
            }
        }
        let trailers = body.trailers().await.ok().flatten();
        let took = t.elapsed();
        driver.abort();
        let field = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name))
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let grpc_status = field("grpc-status").and_then(|s| s.trim().parse().ok());
        let serving = (grpc && grpc_status == Some(0)).then(|| serving_status(&bytes));
        Ok::<_, Error>(First {
            status,
            server: headers
                .get("server")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            took,
            max_concurrent_streams: None,
            grpc_status,
            grpc_message: field("grpc-message"),
            serving,
        })
    };
    let mut first = match tokio::time::timeout(wait, work).await {
        Err(_) => return Err(Error::NoAnswer { what, after: wait }),
        Ok(r) => r?,
    };
    while let Ok(ev) = rx.try_recv() {
        if let Frame::Settings { ack: false, params } = ev.frame {
            if ev.dir == crate::h2wire::Dir::In {
                for (id, v) in params {
                    if id == crate::h2wire::SETTINGS_MAX_CONCURRENT_STREAMS {
                        first.max_concurrent_streams = Some(v);
                    }
                }
            }
        }
    }
    Ok(first)
}

/// The status of a gRPC HealthCheckResponse message (one length-prefixed message; field 1,
/// an enum; proto3 leaves out the default 0).
pub(super) fn serving_status(bytes: &[u8]) -> String {
    let msg = bytes.get(5..).unwrap_or_default();
    let mut value = 0u64;
    if msg.first() == Some(&0x08) {
        for (i, b) in msg[1..].iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    match value {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => format!("status {n}"),
    }
}

/// How one ladder rung's idle connection ended.
#[derive(Debug, Clone, Default)]
pub(super) struct RungEnd {
    /// The pure watcher (never reused, one request on the connection).
    pub watcher: bool,
    pub goaways: Vec<GoAwaySeen>,
    pub end: Option<IdleEnd>,
    pub end_at_s: Option<f64>,
}

impl RungEnd {
    /// Idle time at the first sign of the end (the first GOAWAY, else the close).
    pub fn at_s(&self) -> Option<f64> {
        self.goaways.first().map(|g| g.at_s).or(self.end_at_s)
    }

    pub fn close(&self) -> H2Close {
        match (self.goaways.is_empty(), self.end) {
            (false, Some(IdleEnd::Fin)) => H2Close::GoawayThenFin,
            (false, Some(_)) => H2Close::GoawayThenRst,
            (false, None) => H2Close::GoawayOnly,
            (true, Some(IdleEnd::Fin)) => H2Close::Fin,
            (true, Some(_)) => H2Close::Rst,
            (true, None) => H2Close::OpenAtMaxWait,
        }
    }
}

#[derive(Debug)]
enum Event {
    Failed,
    /// A rung is set up and idle from this instant.
    Idle(Instant),
    Watching(Instant),
    Closed(RungEnd),
    ReuseOk {
        idle: Duration,
    },
    ReuseFailed {
        idle: Duration,
        kind: &'static str,
    },
}

/// Open a connection, make one request, and return it with the instant it went idle.
async fn set_up(c: &H2Connector, spec: &ReqSpec, deadline: Instant) -> Option<(Raw, Instant)> {
    let mut raw = c
        .start(left(deadline).min(Duration::from_secs(10)))
        .await
        .ok()?;
    let id = raw.request(spec).await.ok()?;
    let mut g = Vec::new();
    let end = await_stream(
        &mut raw,
        id,
        cap(Duration::from_secs(10), deadline),
        Instant::now(),
        &mut g,
    )
    .await;
    (end == StreamEnd::Done && g.is_empty()).then(|| (raw, Instant::now()))
}

async fn rung(
    c: H2Connector,
    spec: ReqSpec,
    idle_target: Option<Duration>,
    answer: Duration,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Event>,
    setup_limit: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let setup = async {
        let _permit = setup_limit.acquire().await.ok()?;
        set_up(&c, &spec, deadline).await
    };
    let Some((mut raw, mut idle_since)) = setup.await else {
        let _ = tx.send(Event::Failed);
        return;
    };
    let mut probe_at = idle_target.map(|x| idle_since + x);
    let watcher = probe_at.is_none();
    let _ = tx.send(Event::Idle(idle_since));
    if watcher {
        let _ = tx.send(Event::Watching(idle_since));
    }
    let mut goaways: Vec<GoAwaySeen> = Vec::new();
    let mut end_by: Option<Instant> = None;
    loop {
        let wake = [probe_at, end_by, Some(deadline)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(deadline);
        match raw.next(Some(wake)).await {
            Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                goaways.extend(goaway_seen(at, idle_since, &f));
                probe_at = None;
                end_by.get_or_insert(at + AFTER_GOAWAY);
            }
            Ev::Frame(..) => {}
            Ev::End(end, at) => {
                let _ = tx.send(Event::Closed(RungEnd {
                    watcher,
                    goaways,
                    end: Some(end),
                    end_at_s: Some(secs_since(at, idle_since)),
                }));
                return;
            }
            Ev::Timeout => {
                let now = Instant::now();
                if end_by.is_some_and(|t| now >= t) || now >= deadline {
                    if !goaways.is_empty() {
                        let _ = tx.send(Event::Closed(RungEnd {
                            watcher,
                            goaways,
                            end: None,
                            end_at_s: None,
                        }));
                    }
                    return;
                }
                if probe_at.is_some_and(|t| now >= t) {
                    probe_at = None;
                    let idle = now.saturating_duration_since(idle_since);
                    let Ok(id) = raw.request(&spec).await else {
                        let _ = tx.send(Event::ReuseFailed {
                            idle,
                            kind: "reset",
                        });
                        return;
                    };
                    let before = goaways.len();
                    match await_stream(&mut raw, id, now + answer, idle_since, &mut goaways).await {
                        StreamEnd::Done => {
                            let _ = tx.send(Event::ReuseOk { idle });
                            idle_since = Instant::now();
                            goaways.clear();
                        }
                        StreamEnd::Refused => {
                            // The idle GOAWAY crossed the new stream: an end like any other.
                            end_by = Some(Instant::now() + AFTER_GOAWAY);
                        }
                        StreamEnd::Reset(_) => {
                            let _ = tx.send(Event::ReuseFailed {
                                idle,
                                kind: "stream_reset",
                            });
                            return;
                        }
                        StreamEnd::Closed(e) => {
                            if goaways.len() > before {
                                let _ = tx.send(Event::Closed(RungEnd {
                                    watcher: false,
                                    goaways,
                                    end: Some(e),
                                    end_at_s: Some(secs_since(Instant::now(), idle_since)),
                                }));
                            } else {
                                let kind = if e == IdleEnd::Fin {
                                    "empty_reply"
                                } else {
                                    "reset"
                                };
                                let _ = tx.send(Event::ReuseFailed { idle, kind });
                            }
                            return;
                        }
                        StreamEnd::Timeout => {
                            let _ = tx.send(Event::ReuseFailed {
                                idle,
                                kind: "no_answer",
                            });
                            return;
                        }
                    }
                }
            }
        }
    }
}

pub(super) use crate::client::probe::measure::median;

/// The idle ladder; also the end of one typical rung (for the GOAWAY details).
pub(super) async fn measure_idle(
    c: &H2Connector,
    spec: &ReqSpec,
    opts: &H2Options,
    answer: Duration,
    deadline: Instant,
) -> (H2Idle, Option<RungEnd>) {
    let top = left(deadline).saturating_sub(answer + AFTER_GOAWAY);
    let rungs = ladder(opts.connections, top);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let setup_limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for x in std::iter::once(None).chain(rungs.iter().copied().map(Some)) {
        let (c, spec, tx, lim) = (c.clone(), spec.clone(), tx.clone(), setup_limit.clone());
        tasks.spawn(rung(c, spec, x, answer, deadline, tx, lim));
    }
    drop(tx);

    let mut ends: Vec<RungEnd> = Vec::new();
    let mut oks: Vec<f64> = Vec::new();
    let mut fails: Vec<(f64, &'static str)> = Vec::new();
    let mut failed = 0usize;
    let mut first_end_at: Option<Instant> = None;
    let mut watcher_since: Option<Instant> = None;
    // Rungs go idle over the time their setups take: after the first end, wait that long
    // again (plus 300 ms) for the others.
    let mut idle_starts: Option<(Instant, Instant)> = None;
    let grace = Duration::from_millis(300);
    loop {
        let spread = idle_starts.map_or(Duration::ZERO, |(a, b)| b.saturating_duration_since(a));
        let stop_at = first_end_at.map_or(deadline, |t| (t + grace + spread).min(deadline));
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = tokio::time::sleep_until(stop_at) => None,
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Failed => failed += 1,
            Event::Idle(at) => {
                idle_starts = Some(idle_starts.map_or((at, at), |(a, b)| (a.min(at), b.max(at))));
            }
            Event::Watching(at) => watcher_since = Some(at),
            Event::Closed(e) => {
                ends.push(e);
                first_end_at.get_or_insert_with(Instant::now);
            }
            Event::ReuseOk { idle } => oks.push(idle.as_secs_f64()),
            Event::ReuseFailed { idle, kind } => fails.push((idle.as_secs_f64(), kind)),
        }
        if ends.is_empty() && crate::client::probe::silent_bounds(&oks, &fails).is_some() {
            break;
        }
    }
    tasks.abort_all();
    let watcher_open = watcher_since
        .filter(|_| ends.is_empty())
        .map(|at| secs_since(Instant::now(), at));
    let longest_alive = oks.iter().copied().reduce(f64::max);
    let times: Vec<f64> = ends.iter().filter_map(RungEnd::at_s).collect();
    let mut idle = H2Idle {
        close_style: H2Close::OpenAtMaxWait,
        timeout_s: None,
        timeout_error_s: None,
        closes_seen: ends.len(),
        close_min_s: times.iter().copied().reduce(f64::min),
        close_max_s: times.iter().copied().reduce(f64::max),
        longest_alive_s: longest_alive,
        first_dead_s: fails.iter().map(|f| f.0).reduce(f64::min),
        on_reuse: None,
        unasked_bytes: 0,
        still_open_after_s: watcher_open,
        connections: rungs.len() + 1,
        connections_failed: failed,
    };
    let mut typical = None;
    if !ends.is_empty() {
        // The most common way of ending; ties go to the first seen.
        let mut counts: Vec<(H2Close, usize)> = Vec::new();
        for e in &ends {
            match counts.iter_mut().find(|(c, _)| *c == e.close()) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.close(), 1)),
            }
        }
        let style = counts
            .iter()
            .fold(counts[0], |best, c| if c.1 > best.1 { *c } else { best })
            .0;
        idle.close_style = style;
        let mut same: Vec<f64> = ends
            .iter()
            .filter(|e| e.close() == style)
            .filter_map(RungEnd::at_s)
            .collect();
        idle.timeout_s = median(&mut same);
        if let (Some(lo), Some(hi)) = (same.first(), same.last()) {
            idle.timeout_error_s = Some((hi - lo) / 2.0);
            idle.close_min_s = Some(*lo);
            idle.close_max_s = Some(*hi);
        }
        // The pure watcher's end when it ended the usual way, else the one nearest the median.
        typical = ends
            .iter()
            .find(|e| e.watcher && e.close() == style)
            .or_else(|| {
                ends.iter().filter(|e| e.close() == style).min_by(|a, b| {
                    let d = |e: &RungEnd| {
                        (e.at_s().unwrap_or(0.0) - idle.timeout_s.unwrap_or(0.0)).abs()
                    };
                    d(a).total_cmp(&d(b))
                })
            })
            .cloned();
    } else if let Some((alive, dead, kind)) = crate::client::probe::silent_bounds(&oks, &fails) {
        idle.close_style = H2Close::Silent;
        idle.timeout_s = Some((alive + dead) / 2.0);
        idle.timeout_error_s = Some((dead - alive) / 2.0);
        idle.longest_alive_s = Some(alive);
        idle.first_dead_s = Some(dead);
        idle.on_reuse = Some(kind.to_string());
    }
    (idle, typical)
}

/// Requests on one connection, one after another, until the server sends GOAWAY (counted:
/// the answered streams the GOAWAY's last stream id covers), closes, or the cap.
pub(super) async fn count_requests(
    c: &H2Connector,
    spec: &ReqSpec,
    cap_n: u64,
    deadline: Instant,
) -> (Option<u64>, H2CountEnd) {
    let Ok(mut raw) = c.start(left(deadline).min(Duration::from_secs(10))).await else {
        return (None, H2CountEnd::Error);
    };
    let since = Instant::now();
    let mut goaways = Vec::new();
    let mut answered: Vec<u32> = Vec::new();
    let end = loop {
        if Instant::now() >= deadline {
            break H2CountEnd::MaxWait;
        }
        let Ok(id) = raw.request(spec).await else {
            break H2CountEnd::Closed;
        };
        match await_stream(
            &mut raw,
            id,
            cap(Duration::from_secs(10), deadline),
            since,
            &mut goaways,
        )
        .await
        {
            StreamEnd::Done => answered.push(id),
            StreamEnd::Refused => break H2CountEnd::Goaway,
            StreamEnd::Closed(_) => {
                break if goaways.is_empty() {
                    H2CountEnd::Closed
                } else {
                    H2CountEnd::Goaway
                }
            }
            StreamEnd::Reset(_) | StreamEnd::Timeout => break H2CountEnd::Error,
        }
        if !goaways.is_empty() {
            break H2CountEnd::Goaway;
        }
        if answered.len() as u64 >= cap_n {
            // A GOAWAY may follow the last response: give it a moment.
            let wait = cap(Duration::from_millis(100), deadline);
            loop {
                match raw.next(Some(wait)).await {
                    Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                        goaways.extend(goaway_seen(at, since, &f));
                        break;
                    }
                    Ev::Frame(..) => {}
                    Ev::End(..) | Ev::Timeout => break,
                }
            }
            break if goaways.is_empty() {
                H2CountEnd::Cap
            } else {
                H2CountEnd::Goaway
            };
        }
    };
    let last = goaways.last().map_or(u32::MAX, |g| g.last_stream_id);
    let n = answered.iter().filter(|id| **id <= last).count() as u64;
    ((n > 0).then_some(n), end)
}

/// Does a PING every `every` (default a third of the idle timeout) keep an otherwise idle
/// connection open past the idle timeout? Watched until the latest idle end seen on the
/// ladder (`latest_s`; servers with a coarse idle timer spread their ends) plus half of the
/// timeout (at least 0.5 s).
pub(super) async fn ping_check(
    c: &H2Connector,
    spec: &ReqSpec,
    every: Option<Duration>,
    timeout_s: Option<f64>,
    latest_s: Option<f64>,
    deadline: Instant,
) -> PingCheck {
    let mut out = PingCheck::default();
    let Some(t) = timeout_s.filter(|t| *t > 0.0) else {
        out.detail = Some("no idle timeout was found to outlive".into());
        return out;
    };
    let every =
        every.unwrap_or_else(|| Duration::from_secs_f64(t / 3.0).max(Duration::from_millis(20)));
    out.every_s = Some(every.as_secs_f64());
    let latest = latest_s.unwrap_or(t).max(t);
    let watch = Duration::from_secs_f64(latest + (t / 2.0).max(0.5));
    if left(deadline) < watch + Duration::from_millis(500) {
        out.detail = Some(format!(
            "not enough --max-wait left to watch a pinged connection for {:.2}s",
            watch.as_secs_f64()
        ));
        return out;
    }
    if every.as_secs_f64() >= t {
        out.detail = Some(format!(
            "a PING every {:.2}s is not more often than the idle timeout ({t:.2}s)",
            every.as_secs_f64()
        ));
        return out;
    }
    let Some((mut raw, since)) = set_up(c, spec, deadline).await else {
        out.outcome = PingOutcome::Error;
        out.detail = Some("could not set up a connection for the check".into());
        return out;
    };
    let stop = (since + watch).min(deadline);
    let mut next_ping = since + every;
    // PINGs must keep being answered: a connection that is open but silent is not alive.
    let mut acked = 0u64;
    let mut last_sent: Option<Instant> = None;
    loop {
        match raw.next(Some(next_ping.min(stop))).await {
            Ev::Frame(_, Frame::Ping { ack: true, .. }) => acked += 1,
            Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                let g = goaway_seen(at, since, &f);
                out.lasted_s = Some(secs_since(at, since));
                if g.as_ref().is_some_and(|g| g.code == ENHANCE_YOUR_CALM) {
                    out.outcome = PingOutcome::Rejected;
                    out.detail = g.map(|g| {
                        format!(
                            "GOAWAY {} \"{}\" after {} PINGs",
                            g.error, g.debug, out.pings_sent
                        )
                    });
                } else {
                    out.outcome = PingOutcome::ClosedAtIdle;
                    out.detail = g.map(|g| format!("GOAWAY {} at {:.2}s of idle", g.error, g.at_s));
                }
                return out;
            }
            Ev::Frame(..) => {}
            Ev::End(end, at) => {
                out.lasted_s = Some(secs_since(at, since));
                out.outcome = PingOutcome::ClosedAtIdle;
                out.detail = Some(format!(
                    "the connection ended ({}) at {:.2}s of idle",
                    if end == IdleEnd::Fin { "FIN" } else { "RST" },
                    secs_since(at, since)
                ));
                return out;
            }
            Ev::Timeout => {
                let now = Instant::now();
                if now >= stop {
                    out.lasted_s = Some(secs_since(now, since));
                    // the latest PING may still be on its way back, if sent just now
                    let in_flight = u64::from(
                        last_sent.is_some_and(|t| now.saturating_duration_since(t) < every / 2),
                    );
                    if acked + in_flight >= out.pings_sent {
                        out.outcome = PingOutcome::KeptAlive;
                    } else {
                        out.outcome = PingOutcome::ClosedAtIdle;
                        out.detail = Some(format!(
                            "the connection stayed open but only {acked} of {} PINGs were answered: something stopped answering (silently)",
                            out.pings_sent
                        ));
                    }
                    return out;
                }
                if now >= next_ping {
                    if raw.ping().await.is_err() {
                        out.outcome = PingOutcome::ClosedAtIdle;
                        out.lasted_s = Some(secs_since(now, since));
                        return out;
                    }
                    out.pings_sent += 1;
                    last_sent = Some(now);
                    next_ping += every;
                }
            }
        }
    }
}

/// A PING policy test's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Rejected,
    Inconclusive,
}

/// Count the bad PINGs the server tolerates: PINGs back to back on a fresh connection with
/// no stream open, each after the previous one's ACK and a short wait for a GOAWAY, until a
/// GOAWAY ENHANCE_YOUR_CALM. The first PING is never a bad one (A8: the last valid PING
/// time starts at the epoch), so strikes = PINGs sent - 2.
async fn count_strikes(
    c: &H2Connector,
    settle: Duration,
    deadline: Instant,
) -> Result<Option<(u32, String)>, ()> {
    let mut raw = c
        .start(left(deadline).min(Duration::from_secs(10)))
        .await
        .map_err(|_| ())?;
    let mut goaways = Vec::new();
    for n in 1..=20u32 {
        let Some(acked) = ping_then_settle(
            &mut raw,
            Duration::from_secs(2),
            settle,
            deadline,
            &mut goaways,
        )
        .await
        else {
            return Err(());
        };
        match goaways.first() {
            Some(g) if g.code == ENHANCE_YOUR_CALM => {
                return Ok(Some((n.saturating_sub(2), g.debug.clone())))
            }
            Some(_) => return Err(()),
            None if !acked => return Err(()),
            None => {}
        }
    }
    Ok(None)
}

/// Send a PING and wait up to `within` for its ACK (GOAWAYs that arrive meanwhile go to
/// `goaways`); once it is answered, read `settle` more for a GOAWAY that may follow the ACK.
/// `None` when the PING could not be sent, else whether it was answered.
async fn ping_then_settle(
    raw: &mut Raw,
    within: Duration,
    settle: Duration,
    deadline: Instant,
    goaways: &mut Vec<GoAwaySeen>,
) -> Option<bool> {
    let opaque = raw.ping().await.ok()?;
    let acked = await_ack(raw, opaque, cap(within, deadline), goaways)
        .await
        .is_some();
    if acked {
        loop {
            match raw.next(Some(cap(settle, deadline))).await {
                Ev::Frame(at, f @ Frame::GoAway { .. }) => {
                    goaways.extend(goaway_seen(at, at, &f));
                    break;
                }
                Ev::Frame(..) => {}
                Ev::End(..) | Ev::Timeout => break,
            }
        }
    }
    Some(acked)
}

/// One test of `interval` on a fresh connection with no stream open: a PING, then `strikes`
/// PINGs in the same write (each one a bad PING, none enough for a GOAWAY), then after
/// `interval` one more. A GOAWAY ENHANCE_YOUR_CALM after it means `interval` is too short.
async fn test_interval(
    c: H2Connector,
    interval: Duration,
    strikes: u32,
    settle: Duration,
    deadline: Instant,
) -> Verdict {
    let Ok(mut raw) = c.start(left(deadline).min(Duration::from_secs(10))).await else {
        return Verdict::Inconclusive;
    };
    let mut last = [0u8; 8];
    // Sent one after another without waiting: they arrive together.
    for _ in 0..=strikes {
        match raw.ping().await {
            Ok(o) => last = o,
            Err(_) => return Verdict::Inconclusive,
        }
    }
    let sent = Instant::now();
    let mut goaways = Vec::new();
    if await_ack(
        &mut raw,
        last,
        cap(Duration::from_secs(5), deadline),
        &mut goaways,
    )
    .await
    .is_none()
    {
        return Verdict::Inconclusive;
    }
    // Idle until the test PING, still reading (a GOAWAY now is some other limit).
    let at = sent + interval;
    if at > deadline {
        return Verdict::Inconclusive;
    }
    loop {
        match raw.next(Some(at)).await {
            Ev::Frame(_, Frame::GoAway { .. }) | Ev::End(..) => return Verdict::Inconclusive,
            Ev::Frame(..) => {}
            Ev::Timeout => break,
        }
    }
    let Some(acked) = ping_then_settle(
        &mut raw,
        Duration::from_secs(5),
        settle,
        deadline,
        &mut goaways,
    )
    .await
    else {
        return Verdict::Inconclusive;
    };
    match goaways.first() {
        Some(g) if g.code == ENHANCE_YOUR_CALM => Verdict::Rejected,
        Some(_) => Verdict::Inconclusive,
        None if acked => Verdict::Accepted,
        None => Verdict::Inconclusive,
    }
}

/// Test `intervals` concurrently, each on its own connection; stop early once the smallest
/// accepted interval is known and every shorter one has an answer.
async fn test_round(
    c: &H2Connector,
    intervals: &[Duration],
    strikes: u32,
    settle: Duration,
    deadline: Instant,
    results: &mut Vec<(Duration, Verdict)>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for &i in intervals {
        let c = c.clone();
        tasks.spawn(async move { (i, test_interval(c, i, strikes, settle, deadline).await) });
    }
    let mut pending: Vec<Duration> = intervals.to_vec();
    while let Ok(Some(Ok((i, v)))) =
        tokio::time::timeout_at(deadline + Duration::from_secs(6), tasks.join_next()).await
    {
        pending.retain(|p| *p != i);
        results.push((i, v));
        let smallest_ok = results
            .iter()
            .filter(|r| r.1 == Verdict::Accepted)
            .map(|r| r.0)
            .min();
        if let Some(ok) = smallest_ok {
            if pending.iter().all(|p| *p > ok) {
                break;
            }
        }
    }
    tasks.abort_all();
}

/// Search the server's PING policy (gRPC's `min_ping_interval_without_data` and
/// `max_ping_strikes`; A8's `PERMIT_KEEPALIVE_TIME`). The budget: whatever is left of
/// --max-wait, less a second.
pub(super) async fn ping_policy(
    c: &H2Connector,
    rtt: Option<Duration>,
    deadline: Instant,
) -> PingPolicy {
    let began = Instant::now();
    let budget_end = deadline - Duration::from_secs(1).min(left(deadline));
    let mut out = PingPolicy {
        budget_s: secs_since(budget_end, began),
        ..PingPolicy::default()
    };
    let settle = Duration::from_millis(20) + rtt.unwrap_or_default() * 4;
    let strikes = match count_strikes(c, settle, budget_end).await {
        Err(()) => {
            out.search_s = secs_since(Instant::now(), began);
            return out;
        }
        Ok(None) => {
            out.result = PolicyResult::NoneFound;
            out.search_s = secs_since(Instant::now(), began);
            return out;
        }
        Ok(Some((s, debug))) => {
            out.goaway_debug = Some(debug);
            s
        }
    };
    out.max_ping_strikes = Some(strikes);
    // Round 1: 25 ms doubling up to what the budget allows, all at once.
    let mut intervals = Vec::new();
    let mut i = Duration::from_millis(25);
    while i + Duration::from_millis(500) < left(budget_end) && i <= Duration::from_secs(7200) {
        intervals.push(i);
        i *= 2;
    }
    let mut results: Vec<(Duration, Verdict)> = Vec::new();
    test_round(c, &intervals, strikes, settle, budget_end, &mut results).await;
    // Then up to two rounds of 7 intervals inside the bracket.
    for _ in 0..2 {
        let (lo, hi) = bracket(&results);
        let (Some(hi), lo) = (hi, lo.unwrap_or(Duration::ZERO)) else {
            break;
        };
        let width = hi.saturating_sub(lo);
        if width <= Duration::from_millis(5).max(hi / 50)
            || hi + Duration::from_millis(500) >= left(budget_end)
        {
            break;
        }
        let inner: Vec<Duration> = (1..=7u32).map(|k| lo + width * k / 8).collect();
        test_round(c, &inner, strikes, settle, budget_end, &mut results).await;
    }
    out.intervals_tested = results.len();
    let (lo, hi) = bracket(&results);
    out.largest_rejected_s = lo.map(|d| d.as_secs_f64());
    out.smallest_accepted_s = hi.map(|d| d.as_secs_f64());
    match (lo, hi) {
        (lo, Some(hi)) => {
            let lo = lo.unwrap_or(Duration::ZERO).as_secs_f64();
            let hi = hi.as_secs_f64();
            out.result = PolicyResult::Found;
            out.min_ping_interval_s = Some((lo + hi) / 2.0);
            out.min_ping_interval_error_s = Some((hi - lo) / 2.0);
            out.safe_keepalive_time_s = Some(super::judge::safe_keepalive_time(
                hi,
                rtt.map_or(0.0, |d| d.as_secs_f64()),
            ));
        }
        (Some(_), None) => out.result = PolicyResult::LongerThanTested,
        (None, None) => out.result = PolicyResult::Inconclusive,
    }
    out.search_s = secs_since(Instant::now(), began);
    out
}

/// (largest rejected interval below the smallest accepted one, smallest accepted).
fn bracket(results: &[(Duration, Verdict)]) -> (Option<Duration>, Option<Duration>) {
    let hi = results
        .iter()
        .filter(|r| r.1 == Verdict::Accepted)
        .map(|r| r.0)
        .min();
    let lo = results
        .iter()
        .filter(|r| r.1 == Verdict::Rejected && hi.is_none_or(|h| r.0 < h))
        .map(|r| r.0)
        .max();
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_responses_decode_to_their_status() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), "SERVING");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), "UNKNOWN");
        assert_eq!(serving_status(&[]), "UNKNOWN");
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 3, 0x08, 0x80, 0x01]),
            "status 128"
        );
    }

    #[test]
    fn bracket_takes_the_rejection_just_below_the_smallest_acceptance() {
        let ms = Duration::from_millis;
        let r = vec![
            (ms(25), Verdict::Rejected),
            (ms(50), Verdict::Rejected),
            (ms(100), Verdict::Inconclusive),
            (ms(200), Verdict::Accepted),
            (ms(400), Verdict::Rejected),
        ];
        assert_eq!(bracket(&r), (Some(ms(50)), Some(ms(200))));
        assert_eq!(bracket(&r[..2]), (Some(ms(50)), None));
        assert_eq!(bracket(&[]), (None, None));
    }
}
