//! `kaprobe hold`: one idle connection with chosen keep-alive settings, followed to its end.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kaprobe_sock::conn::{self, Conn};
use kaprobe_sock::hold::{hold, HoldEvent, HoldReport, Outcome};
use kaprobe_sock::options::{self, Effective, KeepaliveConfig};
use serde_json::json;

use crate::exit::{self, Failure};
use crate::util;

const HELP: &str =
    "Shows the keep-alive values the kernel really uses (read back with getsockopt), reports each
keep-alive probe and answer as it happens (from TCP_INFO), and says how and when the connection
ended and whether that matches the settings: a silent peer is dropped idle + count x interval
after its last segment (with --user-timeout: at the first probe run past it).

Connect to HOST:PORT, or with --listen accept one connection and hold that (server-side
probes). Options left out keep the system defaults (see `kaprobe defaults`).

Exit status tells the outcome: 0 still open when --duration ran out or on Ctrl-C,
10 the peer closed (FIN), 11 the peer reset (RST), 12 ETIMEDOUT after the configured
unanswered probes (dead peer), 13 TCP_USER_TIMEOUT expired; 2 bad usage, 3 name not
resolved, 4 connection refused, 5 unreachable or connect timed out, 6 permission denied.

Examples:
  kaprobe hold 10.0.0.5:443 --idle 30s --interval 5s --count 3
  kaprobe hold --listen 0.0.0.0:9000 --idle 1m --json

JSON schema and the timing rules: docs/hold.md";

#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct Args {
    /// Where to connect: HOST:PORT (127.0.0.1:8080, [::1]:8080, example.com:443).
    #[arg(required_unless_present = "listen", conflicts_with = "listen")]
    pub target: Option<String>,
    /// Accept one connection on ADDR (e.g. 127.0.0.1:9000; port 0 picks one) and hold it.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Idle time before the first probe (TCP_KEEPIDLE), whole seconds 1..=32767: 75s, 2h, 1m30s.
    #[arg(long, value_parser = crate::args::parse_duration, value_name = "D")]
    pub idle: Option<Duration>,
    /// Time between probes (TCP_KEEPINTVL), whole seconds 1..=32767.
    #[arg(long, value_parser = crate::args::parse_duration, value_name = "D")]
    pub interval: Option<Duration>,
    /// Unanswered probes before the kernel drops the connection (TCP_KEEPCNT), 1..=127.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// TCP_USER_TIMEOUT: drop the connection once it has been silent this long with probes
    /// unanswered (replaces --count); whole milliseconds, e.g. 2500ms; 0 turns it off.
    #[arg(long, value_parser = crate::args::parse_duration, value_name = "D")]
    pub user_timeout: Option<Duration>,
    /// Give up connecting after this long.
    #[arg(long, value_parser = crate::args::parse_duration, value_name = "D", default_value = "10s")]
    pub connect_timeout: Duration,
    /// Stop holding after this long (exit 0 if still open); default: until the connection ends.
    #[arg(long, value_parser = crate::args::parse_duration, value_name = "D")]
    pub duration: Option<Duration>,
    /// One JSON object per line: connected, effective, each event, end.
    #[arg(long)]
    pub json: bool,
}

