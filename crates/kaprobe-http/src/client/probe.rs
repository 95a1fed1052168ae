//! `probe`: what a server or proxy advertises about keep-alive, and what it really does.
//!
//! The idle timeout is measured two ways at once, on a ladder of connections:
//! - passively: every idle connection waits for the server to end it; the time from the end
//!   of the last response to the FIN or RST (the socket's readiness event) is the timeout;
//! - actively: connection *i* sends a new request after idling `x_i` (a geometric ladder of
//!   idle times). A request that gets no answer, an RST or an empty reply after idling `x`,
//!   while no FIN/RST ever arrived, means something on the path forgot the connection
//!   silently (NAT, conntrack, a load balancer) somewhere between the longest idle that still
//!   worked and `x`.
//!
//! Because all rungs idle in parallel the answer arrives about one ladder step after the
//! timeout itself.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::conn::{Connector, HttpVersion, IdleEnd, ReadFail, Response};
use super::target::Target;
use super::tls::TlsOptions;
use crate::Error;

/// What the prober does and how long it may take.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Upper bound on the whole probe (the idle measurement stops there).
    pub max_wait: Duration,
    /// Connections on the idle ladder.
    pub connections: usize,
    /// Stop counting requests per connection after this many.
    pub max_requests_cap: u64,
    pub tls: TlsOptions,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(150),
            connections: 100,
            max_requests_cap: 1000,
            tls: TlsOptions::default(),
        }
    }
}

/// Shortest idle time on the ladder.
const LADDER_MIN: Duration = Duration::from_millis(250);

/// What the server says about keep-alive in its first HTTP/1.1 response.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Advertised {
    /// `Keep-Alive: timeout=N`, seconds.
    pub timeout_s: Option<f64>,
    /// `Keep-Alive: max=N` on the first response.
    pub max: Option<u64>,
    /// The `Connection` header of the first response.
    pub connection: Option<String>,
    /// The raw `Keep-Alive` header.
    pub keep_alive_header: Option<String>,
}

/// How HTTP/1.0 clients are treated.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Http10 {
    /// An HTTP/1.0 request with `Connection: keep-alive` got a persistent connection
    /// (a second request on it was answered).
    pub keep_alive_honored: Option<bool>,
    /// A plain HTTP/1.0 request (no Connection header) was answered and the connection closed.
    pub plain_closes: Option<bool>,
}

/// How an idle connection was seen to end (the prober's observation; the server's own setting
/// is `server::CloseStyle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedClose {
    /// The server closed with FIN.
    Fin,
    /// The server (or something in front of it) reset the connection.
    Rst,
    /// Nothing arrived; later traffic on the connection got no answer, an RST or nothing.
    Silent,
    /// Still open when `--max-wait` ran out.
    OpenAtMaxWait,
    /// The server does not keep connections alive at all.
    NoKeepAlive,
}

impl ObservedClose {
    /// Plain words.
    pub fn describe(self) -> &'static str {
        match self {
            ObservedClose::Fin => "FIN",
            ObservedClose::Rst => "RST",
            ObservedClose::Silent => "silently (no FIN, no RST)",
            ObservedClose::OpenAtMaxWait => "not within --max-wait",
            ObservedClose::NoKeepAlive => "after every response",
        }
    }
}

/// The idle-timeout measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub close_style: ObservedClose,
    /// Best estimate of the idle timeout, seconds.
    pub timeout_s: Option<f64>,
    /// Half-width of the uncertainty around `timeout_s`, seconds.
    pub timeout_error_s: Option<f64>,
    /// Closes (FIN/RST) seen on idle connections.
    pub closes_seen: usize,
    /// Shortest and longest idle time at a seen close, seconds.
    pub close_min_s: Option<f64>,
    pub close_max_s: Option<f64>,
    /// Longest idle time after which a reused connection still worked, seconds.
    pub longest_alive_s: Option<f64>,
    /// Shortest idle time after which a reused connection failed, seconds.
    pub first_dead_s: Option<f64>,
    /// How a request on a silently dropped connection failed (`no_answer`, `reset`,
    /// `empty_reply`).
    pub on_reuse: Option<String>,
    /// Bytes the server sent on idle connections without being asked (e.g. a 408).
    pub unasked_bytes: u64,
    /// Longest time a connection that was never reused sat idle and stayed open, seconds.
    pub still_open_after_s: Option<f64>,
    /// Connections used for the ladder (and how many could not be set up).
    pub connections: usize,
    pub connections_failed: usize,
}

