//! `probe` over HTTP/2: h2c with prior knowledge (`h2c://`) or TLS with ALPN `h2`
//! (`--http2 https://`).
//!
//! The idle timeout is measured as for HTTP/1.1, on a ladder of connections that idle in
//! parallel (passive watchers time the GOAWAY or the close to a few milliseconds; reusing
//! rungs find a silent drop), and the end is told apart: GOAWAY then FIN, GOAWAY then RST,
//! a bare FIN or RST, or silence. Alongside: the GOAWAY's error code, last stream id, debug
//! data and whether it came in two phases (a first GOAWAY with last stream id 2^31-1, then
//! the real one), SETTINGS_MAX_CONCURRENT_STREAMS, requests per connection before a GOAWAY,
//! the PING round trip, and whether PINGs keep an otherwise idle connection open.
//!
//! With `grpc`, the request is the gRPC health check and the server's PING policy is
//! searched: the shortest interval between PINGs (with no stream open) that it accepts
//! without a GOAWAY ENHANCE_YOUR_CALM "too_many_pings", and a client keepalive_time that
//! stays clear of it.
//!
//! - [`wire`]: the raw-frame client used for the measurements;
//! - `measure`: everything that talks to the server;
//! - `judge`: pure functions from measurements to findings and a verdict;
//! - [`race`]: the reuse race over HTTP/2 (`kaprobe race h2c://...`).

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

mod judge;
mod measure;
pub mod race;
pub mod wire;

pub use race::{race_h2, H2Attempt, H2Bin, H2Outcome, H2RaceReport};

use super::target::Target;
use super::tls::TlsOptions;
use crate::Error;
use wire::H2Connector;

/// 2^31-1: the last stream id of the first GOAWAY of a graceful two-phase shutdown
/// (RFC 9113 section 6.8).
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// What the HTTP/2 prober does and how long it may take.
#[derive(Debug, Clone)]
pub struct H2Options {
    /// Upper bound on the whole probe (the idle measurement and the PING search stop there).
    pub max_wait: Duration,
    /// Connections on the idle ladder.
    pub connections: usize,
    /// Stop counting requests on one connection after this many.
    pub max_requests_cap: u64,
    /// PING interval for the "do PINGs keep it alive" check (None: a third of the idle
    /// timeout found).
    pub ping_every: Option<Duration>,
    /// The gRPC health check as the request, and the PING policy search.
    pub grpc: bool,
    pub tls: TlsOptions,
}

impl Default for H2Options {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(150),
            connections: 100,
            max_requests_cap: 1000,
            ping_every: None,
            grpc: false,
            tls: TlsOptions::default(),
        }
    }
}

impl H2Options {
    /// Check every option against its range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), Error> {
        super::check_max_wait(self.max_wait)?;
        super::check_count("--connections", self.connections, 2..=1000)?;
        super::check_count("--max-requests-cap", self.max_requests_cap, 1..=100_000)?;
        if let Some(d) = self.ping_every {
            super::check_duration("--ping-every", d, 10, 3_600_000, "10ms..=1h")?;
        }
        Ok(())
    }
}

/// How an idle HTTP/2 connection was seen to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum H2Close {
    /// GOAWAY, then the server closed with FIN.
    GoawayThenFin,
    /// GOAWAY, then the connection was reset.
    GoawayThenRst,
    /// GOAWAY, and the connection stayed open (for the 2 s watched after it).
    GoawayOnly,
    /// FIN with no GOAWAY first.
    Fin,
    /// RST with no GOAWAY first.
    Rst,
    /// Nothing arrived; a later request got no answer, an RST or nothing.
    Silent,
    /// Still open when `--max-wait` ran out.
    OpenAtMaxWait,
}