/// Exit status for each outcome (the table in docs/hold.md).
pub fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Stopped => exit::SUCCESS,
        Outcome::PeerFin => exit::HOLD_PEER_FIN,
        Outcome::PeerRst => exit::HOLD_PEER_RST,
        Outcome::KeepaliveTimeout => exit::HOLD_KEEPALIVE_TIMEOUT,
        Outcome::UserTimeout => exit::HOLD_USER_TIMEOUT,
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = KeepaliveConfig::validated(args.idle, args.interval, args.count, args.user_timeout)
        .map_err(exit::sock_failure)?;
    if args.connect_timeout.is_zero() {
        return Err(Failure::usage("--connect-timeout 0s: use a positive duration").into());
    }
    let stop = util::stop_flag()?;
    let started = std::time::Instant::now();
    let Conn { sock, local, peer } = match &args.listen {
        Some(l) => {
            let deadline = args.duration.map(|d| started + d);
            match accept_one(l, args.json, &stop, deadline)? {
                Some(c) => c,
                None => return no_connection(args.json, stop.load(Ordering::Relaxed)),
            }
        }
        None => connect(
            args.target.as_deref().unwrap_or_default(),
            args.connect_timeout,
        )?,
    };
    let peer_s = peer.to_string();
    options::apply(&sock, &cfg, &peer_s)?;
    let eff = options::read(&sock, &peer_s)?;
    print_start(&args, local, peer, &eff)?;
    let json = args.json;
    let mut closed = None;
    // --duration counts from the start, waiting for a connection included.
    let left = args.duration.map(|d| d.saturating_sub(started.elapsed()));
    let report = hold(&sock, &eff, &peer_s, &stop, left, |e| {
        if closed.is_none() {
            if let Err(err) = print_event(json, e) {
                // Stdout is gone (or failing): stop holding, then say so below.
                closed = Some(err);
                stop.store(true, Ordering::Relaxed);
            }
        }
    })?;
    if let Some(err) = closed {
        return Err(err);
    }
    stop.store(false, Ordering::Relaxed);
    print_end(json, &eff, &report)?;
    Ok(ExitCode::from(outcome_code(report.outcome)))
}

fn connect(target: &str, timeout: Duration) -> anyhow::Result<Conn> {
    let addrs = crate::args::resolve_host_port("target", target)?;
    conn::connect(&addrs, timeout).map_err(|e| {
        // kaprobe's own connect timeout: say how long it waited.
        if let kaprobe_sock::Error::Io { what, source } = &e {
            if source.kind() == std::io::ErrorKind::TimedOut {
                return Failure::new(
                    exit::UNREACHABLE,
                    format!("{what}: no answer within {}", util::human(timeout)),
                )
                .into();
            }
        }
        anyhow::Error::from(exit::sock_failure(e))
    })
}

/// `--listen` ended (Ctrl-C, SIGTERM or --duration) before any connection arrived: say so,
/// exit 0 (as a hold stopped by the user).
fn no_connection(json: bool, signalled: bool) -> anyhow::Result<ExitCode> {
    let why = if signalled {
        "stopped (signal) before any connection arrived"
    } else {
        "--duration ran out before any connection arrived"
    };
    if json {
        crate::out::print_json_line(
            &json!({"type": "end", "outcome": "stopped", "description": why, "connected": false}),
        )?;
    } else {
        crate::outln!("{why}")?;
    }
    Ok(ExitCode::from(outcome_code(Outcome::Stopped)))
}

fn accept_one(
    listen: &str,
    json: bool,
    stop: &std::sync::atomic::AtomicBool,
    deadline: Option<std::time::Instant>,
) -> anyhow::Result<Option<Conn>> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Failure::usage(format!(
            "--listen '{listen}' is not an address: use IP:PORT, e.g. 127.0.0.1:9000 or [::1]:9000"
        ))
    })?;
    let (listener, bound) = conn::listen(addr, 1).map_err(|e| {
        let code = e.io_error().map_or(exit::FAILURE, exit::listen_code);
        let hint = if code == exit::PERMISSION {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        } else {
            ""
        };
        Failure::new(code, format!("{e}{hint}"))
    })?;
    if json {
        crate::out::print_json_line(&json!({"type": "listening", "addr": bound.to_string()}))?;
    } else {
        crate::outln!("listening on {bound}, waiting for one connection (Ctrl-C stops)")?;
    }
    Ok(conn::accept_until(&listener, bound, stop, deadline)?)
}

fn describe_settings(eff: &Effective) -> String {
    let ut = eff
        .user_timeout
        .map_or_else(|| "off".to_string(), util::human);
    format!(
        "idle {}, interval {}, count {}, user timeout {ut}",
        util::human(eff.idle),
        util::human(eff.interval),
        eff.count
    )
}

