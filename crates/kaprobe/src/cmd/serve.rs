//! `kaprobe serve`: an HTTP/1.x server whose keep-alive behaviour you set and can see.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use kaprobe_http::server::{
    self, Advertise, CloseEvent, CloseStyle, Config, GoawayStyle, TlsFiles,
};

use crate::args::parse_duration;
use crate::exit::{Failure, FILE};

/// Serve HTTP/1.x with exact keep-alive behaviour and a logged reason for every close.
///
/// HTTP/1.1 connections stay open unless the request says `Connection: close`; HTTP/1.0
/// ones only with `Connection: keep-alive`. Each response advertises
/// `Keep-Alive: timeout=N, max=M`, with M counting down to the last response, which says
/// `Connection: close`, and N in whole seconds rounded down (left out under one second,
/// never `timeout=0`). Idle connections close after --keepalive-timeout, by FIN or RST.
///
/// Each bound listener prints `kaprobe serve: listening on http://ADDR` on stderr. Each
/// closed connection prints one line on stdout (text, or JSON with --log json) with its
/// reason: idle_timeout, max_requests, client_close_header, http10, client_fin,
/// client_rst, header_timeout, bad_request, shutdown, cap_eviction, close_endpoint,
/// cap_full, send_timeout, io_error, keepalive_off; push connections: ws_client_close, ws_client_gone,
/// ws_pong_timeout, ws_protocol_error, ws_invalid_utf8, ws_message_too_big,
/// sse_client_gone, room_limit; HTTP/2: idle_goaway, max_requests_goaway, too_many_pings,
/// protocol_error, client_goaway; TLS: tls_handshake.
///
/// --http2 adds HTTP/2: h2c with prior knowledge on plain listeners (HTTP/1.x clients are
/// still answered on the same port) and ALPN h2 with --tls-cert/--tls-key. An HTTP/2
/// connection with no open stream for --keepalive-timeout gets GOAWAY (--goaway-style), then
/// FIN; --max-requests counts streams; --min-ping-interval and --max-ping-strikes set a
/// PING policy like gRPC servers'.
///
/// Endpoints: / (body "ok"), /delay/{duration}, /status/{code}, /bytes/{n}, /headers
/// (request echoed as JSON), /close (answers with Connection: close), /_kaprobe/stats
/// (JSON counters), /metrics (Prometheus text). Push channels (see docs/push.md): /ws
/// (WebSocket echo, or ?room=NAME to broadcast), /sse?room=NAME (event stream with ids and
/// Last-Event-ID resume), /poll?room=NAME&since=N[&wait=D], POST /publish?room=NAME.
///
/// SIGINT/SIGTERM stop accepting, answer requests in flight with `Connection: close`,
/// close idle connections and exit within --drain-timeout. See docs/serve.md.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Address to listen on (repeatable; port 0 picks a free port).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: Vec<String>,

    /// Idle time after a response before the server closes the connection (0 disables
    /// keep-alive: every response says Connection: close, logged keepalive_off).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Requests per connection; the last response says Connection: close (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_requests: u64,

    /// When to send the Keep-Alive: timeout=N, max=M header.
    #[arg(long, value_enum, default_value = "always")]
    pub advertise: AdvertiseArg,

    /// Announce this timeout in Keep-Alive instead of the real one (a server that lies).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub advertise_timeout: Option<Duration>,

    /// Time a started request head may take to complete (slow-loris guard); also the
    /// inactivity limit while reading a body and while the client does not read our answer.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How idle connections are ended: fin (half-close, drain, close) or rst (SO_LINGER 0).
    #[arg(long, value_enum, default_value = "fin")]
    pub close_style: CloseStyleArg,

    /// Connection cap (0 = none). At the cap the oldest idle connection is closed
    /// (cap_eviction); with none idle, the new connection is closed at once (cap_full).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,

    /// Largest request head in bytes (431 beyond it), 256..=1048576.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// Largest request body in bytes (413 beyond it).
    #[arg(long, value_name = "N", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// On SIGINT/SIGTERM, how long requests in flight get before the server exits.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Set SO_REUSEPORT so several `kaprobe serve` processes can share one --listen address
    /// (the kernel spreads connections over them): a way past one process's open-file limit.
    #[arg(long)]
    pub reuse_port: bool,

    /// Close log format on stdout: one text line or one JSON object per closed connection.
    #[arg(long, value_enum, default_value = "text")]
    pub log: LogArg,
    /// Also serve the Prometheus `/metrics` text on this separate address (IP:PORT; port 0
    /// picks a free port), so scrapes do not mix with the traffic under test. See
    /// docs/metrics.md.
    #[arg(long, value_name = "ADDR", value_parser = crate::args::parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,

    /// Accept setting changes while running on this separate address (default
    /// 127.0.0.1:0 when given without one; the address is printed on stderr):
    /// `GET /config` shows keepalive_timeout, max_requests, close_style, advertise and
    /// advertise_timeout; `PUT /config` with a JSON object changes them (checked as the flags
    /// are) for every request and idle period after it. Each change is logged. Off by default.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0", value_parser = crate::args::parse_metrics_addr)]
    pub control: Option<SocketAddr>,

    /// Send a WebSocket ping this often and close a connection (1001,
    /// ws_pong_timeout) whose pong has not come back by the next one. 0 = off; per
    /// connection: /ws?ping=D. Range 0 or 10ms..=1h.
    #[arg(long, value_name = "D", default_value = "0", value_parser = parse_duration, help_heading = "Push channels")]
    pub ws_ping: Duration,

    /// Send the comment line `: heartbeat` on event streams this often, so idle streams are
    /// not cut by proxies. 0 = off; per connection: /sse?heartbeat=D. Range 0 or 10ms..=1h.
    #[arg(long, value_name = "D", default_value = "0", value_parser = parse_duration, help_heading = "Push channels")]
    pub sse_heartbeat: Duration,

    /// Largest WebSocket message (and frame) in bytes; larger ones get close 1009.
    /// Range 125..=67108864.
    #[arg(long, value_name = "N", default_value_t = 1 << 20, help_heading = "Push channels")]
    pub ws_max_message: usize,

    /// Messages kept in memory per room for late and reconnecting clients (older ones are
    /// dropped; a resume older than that is told so). Range 1..=10000000.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        help_heading = "Push channels"
    )]
    pub store_limit: usize,

    /// Push rooms held in memory at most. A room with no message and no client is freed at
    /// once; with --store, any room no client holds is freed when space is needed (reloaded
    /// from the file on next use). A request that needs a new room beyond the cap gets 503.
    /// Range 1..=1000000.
    #[arg(
        long,
        value_name = "N",
        default_value = "10000",
        help_heading = "Push channels"
    )]
    pub max_rooms: String,

    /// Keep every published message in this SQLite file (WAL, synchronous=FULL): a publish
    /// is answered only after its commit, and ids and messages survive a restart.
    #[arg(long, value_name = "FILE", help_heading = "Push channels")]
    pub store: Option<std::path::PathBuf>,

    /// Speak HTTP/2 too: h2c with prior knowledge on plain listeners (a client whose first
    /// bytes are the HTTP/2 preface; HTTP/1.x clients keep working on the same port), and
    /// ALPN h2 with --tls-cert. --keepalive-timeout, --max-requests and --header-timeout
    /// apply to HTTP/2 connections as to HTTP/1.1 ones.
    #[arg(long, help_heading = "HTTP/2 and TLS")]
    pub http2: bool,

    /// How an HTTP/2 connection is told to go away (idle, --max-requests, shutdown): single
    /// (one GOAWAY, NO_ERROR, the last stream id, once no stream is open) or two-phase
    /// (GOAWAY 2^31-1 and a PING, then GOAWAY with the last stream id after the PING's
    /// answer or 1s; RFC 9113 section 6.8).
    #[arg(
        long,
        value_enum,
        default_value = "single",
        help_heading = "HTTP/2 and TLS"
    )]
    pub goaway_style: GoawayStyleArg,

    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (streams a client may have open at once).
    /// Range 0..=2147483647.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 128,
        help_heading = "HTTP/2 and TLS"
    )]
    pub max_concurrent_streams: u32,

    /// HTTP/2 PING policy, as gRPC servers have it: a client PING sooner than this after the
    /// previous one, while no stream is open, is a strike (0 = no policy). Range 0 or
    /// 1ms..=1d.
    #[arg(long, value_name = "D", default_value = "0", value_parser = parse_duration, help_heading = "HTTP/2 and TLS")]
    pub min_ping_interval: Duration,

    /// Strikes tolerated; one more gets GOAWAY ENHANCE_YOUR_CALM with debug data
    /// "too_many_pings" (logged too_many_pings). 0 = any number. Range 0..=1000.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        help_heading = "HTTP/2 and TLS"
    )]
    pub max_ping_strikes: u32,

    /// Serve TLS on every listener with this PEM certificate chain (needs --tls-key). ALPN
    /// offers h2 (with --http2) and http/1.1.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "HTTP/2 and TLS"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "HTTP/2 and TLS"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