impl H2Close {
    /// Plain words.
    pub fn describe(self) -> &'static str {
        match self {
            H2Close::GoawayThenFin => "GOAWAY then FIN",
            H2Close::GoawayThenRst => "GOAWAY then RST",
            H2Close::GoawayOnly => "GOAWAY, left open",
            H2Close::Fin => "FIN without GOAWAY",
            H2Close::Rst => "RST without GOAWAY",
            H2Close::Silent => "silently (no GOAWAY, FIN or RST)",
            H2Close::OpenAtMaxWait => "not within --max-wait",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            H2Close::GoawayThenFin => "goaway_then_fin",
            H2Close::GoawayThenRst => "goaway_then_rst",
            H2Close::GoawayOnly => "goaway_only",
            H2Close::Fin => "fin",
            H2Close::Rst => "rst",
            H2Close::Silent => "silent",
            H2Close::OpenAtMaxWait => "open_at_max_wait",
        }
    }
}

/// The idle-timeout measurement: HTTP/1.1's fields, with `close_style` saying how HTTP/2
/// ended it (`unasked_bytes` is always 0 over HTTP/2).
pub type H2Idle = crate::client::probe::IdleResult<H2Close>;

/// One GOAWAY frame as it arrived.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoAwaySeen {
    /// Idle time when it arrived, seconds.
    pub at_s: f64,
    pub last_stream_id: u32,
    /// The RFC 9113 name of the error code.
    pub error: String,
    pub code: u32,
    /// The debug data (lossy UTF-8, at most 256 bytes).
    pub debug: String,
}

/// Single GOAWAY, or a two-phase shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoawayPhases {
    Single,
    /// A first GOAWAY with last stream id 2^31-1, then a second with the real one.
    TwoPhase,
}

/// How the request count on one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum H2CountEnd {
    /// The server sent GOAWAY.
    Goaway,
    /// The server closed (FIN/RST) without a GOAWAY first.
    Closed,
    /// The cap was reached with the connection still open.
    Cap,
    /// Time ran out.
    MaxWait,
    #[default]
    Error,
}

/// The "does a PING keep it alive" check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PingOutcome {
    /// The pinged connection outlived the idle timeout.
    KeptAlive,
    /// It ended at about the idle timeout anyway: PINGs do not count as activity.
    ClosedAtIdle,
    /// The server answered the PINGs with GOAWAY ENHANCE_YOUR_CALM.
    Rejected,
    /// Not run: no idle timeout was found, or not enough --max-wait was left.
    #[default]
    NotRun,
    /// The check's connection failed.
    Error,
}

/// What the PING check saw.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PingCheck {
    pub outcome: PingOutcome,
    pub every_s: Option<f64>,
    pub pings_sent: u64,
    /// How long the pinged connection was watched (or lived), seconds.
    pub lasted_s: Option<f64>,
    pub detail: Option<String>,
}

/// Everything HTTP/2 adds to the report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Http2Info {
    pub goaway_seen: bool,
    /// RFC name of the (last) idle GOAWAY's error code.
    pub goaway_error: Option<String>,
    pub goaway_last_stream_id: Option<u32>,
    pub goaway_debug: Option<String>,
    pub goaway_phases: Option<GoawayPhases>,
    /// The GOAWAY frames of one idle connection, in order.
    pub goaways: Vec<GoAwaySeen>,
    /// From the last GOAWAY to the close, seconds.
    pub goaway_to_close_s: Option<f64>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (None: the server did not set it, so no limit).
    pub max_concurrent_streams: Option<u32>,
    /// Requests answered on one connection before the server sent GOAWAY.
    pub requests_before_goaway: Option<u64>,
    pub requests_ended_by: H2CountEnd,
    pub requests_cap: u64,
    /// Median PING round trip, seconds.
    pub ping_rtt_s: Option<f64>,
    /// Whether a PING every `ping.every_s` kept an otherwise idle connection open past the
    /// idle timeout.
    pub ping_keeps_alive: Option<bool>,
    pub ping: PingCheck,
}

