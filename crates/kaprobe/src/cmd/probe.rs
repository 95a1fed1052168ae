//! `kaprobe probe URL`: what a server or proxy advertises about keep-alive and what it does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kaprobe_http::client::{probe, ProbeOptions, ProbeReport, PushKind, TlsOptions};

use crate::exit::{self, Failure};
use crate::util::{self, parse_duration, print_json_line, table};

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

Push channels: a ws:// or wss:// URL, or --sse with an http(s) URL, probes a WebSocket or a
Server-Sent Events stream instead. One connection is left idle and timed until something ends
it (close frame, bare FIN, RST) or --hold / --max-wait runs out; when it died after T, a second
connection with a heartbeat of about T/2 (client pings; for SSE the server's heartbeat, asked
for with ?heartbeat=D, a kaprobe serve parameter) is watched for a few lifetimes to confirm
the interval. --heartbeat D watches one connection with that heartbeat instead. See
docs/push-probe.md.

Examples:
  kaprobe probe http://127.0.0.1:8080/
  kaprobe probe https://localhost:8443/health --cacert ca.pem --max-wait 90s
  kaprobe probe http://10.0.0.5/ --json | jq .idle
  kaprobe probe ws://127.0.0.1:8080/ws
  kaprobe probe --sse http://127.0.0.1:8080/sse --heartbeat 1s --hold 10s

Exit codes: 0 measured (whatever the verdict), 2 bad URL or flag, 3 host not resolved,
4 connection refused, 5 unreachable or no answer in time,
7 --cacert file unreadable or not PEM, 8 TLS error,
9 not HTTP (garbage, cut-off or empty answer), not a WebSocket (no 101 to the upgrade) or
not an event stream (no 200 text/event-stream). See docs/probe.md and docs/push-probe.md.")]
pub struct Args {
    /// The URL to probe: http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]; ws:// or
    /// wss:// for a WebSocket.
    pub url: String,

    /// Probe a Server-Sent Events stream (text/event-stream) at the http(s) URL.
    #[arg(long)]
    pub sse: bool,

    /// Upper bound on the whole probe (e.g. 90s, 2m). Idle timeouts longer than this are
    /// reported as "not within --max-wait" ("survived at least" for push channels).
    /// Range 1s..=24h. Default 150s for http(s), 5m for WebSocket and SSE.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
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

    /// Trust the CA certificate(s) in this PEM file instead of the system store (https).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Do not verify the server's certificate (https); the handshake is still timed.
    #[arg(long)]
    pub insecure: bool,

    /// One JSON object on stdout instead of the table (shape in docs/probe.md).
    #[arg(long)]
    pub json: bool,
}

/// Map a prober error to the exit status it should give.
pub(crate) fn failure(e: kaprobe_http::Error) -> Failure {
    use kaprobe_http::Error as E;
    let code = match &e {
        E::BadUrl { .. } | E::UnsupportedScheme { .. } | E::InvalidOption(_) => exit::USAGE,
        E::Resolve { .. } => exit::RESOLVE,
        E::Connect { source, .. } => exit::connect_code(source),
        E::ConnectTimeout { .. } | E::NoAnswer { .. } => exit::UNREACHABLE,
        E::Tls { .. } => exit::TLS,
        E::CaFile { .. } => exit::FILE,
        E::Garbage { .. }
        | E::ClosedMidResponse { .. }
        | E::NoResponse { .. }
        | E::NotPush { .. } => exit::PROTOCOL,
        _ => exit::FAILURE,
    };
    Failure::new(code, e.to_string())
}

/// Check `--max-wait`-style bounds shared by probe and race.
pub(crate) fn check_max_wait(d: Duration) -> Result<(), Failure> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        return Err(Failure::usage(format!(
            "--max-wait {} is out of range: use 1s..=24h",
            crate::util::human(d)
        )));
    }
    Ok(())
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lower = args.url.trim().to_ascii_lowercase();
    if args.sse || lower.starts_with("ws://") || lower.starts_with("wss://") {
        let kind = if args.sse {
            PushKind::Sse
        } else {
            PushKind::Websocket
        };
        return run_push(&args, kind);
    }
    if args.heartbeat.is_some() || args.hold.is_some() {
        return Err(Failure::usage(
            "--heartbeat and --hold are for push channels: use a ws:// or wss:// URL, or --sse",
        )
        .into());
    }
    let max_wait = args.max_wait.unwrap_or(Duration::from_secs(150));
    check_max_wait(max_wait)?;
    util::in_range("--connections", args.connections, 2..=1000)?;
    util::in_range("--max-requests-cap", args.max_requests_cap, 1..=100_000)?;
    let opts = ProbeOptions {
        max_wait,
        connections: args.connections,
        max_requests_cap: args.max_requests_cap,
        tls: TlsOptions {
            cacert: args.cacert,
            insecure: args.insecure,
        },
    };
    measure(probe(&args.url, &opts), args.json, render)
}

