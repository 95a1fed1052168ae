//! `kaprobe probe URL`: what a server or proxy advertises about keep-alive and what it does.

use std::process::ExitCode;
use std::time::Duration;

use kaprobe_http::client::{probe, ProbeOptions, PushKind};

use crate::args::parse_duration;
use crate::exit::Failure;
use crate::measure::measure;

/// Measure what an HTTP server or proxy really does with idle connections (and idle
/// WebSockets and event streams: ws://, wss://, --sse).
///
/// Opens a ladder of keep-alive connections (--connections, default 100) that idle in
/// parallel. Each one waits for the server to close it (timing the FIN or RST to a few
/// milliseconds), and each sends a new request after a different idle time, which is how a
/// silent drop (a NAT or load balancer forgetting the connection, no FIN, no RST) is found.
/// The answer arrives shortly after the idle timeout itself; --max-wait bounds everything.
///
/// Alongside it measures requests per connection (until `Connection: close`), checks that
/// pipelined requests are answered in order, how HTTP/1.0 clients are treated, and for https
/// the TLS handshake against a request on a reused connection. It compares all of this with
/// what the server advertises (`Keep-Alive: timeout=N, max=M`) and ends with a verdict: the
/// idle time a client or proxy pool in front of the server must stay under.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Opens a ladder of keep-alive connections (--connections, default 100) that idle in
parallel. Each one waits for the server to close it (timing the FIN or RST to a few
milliseconds), and each sends a new request after a different idle time, which is how a
silent drop (a NAT or load balancer forgetting the connection, no FIN, no RST) is found.
The answer arrives shortly after the idle timeout itself; --max-wait bounds everything.

Alongside it measures requests per connection (until `Connection: close`), checks that
pipelined requests are answered in order, how HTTP/1.0 clients are treated, and for https
the TLS handshake against a request on a reused connection. It compares all of this with
what the server advertises (`Keep-Alive: timeout=N, max=M`) and ends with a verdict: the
idle time a client or proxy pool in front of the server must stay under.

HTTP/2: an h2c:// URL (cleartext, prior knowledge), or --http2 with https:// (ALPN h2),
runs the same idle ladder over HTTP/2 and tells how idle connections end (GOAWAY then FIN,
GOAWAY then RST, bare FIN or RST, silence), with the GOAWAY's code, last stream id and
phases, SETTINGS_MAX_CONCURRENT_STREAMS, requests before a GOAWAY, the PING round trip and
whether PINGs keep an idle connection open. --grpc adds the gRPC health check and the
server's PING policy (see --grpc). See docs/http2.md.

Push channels: a ws:// or wss:// URL, or --sse with an http(s) URL, probes a WebSocket or a
Server-Sent Events stream instead. One connection is left idle and timed until something ends
it (close frame, bare FIN, RST) or --hold / --max-wait runs out; when it died after T, a second
connection with a heartbeat of about T/2 (client pings; for SSE the server's heartbeat, asked
for with ?heartbeat=D, a kaprobe serve parameter) is watched for a few lifetimes to confirm
the interval. --heartbeat D watches one connection with that heartbeat instead. See
docs/push-probe.md.

Examples:
  kaprobe probe http://127.0.0.1:8080/
  kaprobe probe https://api.example.com/ --max-wait aws-nlb
  kaprobe probe http://lb/ -H 'Host: shop.example' --connect-to lb:80:10.0.3.7:
  kaprobe probe https://localhost:8443/health --cacert ca.pem --max-wait 90s
  kaprobe probe http://10.0.0.5/ --json | jq .idle
  kaprobe probe ws://127.0.0.1:8080/ws
  kaprobe probe --sse http://127.0.0.1:8080/sse --heartbeat 1s --hold 10s
  kaprobe probe h2c://127.0.0.1:8080/ --max-wait 20s
  kaprobe probe --http2 https://localhost:8443/ --cacert ca.pem --ping-every 1s
  kaprobe probe --grpc h2c://127.0.0.1:50051 --json | jq .grpc.ping_policy