fn print_start(
    args: &Args,
    local: SocketAddr,
    peer: SocketAddr,
    eff: &Effective,
) -> anyhow::Result<()> {
    let side = if args.listen.is_some() {
        "accepted"
    } else {
        "connected"
    };
    if args.json {
        crate::out::print_json_line(
            &json!({"type": side, "local": local.to_string(), "peer": peer.to_string()}),
        )?;
        let mut v = serde_json::to_value(eff).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!("effective"));
            o.insert(
                "dead_peer_after".into(),
                json!(util::secs(eff.dead_peer_after())),
            );
        }
        return crate::out::print_json_line(&v);
    }
    crate::outln!("{side} {local} <-> {peer}")?;
    crate::out::println_wrapped(&format!(
        "keep-alive in force (read back from the kernel): {}",
        describe_settings(eff)
    ))?;
    crate::out::println_wrapped(&format!(
        "a silently dead peer will be noticed {} after its last segment",
        util::human(eff.dead_peer_after())
    ))?;
    crate::outln!("holding the connection idle; Ctrl-C stops")?;
    Ok(())
}

fn print_event(json: bool, e: &HoldEvent) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(e).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!("event"));
        }
        return crate::out::print_json_line(&v);
    }
    match *e {
        HoldEvent::ProbeSent { at, n, unanswered } => {
            crate::outln!(
                "{:>9.3}s  keep-alive probe #{n} sent ({unanswered} unanswered)",
                at.as_secs_f64()
            )?;
        }
        HoldEvent::ProbeAnswered { at, n } => {
            crate::outln!(
                "{:>9.3}s  answered by the peer ({n} answered so far): it is alive",
                at.as_secs_f64()
            )?;
        }
        HoldEvent::PeerProbeAnswered { at, n } => {
            crate::outln!(
                "{:>9.3}s  the peer probed us (#{n}); our kernel answered",
                at.as_secs_f64()
            )?;
        }
        HoldEvent::DataReceived { at, bytes } => {
            crate::outln!(
                "{:>9.3}s  peer sent {bytes} bytes (discarded); idle timer restarts",
                at.as_secs_f64()
            )?;
        }
    }
    Ok(())
}

fn print_end(json: bool, eff: &Effective, r: &HoldReport) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!("end"));
            o.insert("description".into(), json!(r.outcome.describe()));
        }
        return crate::out::print_json_line(&v);
    }
    let ended = crate::term::wrap(
        &format!(
            "ended after {:.3}s: {}",
            r.lifetime.as_secs_f64(),
            r.outcome.describe()
        ),
        2,
    );
    // A peer given up on is the news: red when colour is on.
    match r.outcome {
        Outcome::KeepaliveTimeout | Outcome::UserTimeout => {
            crate::outln!("{}", crate::term::paint(&ended, crate::term::style::BAD))?;
        }
        _ => crate::outln!("{ended}")?,
    }
    crate::out::println_wrapped(&format!(
        "probes: {} sent, {} answered, {} unanswered at the end; {} probes from the peer answered",
        r.probes_sent, r.probes_answered, r.unanswered, r.peer_probes
    ))?;
    if let Some(m) = r.matches_config {
        let formula = match eff.user_timeout {
            Some(ut) => format!(
                "first timer run at or past the user timeout {} with a probe out",
                util::human(ut)
            ),
            None => format!(
                "idle {} + {} probes x {}",
                util::human(eff.idle),
                eff.count,
                util::human(eff.interval)
            ),
        };
        crate::out::println_wrapped(&format!(
            "silent for {:.3}s after the peer's last segment; the settings predict {:.3}s ({formula}): {}",
            r.silent_for.as_secs_f64(),
            r.expected_silent_for.as_secs_f64(),
            if m { "matches" } else { "DOES NOT match" }
        ))?;
    }
    Ok(())
}