/// Run one measurement to its end and print its report: one JSON line, or `render`.
pub(crate) fn measure<R: serde::Serialize>(
    fut: impl std::future::Future<Output = Result<R, kaprobe_http::Error>>,
    json: bool,
    render: fn(&R) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(fut);
    // A resolver thread stuck on a slow DNS server must not hold the exit past --max-wait.
    rt.shutdown_timeout(Duration::from_millis(100));
    let report = result.map_err(failure)?;
    if json {
        print_json_line(&serde_json::to_value(&report)?)?;
    } else {
        render(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}s"))
}

/// The probe's total time, from the library's duration type.
fn took(r: &ProbeReport) -> String {
    format!(
        "{:.2}s",
        crate::util::secs(Duration::from_secs_f64(r.elapsed_s.max(0.0)))
    )
}

fn ms(s: f64) -> String {
    format!("{:.1}ms", s * 1000.0)
}

fn yes_no(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.into(),
        Some(false) => no.into(),
        None => "-".into(),
    }
}

/// The first line of both reports: what was probed, where it went, what answered.
fn print_target(
    url: &str,
    address: &impl std::fmt::Display,
    status: u16,
    server: Option<&str>,
) -> anyhow::Result<()> {
    let server = server.map_or(String::new(), |s| format!(", server: {s}"));
    util::println_wrapped(&format!("{url} -> {address} (status {status}{server})"))
}

pub(crate) fn render(r: &ProbeReport) -> anyhow::Result<()> {
    print_target(&r.url, &r.address, r.status, r.server.as_deref())?;
    let mut t = table();
    t.set_header(vec!["", "advertised", "observed"]);
    let idle = &r.idle;
    let observed_idle = match idle.close_style {
        kaprobe_http::client::CloseStyle::OpenAtMaxWait => format!(
            "still open at --max-wait{}",
            idle.still_open_after_s
                .or(idle.longest_alive_s)
                .map_or(String::new(), |a| format!(" ({a:.2}s idle)"))
        ),
        kaprobe_http::client::CloseStyle::NoKeepAlive => "closes after every response".into(),
        style => format!(
            "{} ± {}, {}",
            secs(idle.timeout_s),
            idle.timeout_error_s
                .map_or("-".into(), |e| format!("{:.0}ms", e * 1000.0)),
            style.describe()
        ),
    };
    t.add_row(vec![
        "idle timeout".to_string(),
        secs(r.advertised.timeout_s),
        observed_idle,
    ]);
    let max_obs = match (r.max_requests.observed, r.max_requests.ended_by.as_str()) {
        (Some(n), "cap") => format!("at least {n} (cap reached)"),
        (Some(n), "max_wait") => format!("at least {n} (time ran out)"),
        (Some(n), "closed") => format!("{n}, then closed without notice"),
        (Some(n), _) => format!("{n}, last one says Connection: close"),
        (None, _) => "-".into(),
    };
    t.add_row(vec![
        "requests per connection".to_string(),
        // `max` on the first response counts the requests still allowed after it
        r.advertised.max.map_or("-".into(), |m| {
            format!("max={m}: {} in all", m.saturating_add(1))
        }),
        max_obs,
    ]);
    t.add_row(vec![
        "Connection header".to_string(),
        r.advertised
            .connection
            .clone()
            .unwrap_or_else(|| "-".into()),
        String::new(),
    ]);
    t.add_row(vec![
        "HTTP/1.0 + keep-alive".to_string(),
        String::new(),
        yes_no(r.http10.keep_alive_honored, "kept alive", "closed"),
    ]);
    t.add_row(vec![
        "HTTP/1.0 plain".to_string(),
        String::new(),
        yes_no(
            r.http10.plain_closes,
            "closed after the response",
            "left open",
        ),
    ]);
    let pipelining = if r.pipelining.sent == 0 {
        r.pipelining.result.replace('_', " ")
    } else if r.pipelining.result == "limited" {
        format!(
            "in order, {} of {} answered: {}",
            r.pipelining.answered,
            r.pipelining.sent,
            r.pipelining
                .detail
                .as_deref()
                .unwrap_or("the server closed as announced")
        )
    } else {
        format!(
            "{} ({} of {} answered)",
            r.pipelining.result.replace('_', " "),
            r.pipelining.answered,
            r.pipelining.sent
        )
    };
    t.add_row(vec!["pipelining".to_string(), String::new(), pipelining]);
    let mut timing = format!("connect {}", ms(r.connect_s));
    if let Some(hs) = r.tls_handshake_s {
        timing.push_str(&format!(", TLS handshake {}", ms(hs)));
    }
    timing.push_str(&format!(", first request {}", ms(r.first_request_s)));
    if let Some(re) = r.reused_request_s {
        timing.push_str(&format!(", reused {}", ms(re)));
    }
    t.add_row(vec!["timing".to_string(), String::new(), timing]);
    crate::util::print_table(t)?;
    for f in &r.findings {
        crate::outln!("{}", util::wrap(&format!("  * {f}"), 4))?;
    }
    crate::outln!("{}", util::verdict_line(&r.verdict))?;
    crate::outln!("(probe took {})", took(r))?;
    Ok(())
}