Exit codes: 0 measured (whatever the verdict), 2 bad URL or flag, 3 host not resolved,
4 connection refused, 5 unreachable or no answer in time,
7 --cacert file unreadable or not PEM, 8 TLS error,
9 not HTTP (garbage, cut-off or empty answer), not a WebSocket (no 101 to the upgrade),
not an event stream (no 200 text/event-stream) or not HTTP/2 (no SETTINGS to the preface,
no h2 by ALPN). See docs/probe.md, docs/push-probe.md and docs/http2.md.")]
pub struct Args {
    /// The URL to probe: http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]; ws:// or
    /// wss:// for a WebSocket; h2c://... for HTTP/2 without TLS.
    pub url: String,

    /// Probe a Server-Sent Events stream (text/event-stream) at the http(s) URL.
    #[arg(long)]
    pub sse: bool,

    /// Upper bound on the whole probe (e.g. 90s, 2m). Idle timeouts longer than this are
    /// reported as "not within --max-wait" ("survived at least" for push channels).
    /// Range 1s..=24h. Default 150s for http(s), 5m for WebSocket and SSE. A middlebox
    /// name waits past its idle limit: aws-alb, aws-nlb, aws-nat-gateway, azure-lb,
    /// azure-lb-reset, gcp-lb, or cloud (past the longest; see `kaprobe middlebox --help`).
    #[arg(long, value_name = "D|NAME", value_parser = parse_max_wait)]
    pub max_wait: Option<Duration>,

    /// Push channels only: keep the connection alive with this heartbeat and watch just that
    /// one (WebSocket: a client ping every D; SSE: asks the server with ?heartbeat=D, which
    /// kaprobe serve understands). Range 10ms..=1h.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,

    /// Push channels only: watch each connection at most this long (e.g. --heartbeat 1s
    /// --hold 10s: does a 1s heartbeat keep it alive for 10s?). Range 1s..=24h.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub hold: Option<Duration>,

    /// Connections on the idle ladder (more connections = finer silent-drop timing).
    /// Range 2..=1000.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub connections: usize,

    /// Stop counting requests on one connection after this many. Range 1..=100000.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_requests_cap: u64,

    /// HTTP/2: with https:// offer only h2 by ALPN (a server that will not speak it is an
    /// error); with http:// speak h2c with prior knowledge, as h2c:// URLs always do. Adds
    /// the GOAWAY, SETTINGS and PING measurements (docs/http2.md).
    #[arg(long)]
    pub http2: bool,

    /// gRPC (implies --http2): the request is the health check
    /// (POST /grpc.health.v1.Health/Check, or the URL's path), and the server's PING policy
    /// is searched: PINGs with no call open at intervals from 25ms doubling, each on its own
    /// connection, all at once, then two rounds inside the bracket, until GOAWAY
    /// ENHANCE_YOUR_CALM "too_many_pings" separates refused from accepted. The search runs
    /// alongside the idle ladder and never past --max-wait (less 1s): a server whose minimum
    /// is longer is reported as "longer than tested".
    #[arg(long)]
    pub grpc: bool,

    /// HTTP/2: the PING interval for the "do PINGs keep an idle connection open" check, run
    /// after the idle timeout is known (default: a third of that timeout). Range 10ms..=1h.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub ping_every: Option<Duration>,

    #[command(flatten)]
    pub tls: crate::args::TlsArgs,

    #[command(flatten)]
    pub request: crate::args::RequestArgs,