/// How the request count on one connection ended (JSON: its snake_case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// A response said `Connection: close`.
    ConnectionCloseHeader,
    /// The server closed without saying so first.
    Closed,
    /// The request cap was reached with the connection still open.
    Cap,
    /// Time ran out with the connection still open.
    MaxWait,
    #[default]
    Error,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCloseHeader => "connection_close_header",
            Self::Closed => "closed",
            Self::Cap => "cap",
            Self::MaxWait => "max_wait",
            Self::Error => "error",
        }
    }
}

/// What the pipelining check found (JSON: its snake_case name; it also reads as that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PipelineResult {
    InOrder,
    /// In order as far as can be told: both paths answer the same status.
    InOrderUnverified,
    OutOfOrder,
    /// Fewer answers, and the server had not said it would close.
    Partial,
    /// Fewer answers because the server said it would close (`max` or `Connection: close`).
    Limited,
    /// Not run: the server does not keep connections alive.
    NotApplicable,
    #[default]
    Error,
}

impl PipelineResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InOrder => "in_order",
            Self::InOrderUnverified => "in_order_unverified",
            Self::OutOfOrder => "out_of_order",
            Self::Partial => "partial",
            Self::Limited => "limited",
            Self::NotApplicable => "not_applicable",
            Self::Error => "error",
        }
    }
}

impl std::ops::Deref for PipelineResult {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for PipelineResult {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Requests per connection.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MaxRequests {
    /// Requests answered on one connection before it ended (None if not measured).
    pub observed: Option<u64>,
    pub ended_by: EndedBy,
    /// The `Keep-Alive: max` values counted down by one per response.
    pub countdown_ok: Option<bool>,
    pub cap: u64,
}

/// The pipelining check.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pipelining {
    pub result: PipelineResult,
    pub sent: usize,
    pub answered: usize,
    pub detail: Option<String>,
}

/// Whether the advertised values match what happened.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Truth {
    pub timeout: Option<bool>,
    pub max: Option<bool>,
}

/// The full probe report.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub url: String,
    pub address: String,
    pub tls: bool,
    pub status: u16,
    pub server: Option<String>,
    pub connect_s: f64,
    pub tls_handshake_s: Option<f64>,
    pub first_request_s: f64,
    pub reused_request_s: Option<f64>,
    pub advertised: Advertised,
    pub http10: Http10,
    pub idle: IdleResult,
    pub max_requests: MaxRequests,
    pub pipelining: Pipelining,
    pub advertised_true: Truth,
    /// Idle time a client or proxy pool in front should stay under, seconds.
    pub safe_idle_s: Option<f64>,
    pub findings: Vec<String>,
    pub verdict: String,
    pub elapsed_s: f64,
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn cap(d: Duration, deadline: Instant) -> Instant {
    (Instant::now() + d).min(deadline)
}