/// `kaprobe probe ws://...` / `kaprobe probe --sse URL`: the push-channel prober.
fn run_push(args: &Args, kind: PushKind) -> anyhow::Result<ExitCode> {
    use kaprobe_http::client::{push_probe, PushOptions};
    let max_wait = args.max_wait.unwrap_or(Duration::from_secs(300));
    check_max_wait(max_wait)?;
    if let Some(h) = args.heartbeat {
        if h < Duration::from_millis(10) || h > Duration::from_secs(3600) {
            return Err(Failure::usage(format!(
                "--heartbeat {} is out of range: use 10ms..=1h",
                util::human(h)
            ))
            .into());
        }
    }
    if let Some(h) = args.hold {
        if h < Duration::from_secs(1) || h > Duration::from_secs(86_400) {
            return Err(Failure::usage(format!(
                "--hold {} is out of range: use 1s..=24h",
                util::human(h)
            ))
            .into());
        }
    }
    let opts = PushOptions {
        kind,
        max_wait,
        heartbeat: args.heartbeat,
        hold: args.hold,
        tls: TlsOptions {
            cacert: args.cacert.clone(),
            insecure: args.insecure,
        },
    };
    measure(push_probe(&args.url, &opts), args.json, render_push)
}

fn render_push(r: &kaprobe_http::client::PushReport) -> anyhow::Result<()> {
    use kaprobe_http::client::{PushEnd, PushWatch};
    print_target(&r.url, &r.address, r.status, r.server.as_deref())?;
    let mut t = table();
    t.set_header(vec![
        "connection",
        "heartbeat",
        "lasted",
        "how it ended",
        "heard from the server",
    ]);
    let row = |name: &str, w: &PushWatch| {
        let beat = match (w.heartbeat_s, r.kind) {
            (None, _) => "none".to_string(),
            (Some(h), PushKind::Websocket) => format!("client ping every {h:.1}s"),
            (Some(h), PushKind::Sse) => format!("?heartbeat={h:.1}s"),
        };
        let lasted = if w.end == PushEnd::Alive {
            format!("at least {:.2}s", w.lasted_s)
        } else {
            format!("{:.2}s", w.lasted_s)
        };
        let mut how = w.end.describe(r.kind).to_string();
        if let Some(c) = w.close_code {
            how.push_str(&format!(" {c}"));
        }
        if let Some(reason) = w.close_reason.as_deref().filter(|s| !s.is_empty()) {
            how.push_str(&format!(" \"{reason}\""));
        }
        if let Some(e) = &w.error {
            how.push_str(&format!(": {e}"));
        }
        let heard = match r.kind {
            PushKind::Websocket => format!(
                "{} pongs to {} pings, {} server pings, {} messages",
                w.pongs_received, w.pings_sent, w.server_pings, w.messages
            ),
            PushKind::Sse => format!(
                "{} heartbeats, {} events",
                w.heartbeats_received, w.messages
            ),
        };
        vec![name.to_string(), beat, lasted, how, heard]
    };
    if let Some(w) = &r.idle {
        t.add_row(row("idle", w));
    }
    if let Some(w) = &r.heartbeat {
        t.add_row(row("with heartbeat", w));
    }
    crate::util::print_table(t)?;
    crate::outln!("{}", util::verdict_line(&r.verdict))?;
    crate::outln!(
        "(connect {}, handshake {}; probe took {:.2}s)",
        ms(r.connect_s),
        ms(r.handshake_s),
        r.elapsed_s
    )?;
    Ok(())
}