    /// One JSON object on stdout instead of the table (shape in docs/probe.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lower = args.url.trim().to_ascii_lowercase();
    let h2 = args.http2 || args.grpc || lower.starts_with("h2c://");
    if h2 && (args.sse || args.heartbeat.is_some() || args.hold.is_some()) {
        return Err(Failure::usage(
            "--sse, --heartbeat and --hold are for push channels, not HTTP/2 (--http2, --grpc, h2c://)",
        )
        .into());
    }
    if h2 {
        if args.request.options()? != kaprobe_http::client::RequestOptions::default() {
            return Err(Failure::usage(
                "-H, -X, --data, --resolve and --connect-to apply to HTTP/1.1 probes; over HTTP/2 (--http2, --grpc, h2c://) the request is fixed",
            )
            .into());
        }
        return run_h2(&args);
    }
    if args.ping_every.is_some() {
        return Err(Failure::usage(
            "--ping-every is for HTTP/2: use an h2c:// URL, or --http2 with https://",
        )
        .into());
    }
    if args.sse || lower.starts_with("ws://") || lower.starts_with("wss://") {
        let kind = if args.sse {
            PushKind::Sse
        } else {
            PushKind::Websocket
        };
        if args.request.options()? != kaprobe_http::client::RequestOptions::default() {
            return Err(Failure::usage(
                "-H, -X, --data, --resolve and --connect-to apply to http(s) probes, not to WebSocket or SSE ones",
            )
            .into());
        }
        return run_push(&args, kind);
    }
    if args.heartbeat.is_some() || args.hold.is_some() {
        return Err(Failure::usage(
            "--heartbeat and --hold are for push channels: use a ws:// or wss:// URL, or --sse",
        )
        .into());
    }
    let opts = ProbeOptions {
        max_wait: args.max_wait.unwrap_or(Duration::from_secs(150)),
        connections: args.connections,
        max_requests_cap: args.max_requests_cap,
        tls: args.tls.options(),
        request: args.request.options()?,
    };
    opts.validate().map_err(crate::exit::http_failure)?;
    let _progress = Progress::start(opts.max_wait);
    measure(
        probe(&args.url, &opts),
        args.json,
        crate::render::http::probe,
    )
}

/// `--max-wait`: a duration or a middlebox preset's name (the library's parser).
fn parse_max_wait(s: &str) -> Result<Duration, String> {
    kaprobe_http::client::max_wait::parse_max_wait(s).map_err(|e| e.to_string())
}

/// For a probe that may run a minute or more: a line on stderr every 30 s saying how far it
/// is, so a probe left running in the background (`2>probe.log &`) shows it is alive.
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(30);

    fn start(max_wait: Duration) -> Self {
        if max_wait < Duration::from_secs(60) {
            return Self {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let start = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Self::EVERY)
            {
                let done = Duration::from_secs(start.elapsed().as_secs());
                eprintln!(
                    "kaprobe probe: {} of at most {} (--max-wait): idle connections are still being watched",
                    crate::util::human(done),
                    crate::util::human(max_wait)
                );
            }
        });
        Self {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `kaprobe probe h2c://...` / `--http2` / `--grpc`: the HTTP/2 prober.
fn run_h2(args: &Args) -> anyhow::Result<ExitCode> {
    use kaprobe_http::client::h2::{probe_h2, H2Options};
    let opts = H2Options {
        max_wait: args.max_wait.unwrap_or(Duration::from_secs(150)),
        connections: args.connections,
        max_requests_cap: args.max_requests_cap,
        ping_every: args.ping_every,
        grpc: args.grpc,
        tls: args.tls.options(),
    };
    opts.validate().map_err(crate::exit::http_failure)?;
    measure(
        probe_h2(&args.url, &opts),
        args.json,
        crate::render::http::probe_h2,
    )
}

/// `kaprobe probe ws://...` / `kaprobe probe --sse URL`: the push-channel prober.
fn run_push(args: &Args, kind: PushKind) -> anyhow::Result<ExitCode> {
    use kaprobe_http::client::{push_probe, PushOptions};
    let max_wait = args.max_wait.unwrap_or(Duration::from_secs(300));
    let opts = PushOptions {
        kind,
        max_wait,
        heartbeat: args.heartbeat,
        hold: args.hold,
        tls: args.tls.options(),
    };
    opts.validate().map_err(crate::exit::http_failure)?;
    measure(
        push_probe(&args.url, &opts),
        args.json,
        crate::render::http::push,
    )
}