/// Run the whole probe against `url`.
pub async fn probe(url: &str, opts: &ProbeOptions) -> Result<ProbeReport, Error> {
    let target = Target::parse(url)?;
    if opts.connections < 2 || opts.connections > 1000 {
        return Err(Error::InvalidOption(format!(
            "--connections {} is out of range: use 2..=1000",
            opts.connections
        )));
    }
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let mut connector = Connector::new(
        target,
        &opts.tls,
        left(deadline).min(Duration::from_secs(10)),
    )
    .await?;

    // First connection: fatal errors end the probe with a clear message.
    let (mut conn0, times) = connector
        .open_first(left(deadline).min(Duration::from_secs(10)))
        .await?;
    let req = connector.request("GET", None, HttpVersion::Http11);
    let t = Instant::now();
    let wait = left(deadline).min(Duration::from_secs(15));
    let first = conn0
        .exchange(&req, false, Instant::now() + wait)
        .await
        .map_err(|e| e.into_error(format!("first request to {}", connector.addr), wait))?;
    let first_request = t.elapsed();
    let mut reused_request = None;
    if !first.will_close() {
        let t = Instant::now();
        if conn0
            .exchange(&req, false, cap(Duration::from_secs(10), deadline))
            .await
            .is_ok()
        {
            reused_request = Some(t.elapsed());
        }
    }
    drop(conn0);
    let answer_timeout = (first_request * 10)
        .max(reused_request.unwrap_or_default() * 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(5));

    let advertised = Advertised {
        timeout_s: first.keep_alive.and_then(|k| k.timeout),
        max: first.keep_alive.and_then(|k| k.max),
        connection: first.connection.clone(),
        keep_alive_header: first.header("keep-alive").map(str::to_string),
    };

    let side_deadline = cap(Duration::from_secs(30), deadline);
    let keeps_alive = !first.will_close();
    let (idle, http10, max_requests, pipelining) = if keeps_alive {
        tokio::join!(
            measure_idle(&connector, opts, answer_timeout, deadline),
            http10_checks(&connector, answer_timeout, side_deadline),
            // Counting requests gets at most a minute (or half of --max-wait).
            count_requests(
                &connector,
                opts.max_requests_cap,
                deadline.min(start + Duration::from_secs(60).max(opts.max_wait / 2))
            ),
            pipelining_check(&connector, answer_timeout, side_deadline),
        )
    } else {
        let h10 = http10_checks(&connector, answer_timeout, side_deadline).await;
        (
            no_keep_alive_idle(),
            h10,
            MaxRequests {
                observed: Some(1),
                ended_by: EndedBy::ConnectionCloseHeader,
                countdown_ok: None,
                cap: opts.max_requests_cap,
            },
            Pipelining {
                result: PipelineResult::NotApplicable,
                ..Pipelining::default()
            },
        )
    };

    let mut report = ProbeReport {
        url: connector.target.url.clone(),
        address: connector.addr.to_string(),
        tls: times.tls_handshake.is_some(),
        status: first.status,
        server: first.header("server").map(str::to_string),
        connect_s: times.connect.as_secs_f64(),
        tls_handshake_s: times.tls_handshake.map(|d| d.as_secs_f64()),
        first_request_s: first_request.as_secs_f64(),
        reused_request_s: reused_request.map(|d| d.as_secs_f64()),
        advertised,
        http10,
        idle,
        max_requests,
        pipelining,
        advertised_true: Truth::default(),
        safe_idle_s: None,
        findings: Vec::new(),
        verdict: String::new(),
        elapsed_s: 0.0,
    };
    judge(&mut report, times.connect.as_secs_f64());
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

fn no_keep_alive_idle() -> IdleResult {
    IdleResult {
        close_style: ObservedClose::NoKeepAlive,
        timeout_s: Some(0.0),
        timeout_error_s: None,
        closes_seen: 0,
        close_min_s: None,
        close_max_s: None,
        longest_alive_s: None,
        first_dead_s: None,
        on_reuse: None,
        unasked_bytes: 0,
        still_open_after_s: None,
        connections: 1,
        connections_failed: 0,
    }
}

/// Events from the ladder's connections.
#[derive(Debug)]
enum Event {
    Failed,
    /// The pure watcher (never reuses its connection) is idle from this instant.
    Watching(Instant),
    Closed {
        end: IdleEnd,
        idle: Duration,
    },
    Unasked(usize),
    ReuseOk {
        idle: Duration,
    },
    ReuseFailed {
        idle: Duration,
        kind: &'static str,
    },
}

/// The geometric ladder of idle times: `n` values from LADDER_MIN to `top`.
pub fn ladder(n: usize, top: Duration) -> Vec<Duration> {
    let lo = LADDER_MIN.as_secs_f64();
    let hi = top.as_secs_f64().max(lo * 1.5);
    let steps = n.saturating_sub(1).max(1);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation
    )]
    let ratio = (hi / lo).powf(1.0 / steps as f64);
    (0..n)
        .map(|i| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            Duration::from_secs_f64(lo * ratio.powi(i as i32))
        })
        .collect()
}