const AFTER_HELP: &str = "\
Each bound listener prints `kaprobe serve: listening on http://ADDR` on stderr. Each closed
connection prints one line on stdout (text, or one JSON object with --log json) with its
reason: idle_timeout, max_requests, client_close_header, http10, client_fin, client_rst,
header_timeout, bad_request, shutdown, cap_eviction, close_endpoint, cap_full, send_timeout,
io_error; push connections: ws_client_close, ws_client_gone, ws_pong_timeout,
ws_protocol_error, ws_invalid_utf8, ws_message_too_big, sse_client_gone, room_limit;
HTTP/2: idle_goaway, max_requests_goaway, too_many_pings, protocol_error, client_goaway;
TLS: tls_handshake.

Endpoints: / (body \"ok\"), /delay/DURATION, /status/CODE, /bytes/N, /headers (the
request as JSON), /close (answers with Connection: close), /_kaprobe/stats (JSON counters),
/metrics (Prometheus text).

Push channels (docs/push.md), one message log per room (NAME: 1..=64 of [A-Za-z0-9_.-],
default \"default\"), ids 1, 2, 3, ... per room:
  POST /publish?room=NAME     body = the message; answers {\"room\":..,\"id\":N}
  GET  /ws[?room=NAME][&ping=D]
                              WebSocket: echo, or each text message to all members
  GET  /sse[?room=NAME][&heartbeat=D]
                              event stream; Last-Event-ID: N replays ids > N
  GET  /poll?room=NAME&since=N[&wait=D]
                              JSON messages with id > N; wait=D long-polls
A request that needs a new room when --max-rooms rooms are in memory and none can be freed
gets 503 \"room limit reached\" (logged room_limit).
SIGTERM closes WebSockets with 1001 and ends event streams.

SIGINT/SIGTERM: stop accepting, answer requests in flight with Connection: close, close idle
connections, exit within --drain-timeout.

Examples:
  kaprobe serve --listen 127.0.0.1:0 --keepalive-timeout 2s --max-requests 3
  kaprobe serve --keepalive-timeout 4s --close-style rst   # resets idle conns
  kaprobe serve --advertise-timeout 60s --keepalive-timeout 5s   # it lies
  kaprobe serve --ws-ping 20s --sse-heartbeat 15s --store /var/tmp/push.sqlite
  kaprobe serve --http2 --keepalive-timeout 3s --goaway-style two-phase
  kaprobe serve --http2 --tls-cert cert.pem --tls-key key.pem   # TLS, ALPN
  kaprobe serve --http2 --min-ping-interval 5m   # gRPC's PING policy

Exit status: 0 after a signal-driven stop, 1 bind or other I/O failure, 2 bad flag value,
6 permission denied (privileged port), 7 an unusable --store, --tls-cert or --tls-key file.
See docs/serve.md and, for --http2 and TLS, docs/serve-http2.md.";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AdvertiseArg {
    Always,
    WhenAsked,
    Never,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CloseStyleArg {
    Fin,
    Rst,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GoawayStyleArg {
    Single,
    TwoPhase,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogArg {
    Text,
    Json,
    /// No close log (for benchmarks).
    Off,
}

fn resolve(s: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            Failure::usage(format!(
                "--listen '{s}' is not an address: use IP:PORT, e.g. 127.0.0.1:8080 or [::1]:0"
            ))
        })
}

fn check(args: &Args) -> Result<Config, Failure> {
    let max_rooms = args.max_rooms.trim().parse::<usize>().map_err(|_| {
        Failure::usage(format!(
            "--max-rooms '{}' is not a number: use 1..=1000000",
            args.max_rooms
        ))
    })?;
    let cfg = Config {
        keepalive_timeout: args.keepalive_timeout,
        max_requests: args.max_requests,
        advertise: match args.advertise {
            AdvertiseArg::Always => Advertise::Always,
            AdvertiseArg::WhenAsked => Advertise::WhenAsked,
            AdvertiseArg::Never => Advertise::Never,
        },
        advertise_timeout: args.advertise_timeout,
        header_timeout: args.header_timeout,
        close_style: match args.close_style {
            CloseStyleArg::Fin => CloseStyle::Fin,
            CloseStyleArg::Rst => CloseStyle::Rst,
        },
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        max_body_bytes: args.max_body_bytes,
        drain_timeout: args.drain_timeout,
        ws_ping: args.ws_ping,
        sse_heartbeat: args.sse_heartbeat,
        ws_max_message: args.ws_max_message,
        store_limit: args.store_limit,
        store: args.store.clone(),
        max_rooms,
        http2: args.http2,
        goaway_style: match args.goaway_style {
            GoawayStyleArg::Single => GoawayStyle::Single,
            GoawayStyleArg::TwoPhase => GoawayStyle::TwoPhase,
        },
        max_concurrent_streams: args.max_concurrent_streams,
        min_ping_interval: args.min_ping_interval,
        max_ping_strikes: args.max_ping_strikes,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        ..Config::default()
    };
    cfg.validate().map_err(|e| Failure::usage(e.to_string()))?;
    Ok(cfg)
}

fn text_line(ev: &CloseEvent) -> String {
    let mut s = format!(
        // Peer and reason lead without keys, so a line fits 80 columns with an IPv4 peer.
        "close {} {} requests={} lifetime={:.3}s ending={}",
        ev.peer,
        ev.reason.as_str(),
        ev.requests,
        ev.lifetime.as_secs_f64(),
        ev.ending.as_str()
    );
    if !ev.detail.is_empty() {
        s.push_str(&format!(" detail=\"{}\"", ev.detail));
    }
    s
}

fn json_line(ev: &CloseEvent) -> String {
    serde_json::json!({
        "event": "close",
        "peer": ev.peer.to_string(),
        "reason": ev.reason.as_str(),
        "detail": ev.detail,
        "requests": ev.requests,
        "lifetime": ev.lifetime.as_secs_f64(),
        "ending": ev.ending.as_str(),
    })
    .to_string()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = check(&args)?;
    if let Some(path) = &cfg.store {
        kaprobe_http::push::store::check(path)
            .map_err(|e| Failure::new(FILE, format!("--store {}: {e}", path.display())))?;
    }
    if let Some(files) = &cfg.tls {
        server::tls::acceptor(files, cfg.http2).map_err(|e| Failure::new(FILE, e.to_string()))?;
    }
    let addrs = args
        .listen
        .iter()
        .map(|s| resolve(s))
        .collect::<Result<Vec<_>, _>>()?;
    // The side listeners are bound before the traffic ones, so that a busy address is the
    // only thing said (no "listening on" first); their lines follow the listening lines.
    let metrics = args.metrics.map(crate::args::bind_metrics).transpose()?;
    let control = args
        .control
        .map(|a| crate::args::bind_flag("--control", a))
        .transpose()?;
    server::raise_fd_limit();
    let mut listeners = Vec::new();
    for a in addrs {
        let l = server::bind(a, args.reuse_port).map_err(|e| {
            let code = match &e {
                kaprobe_http::Error::Io { source, .. } => crate::exit::listen_code(source),
                _ => crate::exit::FAILURE,
            };
            Failure::new(code, format!("--listen {a}: {e}"))
        })?;
        let bound = l.local_addr().unwrap_or(a);
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        eprintln!("kaprobe serve: listening on {scheme}://{bound}");
        listeners.push(l);
    }
    if let Some(l) = &metrics {
        if let Ok(a) = l.local_addr() {
            eprintln!("kaprobe serve: metrics on http://{a}/metrics");
        }
    }
    if let Some(l) = &control {
        if let Ok(a) = l.local_addr() {
            eprintln!("kaprobe serve: control on http://{a}/config");
        }
    }
    let log = args.log;
    let extras = server::Extras {
        metrics,
        control,
        on_change: Some(Box::new(move |c: &server::ConfigChange| {
            let line = match log {
                LogArg::Text => {
                    format!("config {} {} -> {} by={}", c.setting, c.from, c.to, c.peer)
                }
                LogArg::Json => serde_json::json!({
                    "event": "config",
                    "setting": c.setting,
                    "from": c.from,
                    "to": c.to,
                    "peer": c.peer.to_string(),
                })
                .to_string(),
                LogArg::Off => return,
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        })),
    };
    let summary = server::run_with(cfg, listeners, extras, move |ev| {
        let line = match log {
            LogArg::Text => text_line(ev),
            LogArg::Json => json_line(ev),
            LogArg::Off => return,
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })?;
    eprintln!(
        "kaprobe serve: stopped after {} connections, {} requests{}",
        summary.connections,
        summary.requests,
        if summary.cut_at_drain > 0 {
            format!(" ({} cut at the drain timeout)", summary.cut_at_drain)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