/// The result of the PING policy search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyResult {
    /// A minimum interval was bracketed.
    Found,
    /// Pings back to back were all accepted: no policy (or one below 20ms).
    NoneFound,
    /// Every interval up to the budget was rejected.
    LongerThanTested,
    /// The server ended connections for other reasons before a test could finish.
    #[default]
    Inconclusive,
}

/// The server's PING policy, as found by `--grpc`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PingPolicy {
    pub result: PolicyResult,
    /// Bad pings tolerated before the GOAWAY (gRPC's max_ping_strikes).
    pub max_ping_strikes: Option<u32>,
    /// The shortest interval between PINGs with no stream open that the server accepts,
    /// seconds (midpoint of the bracket).
    pub min_ping_interval_s: Option<f64>,
    pub min_ping_interval_error_s: Option<f64>,
    pub largest_rejected_s: Option<f64>,
    pub smallest_accepted_s: Option<f64>,
    /// The GOAWAY's debug data (gRPC: "too_many_pings").
    pub goaway_debug: Option<String>,
    /// A client keepalive_time that stays clear of the policy, seconds.
    pub safe_keepalive_time_s: Option<f64>,
    pub intervals_tested: usize,
    /// Time the search took and the most it was allowed, seconds.
    pub search_s: f64,
    pub budget_s: f64,
}

/// The gRPC part of the report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GrpcInfo {
    pub path: String,
    /// `grpc-status` of the health check (0 = OK).
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
    /// The HealthCheckResponse status: SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN.
    pub serving: Option<String>,
    pub ping_policy: PingPolicy,
}

/// The full HTTP/2 probe report.
#[derive(Debug, Clone, Serialize)]
pub struct H2Report {
    pub url: String,
    pub address: String,
    /// `h2c` (cleartext, prior knowledge) or `h2` (TLS, ALPN).
    pub protocol: String,
    pub tls: bool,
    pub status: u16,
    pub server: Option<String>,
    pub connect_s: f64,
    pub tls_handshake_s: Option<f64>,
    pub first_request_s: f64,
    pub idle: H2Idle,
    pub http2: Http2Info,
    pub grpc: Option<GrpcInfo>,
    /// Idle time a client or proxy pool in front should stay under, seconds.
    pub safe_idle_s: Option<f64>,
    pub findings: Vec<String>,
    pub verdict: String,
    pub elapsed_s: f64,
}

/// How a URL asks for HTTP/2: `h2c://` always, `http(s)://` with `--http2` (or `--grpc`).
/// Returns the target (scheme http or https) and whether TLS is used; None when the URL
/// does not ask for HTTP/2.
///
/// # Errors
/// A bad URL, or a ws/wss URL with `--http2`.
pub fn h2_target(url: &str, http2: bool) -> Result<Option<(Target, bool)>, Error> {
    let trimmed = url.trim();
    let scheme = trimmed
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("h2c") => {
            let rest = &trimmed[trimmed.find("://").unwrap_or(0)..];
            let mut t = Target::parse(&format!("http{rest}")).map_err(|e| match e {
                Error::BadUrl { reason, .. } => Error::BadUrl {
                    url: url.to_string(),
                    reason,
                },
                other => other,
            })?;
            t.url = url.to_string();
            Ok(Some((t, false)))
        }
        Some("http") if http2 => Ok(Some((Target::parse(url)?, false))),
        Some("https") if http2 => Ok(Some((Target::parse(url)?, true))),
        Some(s @ ("ws" | "wss")) if http2 => Err(Error::InvalidOption(format!(
            "--http2 and --grpc take h2c://, http:// or https:// URLs, not {s}://"
        ))),
        _ if http2 => Target::parse(url).map(|t| Some((t, false))),
        _ => Ok(None),
    }
}