async fn rung(
    connector: Connector,
    idle_target: Option<Duration>,
    answer_timeout: Duration,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Event>,
    setup_limit: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let setup = async {
        // Limit concurrent setups; each rung's idle clock starts at its own response.
        let _permit = setup_limit.acquire().await.ok()?;
        let (mut c, _) = connector.open(Duration::from_secs(10)).await.ok()?;
        let req = connector.request("GET", None, HttpVersion::Http11);
        let r = c
            .exchange(&req, false, cap(Duration::from_secs(10), deadline))
            .await
            .ok()?;
        (!r.will_close()).then_some(c)
    };
    let Some(mut conn) = setup.await else {
        let _ = tx.send(Event::Failed);
        return;
    };
    let req = connector.request("GET", None, HttpVersion::Http11);
    let mut probe_at = idle_target.map(|x| conn.idle_since + x);
    if probe_at.is_none() {
        let _ = tx.send(Event::Watching(conn.idle_since));
    }
    enum Step {
        Watched(Result<(IdleEnd, Instant), usize>),
        Probe,
        Stop,
    }
    loop {
        let step = tokio::select! {
            r = conn.watch() => Step::Watched(r),
            () = sleep_opt(probe_at) => Step::Probe,
            () = tokio::time::sleep_until(deadline) => Step::Stop,
        };
        match step {
            Step::Stop => return,
            Step::Watched(Ok((end, at))) => {
                let idle = at.saturating_duration_since(conn.idle_since);
                let _ = tx.send(Event::Closed { end, idle });
                return;
            }
            Step::Watched(Err(n)) => {
                // Unasked bytes (e.g. a 408): never reuse this connection, keep watching.
                probe_at = None;
                let _ = tx.send(Event::Unasked(n));
            }
            Step::Probe => {
                probe_at = None;
                let sent = Instant::now();
                let idle = sent.saturating_duration_since(conn.idle_since);
                match conn.exchange(&req, false, sent + answer_timeout).await {
                    Ok(r) => {
                        let _ = tx.send(Event::ReuseOk { idle });
                        if r.will_close() {
                            return;
                        }
                    }
                    Err(f) => {
                        let kind = match f {
                            ReadFail::Timeout { .. } => "no_answer",
                            ReadFail::Eof => "empty_reply",
                            ref other => other.kind(),
                        };
                        let _ = tx.send(Event::ReuseFailed { idle, kind });
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

async fn measure_idle(
    connector: &Connector,
    opts: &ProbeOptions,
    answer_timeout: Duration,
    deadline: Instant,
) -> IdleResult {
    let top = left(deadline).saturating_sub(answer_timeout + Duration::from_millis(200));
    let rungs = ladder(opts.connections, top);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let setup_limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    // Rung 0 only watches (its idle time is the whole run); the others reuse their
    // connection once, after their idle time on the ladder.
    let plan = std::iter::once(None).chain(rungs.iter().copied().map(Some));
    for x in plan {
        let (c, tx, lim) = (connector.clone(), tx.clone(), setup_limit.clone());
        tasks.spawn(rung(c, x, answer_timeout, deadline, tx, lim));
    }
    drop(tx);

    let mut closes: Vec<(IdleEnd, f64)> = Vec::new();
    let mut oks: Vec<f64> = Vec::new();
    let mut fails: Vec<(f64, &'static str)> = Vec::new();
    let mut failed = 0usize;
    let mut unasked = 0u64;
    let mut first_close_at: Option<Instant> = None;
    let mut watcher_since: Option<Instant> = None;
    let grace = Duration::from_millis(300);
    loop {
        let stop_at = match first_close_at {
            Some(t) => (t + grace).min(deadline),
            None => deadline,
        };
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = tokio::time::sleep_until(stop_at) => None,
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Failed => failed += 1,
            Event::Watching(at) => watcher_since = Some(at),
            Event::Unasked(n) => unasked += n as u64,
            Event::Closed { end, idle } => {
                closes.push((end, idle.as_secs_f64()));
                first_close_at.get_or_insert_with(Instant::now);
            }
            Event::ReuseOk { idle } => oks.push(idle.as_secs_f64()),
            Event::ReuseFailed { idle, kind } => fails.push((idle.as_secs_f64(), kind)),
        }
        if closes.is_empty() && silent_bounds(&oks, &fails).is_some() {
            break;
        }
    }
    tasks.abort_all();
    let watcher_open = watcher_since
        .filter(|_| closes.is_empty())
        .map(|at| Instant::now().saturating_duration_since(at).as_secs_f64());

    let longest_alive = oks
        .iter()
        .copied()
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let mut result = IdleResult {
        close_style: ObservedClose::OpenAtMaxWait,
        timeout_s: None,
        timeout_error_s: None,
        closes_seen: closes.len(),
        close_min_s: closes.iter().map(|c| c.1).reduce(f64::min),
        close_max_s: closes.iter().map(|c| c.1).reduce(f64::max),
        longest_alive_s: longest_alive,
        first_dead_s: fails.iter().map(|f| f.0).reduce(f64::min),
        on_reuse: None,
        unasked_bytes: unasked,
        still_open_after_s: watcher_open,
        connections: rungs.len() + 1,
        connections_failed: failed,
    };
    if !closes.is_empty() {
        let rst = closes.iter().filter(|c| c.0 == IdleEnd::Rst).count();
        result.close_style = if rst * 2 > closes.len() {
            ObservedClose::Rst
        } else {
            ObservedClose::Fin
        };
        let mut idles: Vec<f64> = closes.iter().map(|c| c.1).collect();
        result.timeout_s = median(&mut idles);
        if let (Some(lo), Some(hi)) = (result.close_min_s, result.close_max_s) {
            result.timeout_error_s = Some((hi - lo) / 2.0);
        }
    } else if let Some((alive, dead, kind)) = silent_bounds(&oks, &fails) {
        result.close_style = ObservedClose::Silent;
        result.timeout_s = Some((alive + dead) / 2.0);
        result.timeout_error_s = Some((dead - alive) / 2.0);
        result.longest_alive_s = Some(alive);
        result.first_dead_s = Some(dead);
        result.on_reuse = Some(kind.to_string());
    } else if let Some(a) = longest_alive {
        // Open at max-wait: the timeout is at least the longest idle that still worked.
        result.timeout_s = None;
        result.longest_alive_s = Some(a);
    }
    result
}

/// For a silent drop: (longest idle that worked below the failures, first failing idle, how
/// it failed), once two requests after longer idles failed and none after them worked.
fn silent_bounds(oks: &[f64], fails: &[(f64, &'static str)]) -> Option<(f64, f64, &'static str)> {
    let max_ok = oks.iter().copied().fold(0.0_f64, f64::max);
    let mut above: Vec<(f64, &'static str)> =
        fails.iter().copied().filter(|f| f.0 > max_ok).collect();
    if above.len() < 2 {
        return None;
    }
    above.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some((max_ok, above[0].0, above[0].1))
}

async fn http10_checks(connector: &Connector, answer: Duration, deadline: Instant) -> Http10 {
    let mut out = Http10::default();
    // HTTP/1.0 with Connection: keep-alive.
    if let Ok((mut c, _)) = connector.open(left(deadline)).await {
        let req = connector.request("GET", None, HttpVersion::Http10KeepAlive);
        if let Ok(r) = c.exchange(&req, false, cap(answer * 2, deadline)).await {
            if r.will_close() {
                out.keep_alive_honored = Some(false);
            } else {
                let again = c.exchange(&req, false, cap(answer * 2, deadline)).await;
                out.keep_alive_honored = Some(again.is_ok());
            }
        }
    }
    // Plain HTTP/1.0: answered, then closed.
    if let Ok((mut c, _)) = connector.open(left(deadline)).await {
        let req = connector.request("GET", None, HttpVersion::Http10);
        if let Ok(r) = c.exchange(&req, false, cap(answer * 2, deadline)).await {
            if r.body_until_close {
                out.plain_closes = Some(true);
            } else {
                let closed =
                    tokio::time::timeout_at(cap(Duration::from_secs(1), deadline), c.watch()).await;
                out.plain_closes = Some(matches!(closed, Ok(Ok(_))));
            }
        }
    }
    out
}

async fn count_requests(connector: &Connector, cap_n: u64, deadline: Instant) -> MaxRequests {
    let mut out = MaxRequests {
        cap: cap_n,
        ended_by: EndedBy::Error,
        ..MaxRequests::default()
    };
    let Ok((mut c, _)) = connector
        .open(left(deadline).min(Duration::from_secs(10)))
        .await
    else {
        return out;
    };
    let req = connector.request("GET", None, HttpVersion::Http11);
    let mut maxes: Vec<u64> = Vec::new();
    let mut answered = 0u64;
    loop {
        if Instant::now() >= deadline {
            out.ended_by = EndedBy::MaxWait;
            break;
        }
        match c
            .exchange(&req, false, cap(Duration::from_secs(10), deadline))
            .await
        {
            Ok(r) => {
                answered += 1;
                if let Some(m) = r.keep_alive.and_then(|k| k.max) {
                    maxes.push(m);
                }
                if r.will_close() {
                    out.ended_by = EndedBy::ConnectionCloseHeader;
                    break;
                }
                if answered >= cap_n {
                    out.ended_by = EndedBy::Cap;
                    break;
                }
            }
            Err(ReadFail::Eof | ReadFail::Reset) => {
                out.ended_by = EndedBy::Closed;
                break;
            }
            Err(ReadFail::Write(_)) => {
                out.ended_by = EndedBy::Closed;
                break;
            }
            Err(_) => break,
        }
    }
    out.observed = (answered > 0).then_some(answered);
    if maxes.len() >= 2 {
        out.countdown_ok = Some(maxes.windows(2).all(|w| w[0] == w[1] + 1));
    }
    out
}

async fn pipelining_check(
    connector: &Connector,
    answer: Duration,
    deadline: Instant,
) -> Pipelining {
    let mut out = Pipelining {
        result: PipelineResult::Error,
        sent: 4,
        ..Pipelining::default()
    };
    let missing = connector.target.missing_path();
    let a = connector.request("GET", None, HttpVersion::Http11);
    let b = connector.request("GET", Some(&missing), HttpVersion::Http11);
    // Learn each path's status on its own first, then pipeline on a fresh connection, so
    // that requests already spent do not count against the server's `max`.
    let Some((mut c, sa, sb)) = async {
        let (mut c, _) = connector.open(left(deadline)).await.ok()?;
        let ra = c
            .exchange(&a, false, cap(answer * 2, deadline))
            .await
            .ok()?;
        if ra.will_close() {
            return None;
        }
        let rb = c
            .exchange(&b, false, cap(answer * 2, deadline))
            .await
            .ok()?;
        drop(c);
        let (fresh, _) = connector.open(left(deadline)).await.ok()?;
        Some((fresh, ra.status, rb.status))
    }
    .await
    else {
        out.detail = Some("could not set up a connection for the check".into());
        return out;
    };
    let mut batch = Vec::new();
    for r in [&a, &b, &a, &b] {
        batch.extend_from_slice(r);
    }
    if c.send(&batch).await.is_err() {
        out.detail = Some("sending the pipelined requests failed".into());
        return out;
    }
    let expected = [sa, sb, sa, sb];
    let mut got: Vec<Response> = Vec::new();
    while got.len() < 4 {
        match c.read_response(false, cap(answer * 2, deadline)).await {
            Ok(r) => {
                let close = r.will_close();
                got.push(r);
                if close {
                    break;
                }
            }
            Err(e) => {
                out.detail = Some(format!("after {} answers: {}", got.len(), e.kind()));
                break;
            }
        }
    }
    out.answered = got.len();
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    // A short answer the server announced: its last response said it would close, because
    // its `max` ran out (the first response's `Keep-Alive: max` counts what was left) or
    // for its own reasons (`Connection: close`).
    let announced = got.last().filter(|r| r.will_close()).map(|last| {
        let max = got
            .first()
            .and_then(|r| r.keep_alive)
            .and_then(|k| k.max)
            .filter(|m| usize::try_from(*m).is_ok_and(|m| m + 1 == got.len()));
        match max {
            Some(m) => format!(
                "the server allows {} requests per connection (Keep-Alive: max={m} after the first), and its last answer said Connection: close",
                got.len()
            ),
            None => format!(
                "response {} said Connection: close{}",
                got.len(),
                last.header("connection")
                    .map_or(String::new(), |v| format!(" ({v})"))
            ),
        }
    });
    out.result = if got.len() < 4 && statuses[..] == expected[..got.len()] && announced.is_some() {
        out.detail = announced;
        PipelineResult::Limited
    } else if got.len() < 4 {
        PipelineResult::Partial
    } else if statuses != expected {
        out.detail = Some(format!("expected statuses {expected:?}, got {statuses:?}"));
        PipelineResult::OutOfOrder
    } else if sa == sb {
        out.detail = Some(format!(
            "both paths answer {sa}, so the order could not be told apart"
        ));
        PipelineResult::InOrderUnverified
    } else {
        PipelineResult::InOrder
    };
    out
}

/// Compare advertised and observed values, write findings and the verdict.
fn judge(r: &mut ProbeReport, rtt: f64) {
    let idle = &r.idle;
    let t = idle.timeout_s;
    // Truth of the advertised timeout.
    if let (Some(adv), Some(obs), ObservedClose::Silent) =
        (r.advertised.timeout_s, t, idle.close_style)
    {
        // Nothing came from the server: the path (a NAT, firewall or load balancer) forgot
        // the flow. The header says what the server would do; this says nothing against it.
        if obs < adv {
            r.findings.push(format!(
                "idle connections die silently after {obs:.2}s (no FIN, no RST): something on the path (NAT, firewall, load balancer) forgets idle flows before the server's advertised timeout={adv} is reached"
            ));
        }
    } else if let (Some(adv), Some(obs)) = (r.advertised.timeout_s, t) {
        if matches!(idle.close_style, ObservedClose::Fin | ObservedClose::Rst) {
            let ok = (obs - adv).abs() <= 1.0 + 0.05 * adv;
            r.advertised_true.timeout = Some(ok);
            if !ok {
                r.findings.push(if obs < adv {
                    format!(
                        "the Keep-Alive header lies: it advertises timeout={adv} but idle connections end after {obs:.2}s; clients that trust it will reuse dead connections between {obs:.2}s and {adv}s of idle"
                    )
                } else {
                    format!(
                        "the Keep-Alive header advertises timeout={adv} but idle connections live {obs:.2}s (longer than promised; harmless for clients that follow the header)"
                    )
                });
            }
        }
    } else if let (Some(adv), ObservedClose::OpenAtMaxWait) =
        (r.advertised.timeout_s, idle.close_style)
    {
        if let Some(a) = idle.still_open_after_s.or(idle.longest_alive_s) {
            if a > adv + 1.0 + 0.05 * adv {
                r.advertised_true.timeout = Some(false);
                r.findings.push(format!(
                    "advertises timeout={adv} but a connection idle {a:.2}s was still open"
                ));
            }
        }
    }
    // Truth of the advertised max.
    if let (Some(adv), Some(obs)) = (r.advertised.max, r.max_requests.observed) {
        if !matches!(r.max_requests.ended_by, EndedBy::Cap | EndedBy::MaxWait) {
            let ok = obs == adv || obs == adv + 1;
            r.advertised_true.max = Some(ok);
            if !ok {
                r.findings.push(format!(
                    "advertises max={adv} requests but a connection ended after {obs}"
                ));
            }
        }
    }
    if r.max_requests.countdown_ok == Some(false) {
        r.findings
            .push("the Keep-Alive max value does not count down by one per response".into());
    }
    if r.max_requests.ended_by == EndedBy::Closed {
        r.findings.push(format!(
            "after {} requests the server closed the connection without a Connection: close header first",
            r.max_requests.observed.unwrap_or(0)
        ));
    }
    match r.pipelining.result {
        PipelineResult::OutOfOrder => r
            .findings
            .push("pipelined requests were answered OUT OF ORDER (RFC 9112 violation)".into()),
        PipelineResult::Partial => r.findings.push(format!(
            "only {} of {} pipelined requests were answered, and the server had not said it would close{}",
            r.pipelining.answered,
            r.pipelining.sent,
            r.pipelining
                .detail
                .as_deref()
                .map_or(String::new(), |d| format!(" ({d})"))
        )),
        _ => {}
    }
    if r.http10.keep_alive_honored == Some(false) && idle.close_style != ObservedClose::NoKeepAlive
    {
        r.findings
            .push("HTTP/1.0 clients asking for keep-alive get a connection that closes".into());
    }
    if r.http10.plain_closes == Some(false) {
        r.findings
            .push("a plain HTTP/1.0 request (no keep-alive asked) left the connection open".into());
    }
    if idle.unasked_bytes > 0 {
        r.findings.push(format!(
            "the server sent {} bytes on idle connections without a request (e.g. a 408)",
            idle.unasked_bytes
        ));
    }
    if let (Some(hs), Some(reused)) = (r.tls_handshake_s, r.reused_request_s) {
        r.findings.push(format!(
            "a new https connection costs {:.1}ms (TCP {:.1}ms + TLS {:.1}ms + request {:.1}ms); a reused one {:.1}ms",
            (r.connect_s + hs + r.first_request_s) * 1000.0,
            r.connect_s * 1000.0,
            hs * 1000.0,
            r.first_request_s * 1000.0,
            reused * 1000.0
        ));
    }

    let adv = match r.advertised.timeout_s {
        Some(a) => format!("advertises {a}s"),
        None => "advertises no timeout".into(),
    };
    // Margin: 10% of the timeout (pool timers and clocks are coarse) plus two round trips
    // (the server's timer starts a half-trip before the client's; a request needs a half-trip
    // to arrive), rounded to 0.1s.
    let safe = |t: f64| ((t * 0.9 - 2.0 * rtt) * 10.0).round() / 10.0;
    r.verdict = match (idle.close_style, t) {
        (ObservedClose::NoKeepAlive, _) => format!(
            "does not keep connections alive: every response ends with Connection: close ({adv})"
        ),
        (ObservedClose::Fin | ObservedClose::Rst, Some(t)) => {
            let s = safe(t).max(0.0);
            r.safe_idle_s = Some(s);
            format!(
                "closes idle connections after {t:.2}s with {}, {adv}; a client or proxy pool in front of it must drop idle connections before about {s:.1}s",
                idle.close_style.describe()
            )
        }
        (ObservedClose::Silent, Some(t)) => {
            let s = safe(idle.longest_alive_s.unwrap_or(t)).max(0.0);
            r.safe_idle_s = Some(s);
            format!(
                "idle connections die silently after about {t:.2}s (still working at {:.2}s, dead at {:.2}s; no FIN or RST arrives, a later request gets {}), {adv}; something on the path (NAT, conntrack, a load balancer) forgets idle flows: drop pooled connections before about {s:.1}s, or send TCP keep-alive probes more often than that",
                idle.longest_alive_s.unwrap_or(0.0),
                idle.first_dead_s.unwrap_or(0.0),
                idle.on_reuse.as_deref().unwrap_or("no answer").replace('_', " ")
            )
        }
        _ => match idle.still_open_after_s.or(idle.longest_alive_s) {
            Some(a) => format!(
                "kept idle connections open for the whole --max-wait (still open after {a:.2}s of idle), {adv}; raise --max-wait to find the real timeout"
            ),
            None => format!("kept idle connections open for the whole --max-wait, {adv}; raise --max-wait to find the real timeout"),
        },
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_enums_serialize_as_their_names() {
        use EndedBy as E;
        use PipelineResult as P;
        for e in [
            E::ConnectionCloseHeader,
            E::Closed,
            E::Cap,
            E::MaxWait,
            E::Error,
        ] {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
        }
        for p in [
            P::InOrder,
            P::InOrderUnverified,
            P::OutOfOrder,
            P::Partial,
            P::Limited,
            P::NotApplicable,
            P::Error,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert!(p == p.as_str());
        }
        assert_eq!(&*P::InOrderUnverified, "in_order_unverified");
    }

    #[test]
    fn ladder_is_geometric_from_min_to_top() {
        let l = ladder(50, Duration::from_secs(10));
        assert_eq!(l.len(), 50);
        assert!((l[0].as_secs_f64() - 0.25).abs() < 1e-9);
        assert!((l[49].as_secs_f64() - 10.0).abs() < 1e-6);
        let r0 = l[1].as_secs_f64() / l[0].as_secs_f64();
        let r1 = l[40].as_secs_f64() / l[39].as_secs_f64();
        assert!((r0 - r1).abs() < 1e-6);
        assert!(r0 < 1.08, "ratio {r0}");
    }

    fn report(style: ObservedClose, timeout: f64, advertised: Option<f64>) -> ProbeReport {
        ProbeReport {
            url: "http://h/".into(),
            address: "127.0.0.1:80".into(),
            tls: false,
            status: 200,
            server: None,
            connect_s: 0.0002,
            tls_handshake_s: None,
            first_request_s: 0.001,
            reused_request_s: Some(0.0005),
            advertised: Advertised {
                timeout_s: advertised,
                ..Advertised::default()
            },
            http10: Http10::default(),
            idle: IdleResult {
                close_style: style,
                timeout_s: Some(timeout),
                timeout_error_s: Some(0.001),
                closes_seen: 10,
                close_min_s: Some(timeout),
                close_max_s: Some(timeout),
                longest_alive_s: Some(timeout * 0.97),
                first_dead_s: Some(timeout * 1.03),
                on_reuse: Some("no_answer".into()),
                unasked_bytes: 0,
                still_open_after_s: None,
                connections: 101,
                connections_failed: 0,
            },
            max_requests: MaxRequests::default(),
            pipelining: Pipelining::default(),
            advertised_true: Truth::default(),
            safe_idle_s: None,
            findings: Vec::new(),
            verdict: String::new(),
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn verdict_gives_the_timeout_the_style_and_a_safe_idle_with_margin() {
        let mut r = report(ObservedClose::Fin, 5.0, Some(5.0));
        judge(&mut r, 0.0002);
        assert_eq!(
            r.verdict,
            "closes idle connections after 5.00s with FIN, advertises 5s; a client or proxy pool in front of it must drop idle connections before about 4.5s"
        );
        assert_eq!(r.safe_idle_s, Some(4.5));
        assert_eq!(r.advertised_true.timeout, Some(true));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        // A long round trip eats into the margin: 0.9 x 5 - 2 x 0.1.
        let mut r = report(ObservedClose::Rst, 5.0, None);
        judge(&mut r, 0.1);
        assert_eq!(r.safe_idle_s, Some(4.3));
        assert!(
            r.verdict.contains("with RST, advertises no timeout"),
            "{}",
            r.verdict
        );
    }

    #[test]
    fn a_lying_header_and_a_silent_drop_are_called_out() {
        let mut r = report(ObservedClose::Fin, 3.0, Some(9.0));
        judge(&mut r, 0.0);
        assert_eq!(r.advertised_true.timeout, Some(false));
        assert!(r.findings[0].contains("lies"), "{:?}", r.findings);
        let mut r = report(ObservedClose::Silent, 60.0, None);
        judge(&mut r, 0.0);
        assert!(
            r.verdict
                .starts_with("idle connections die silently after about 60.00s"),
            "{}",
            r.verdict
        );
        assert!(r.verdict.contains("no answer"), "{}", r.verdict);
    }

    #[test]
    fn silent_bounds_need_two_failures_above_every_success() {
        assert!(silent_bounds(&[1.0, 2.0], &[(2.5, "no_answer")]).is_none());
        assert!(silent_bounds(&[1.0, 3.0], &[(2.5, "no_answer"), (2.6, "no_answer")]).is_none());
        let b = silent_bounds(&[1.0, 2.9], &[(3.1, "no_answer"), (3.2, "reset")]).unwrap();
        assert_eq!(b, (2.9, 3.1, "no_answer"));
    }
}
