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
use tokio::time::Instant;

mod judge;
pub(crate) mod measure;

use judge::judge;
pub(crate) use judge::silent_bounds;
pub use measure::ladder;
use measure::{
    cap, count_requests, http10_checks, left, measure_idle, no_keep_alive_idle, pipelining_check,
};

use super::conn::{Connector, HttpVersion};
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
    /// `-H`, `-X`, `--data`, `--resolve`, `--connect-to`.
    pub request: super::request::RequestOptions,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(150),
            connections: 100,
            max_requests_cap: 1000,
            tls: TlsOptions::default(),
            request: super::request::RequestOptions::default(),
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

/// The idle-timeout measurement. `C` says how a connection ended: [`ObservedClose`] for
/// HTTP/1.x, `H2Close` for HTTP/2 (the JSON fields are the same).
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult<C = ObservedClose> {
    pub close_style: C,
    /// Best estimate of the idle timeout (over HTTP/2 to the first GOAWAY, or to the close),
    /// seconds.
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
    /// Bytes the server sent on idle connections without being asked (e.g. a 408; always 0
    /// over HTTP/2).
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
    /// When the connections were still open at `--max-wait`: the known middlebox idle
    /// limits longer than what was seen, which this probe cannot rule out (shortest first).
    pub not_ruled_out: Vec<super::max_wait::NotRuledOut>,
    pub findings: Vec<String>,
    pub verdict: String,
    pub elapsed_s: f64,
}

impl ProbeOptions {
    /// Check every option against its range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), Error> {
        super::check_max_wait(self.max_wait)?;
        super::check_count("--connections", self.connections, 2..=1000)?;
        if self.request.method_or("GET").eq_ignore_ascii_case("HEAD") {
            return Err(Error::InvalidOption(
                "-X HEAD: probe reads every response's body and a HEAD answer has none; \
                 leave -X out (GET) or use another method"
                    .into(),
            ));
        }
        super::check_count("--max-requests-cap", self.max_requests_cap, 1..=100_000)
    }
}

/// Run the whole probe against `url`.
pub async fn probe(url: &str, opts: &ProbeOptions) -> Result<ProbeReport, Error> {
    let target = Target::parse(url)?;
    opts.validate()?;
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let mut connector = Connector::new_with(
        target,
        &opts.tls,
        left(deadline).min(Duration::from_secs(10)),
        &opts.request,
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
        not_ruled_out: Vec::new(),
        findings: Vec::new(),
        verdict: String::new(),
        elapsed_s: 0.0,
    };
    judge(&mut report, times.connect.as_secs_f64());
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
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
            not_ruled_out: Vec::new(),
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