/// Run the whole HTTP/2 probe against `url` (`h2c://`, or `http(s)://` meaning HTTP/2).
///
/// # Errors
/// A bad URL or option, or a first connection that fails or will not speak HTTP/2.
pub async fn probe_h2(url: &str, opts: &H2Options) -> Result<H2Report, Error> {
    let Some((target, tls)) = h2_target(url, true)? else {
        return Err(Error::InvalidOption(format!(
            "'{url}' is not an HTTP/2 URL"
        )));
    };
    opts.validate()?;
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let mut connector = H2Connector::new(
        target,
        tls.then_some(&opts.tls),
        measure::left(deadline).min(Duration::from_secs(10)),
    )
    .await?;
    let path = if opts.grpc && connector.target.path == "/" {
        measure::HEALTH_PATH.to_string()
    } else {
        connector.target.path.clone()
    };
    let spec = wire::ReqSpec::new(&connector, &path, opts.grpc);

    // The first connection: does it speak HTTP/2 at all (clear errors), the PING round trip.
    let (io, times) = connector
        .open_first(measure::left(deadline).min(Duration::from_secs(10)))
        .await?;
    let mut raw = wire::Raw::start(
        io,
        connector.addr,
        Instant::now() + measure::left(deadline).min(Duration::from_secs(10)),
    )
    .await?;
    let ping_rtt = measure::ping_rtt(&mut raw, deadline).await;
    let max_concurrent = raw.max_concurrent_streams;
    drop(raw);
    // The first request through the `h2` crate: status, Server, gRPC status.
    let first = measure::first_request(&connector, &path, opts.grpc, deadline).await?;
    let answer_timeout = (first.took * 10).clamp(Duration::from_secs(1), Duration::from_secs(5));

    let count_deadline = deadline.min(start + Duration::from_secs(60).max(opts.max_wait / 2));
    let (idle, count, policy) = tokio::join!(
        measure::measure_idle(&connector, &spec, opts, answer_timeout, deadline),
        measure::count_requests(&connector, &spec, opts.max_requests_cap, count_deadline),
        async {
            if opts.grpc {
                Some(measure::ping_policy(&connector, ping_rtt, deadline).await)
            } else {
                None
            }
        },
    );
    let (idle, wire_end) = idle;
    let ping = measure::ping_check(
        &connector,
        &spec,
        opts.ping_every,
        idle.timeout_s,
        idle.close_max_s,
        deadline,
    )
    .await;

    let mut http2 = Http2Info {
        max_concurrent_streams: max_concurrent.or(first.max_concurrent_streams),
        requests_before_goaway: count.0,
        requests_ended_by: count.1,
        requests_cap: opts.max_requests_cap,
        ping_rtt_s: ping_rtt.map(|d| d.as_secs_f64()),
        ping_keeps_alive: match ping.outcome {
            PingOutcome::KeptAlive => Some(true),
            PingOutcome::ClosedAtIdle | PingOutcome::Rejected => Some(false),
            PingOutcome::NotRun | PingOutcome::Error => None,
        },
        ping,
        ..Http2Info::default()
    };
    judge::fill_goaway(&mut http2, wire_end.as_ref());
    let grpc = opts.grpc.then(|| GrpcInfo {
        path: path.clone(),
        grpc_status: first.grpc_status,
        grpc_message: first.grpc_message.clone(),
        serving: first.serving.clone(),
        ping_policy: policy.unwrap_or_default(),
    });
    let mut report = H2Report {
        url: connector.target.url.clone(),
        address: connector.addr.to_string(),
        protocol: if tls { "h2" } else { "h2c" }.into(),
        tls,
        status: first.status,
        server: first.server.clone(),
        connect_s: times.connect.as_secs_f64(),
        tls_handshake_s: times.tls_handshake.map(|d| d.as_secs_f64()),
        first_request_s: first.took.as_secs_f64(),
        idle,
        http2,
        grpc,
        safe_idle_s: None,
        findings: Vec::new(),
        verdict: String::new(),
        elapsed_s: 0.0,
    };
    judge::judge(&mut report, times.connect.as_secs_f64());
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}
