//! `kaprobe middlebox`: a TCP relay with an idle timer, standing in for a NAT gateway or a
//! load balancer, to test clients against.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kaprobe_http::middlebox::{self, Config, Fate, OnIdle, Stats};

use crate::args::{parse_duration, LogArg};
use crate::exit::{Failure, USAGE};

/// Relay TCP connections to an upstream and cut the idle ones, as a NAT gateway or a load
/// balancer does.
///
/// Each connection a client makes to --listen is relayed to --upstream. A timer per
/// connection counts payload bytes in either direction; when none has crossed for --idle, the
/// middlebox does what --on-idle says: `fin` closes both sides, `rst` resets both, `silent`
/// stops relaying and never answers again (the kernel still ACKs at the TCP level, unlike a
/// real NAT: see docs/middlebox.md), `rst-on-next` does nothing until either side sends
/// again and answers that with a RST. --like picks both from a provider's documented
/// defaults. --latency (and --jitter) delay each direction, giving an upstream's FIN a real
/// flight time: the window in which a proxy reuses a connection that is already closed.
///
/// Prints `kaprobe middlebox: listening on ADDR -> UPSTREAM` on stderr, then one line per
/// ended connection on stdout (text, or JSON with --log json): idle_fin, idle_rst,
/// idle_silent, rst_on_next, client_fin, upstream_fin, client_rst, upstream_rst,
/// upstream_unreachable, shutdown. Ctrl-C or SIGTERM stops it.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kaprobe middlebox --upstream 127.0.0.1:8080 --idle 2s --on-idle silent
  kaprobe middlebox --listen 127.0.0.1:9000 --upstream 127.0.0.1:8080 \\
    --like aws-nlb --idle 5s
  kaprobe middlebox --upstream 127.0.0.1:8080 --idle 60s --latency 20ms
  kaprobe probe http://127.0.0.1:9000/    # what a client sees through it
  sudo kaprobe middlebox --router --upstream 127.0.0.1:8080 --idle 2s \\
    --on-idle silent -- sh -c 'kaprobe probe http://$KAPROBE_UPSTREAM/'
  sudo kaprobe middlebox --router --ignore-keepalive --like aws-alb --idle 5s \\
    -- sh -c 'kaprobe hold $KAPROBE_UPSTREAM --idle 1 --interval 1'

Presets (--like): aws-alb (60s, fin), aws-nlb (350s, rst-on-next), aws-nat-gateway (350s,
rst-on-next), azure-lb (4m, silent), azure-lb-reset (4m, rst), gcp-lb (600s, fin); --idle
and --on-idle given with --like override it.

Exit codes: 0 stopped by Ctrl-C/SIGTERM or --duration, 2 bad flag, 3 upstream name not
resolved, 6 permission denied (ports below 1024, router mode without root); router mode
exits with CMD's status (128 + signal if a signal ended it) and removes its namespaces on
exit, Ctrl-C or SIGTERM. See docs/middlebox.md.")]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    /// [default: 127.0.0.1:0; in router mode the server side of the router].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Where to relay each connection: HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: String,

    /// Idle time (no payload either way) after which --on-idle happens. Range 10ms..=1d.
    /// Required unless --like gives it.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub idle: Option<Duration>,

    /// What happens at the idle limit: fin, rst, silent or rst-on-next [default: fin, or
    /// the preset's].
    #[arg(long, value_name = "ACTION", value_parser = OnIdle::parse)]
    pub on_idle: Option<OnIdle>,

    /// Imitate a known middlebox: aws-alb, aws-nlb, aws-nat-gateway, azure-lb,
    /// azure-lb-reset, gcp-lb (sets --idle and --on-idle from its documentation).
    #[arg(long, value_name = "NAME", value_parser = middlebox::preset)]
    pub like: Option<middlebox::Preset>,

    /// Delay added to each direction (client to upstream and back). Range 0s..=10s.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "0s")]
    pub latency: Duration,

    /// Up to this much more delay, drawn per chunk; byte order is kept. Range 0s..=10s.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "0s")]
    pub jitter: Duration,

    /// Give up connecting to the upstream after this long (the client is then reset).
    /// Range 10ms..=1m.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,

    /// Close log on stdout: text, json (one object per line) or off.
    #[arg(long, value_enum, default_value = "text")]
    pub log: LogArg,

    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", value_parser = crate::args::parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,

    /// Stop after this long (connections still open are closed with FIN).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Router mode (root): run CMD in a network namespace whose traffic to --upstream passes
    /// a router namespace with conntrack that forgets flows idle for --idle (whole seconds):
    /// their packets are then dropped (`silent`: real TCP-level silence) or answered with a
    /// RST (`rst`). CMD reaches --upstream at the address in $KAPROBE_UPSTREAM (also
    /// printed). Every packet, keep-alive probes included, keeps a flow alive, as at a NAT
    /// (see --ignore-keepalive). The namespaces are removed when CMD ends or on Ctrl-C;
    /// kaprobe exits with CMD's status.
    #[arg(long, requires = "cmd")]
    pub router: bool,

    /// Router mode as an L7 balancer: TCP ends at the router (a relay there, reached at
    /// $KAPROBE_UPSTREAM, connects on to --upstream), so keep-alive probes are answered by
    /// the router and never count as activity; only payload restarts the idle timer. Takes
    /// every --on-idle action and any --idle; `silent` then drops both connections' segments
    /// at the router's firewall (no ACKs). Without it, probes keep a flow alive, as at a NAT.
    #[arg(long)]
    pub ignore_keepalive: bool,

    /// The command to run in router mode, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let idle = args.idle.or(args.like.map(|p| p.idle)).ok_or_else(|| {
        Failure::usage("--idle is required (or --like NAME, which sets it): e.g. --idle 60s")
    })?;
    let on_idle = args
        .on_idle
        .or(args.like.map(|p| p.on_idle))
        .unwrap_or(OnIdle::Fin);
    if args.connect_timeout < Duration::from_millis(10)
        || args.connect_timeout > Duration::from_secs(60)
    {
        return Err(Failure::usage(format!(
            "--connect-timeout {} is out of range: use 10ms..=1m",
            crate::util::human(args.connect_timeout)
        ))
        .into());
    }
    let upstream = crate::args::resolve_host_port("--upstream", &args.upstream)?;
    let cfg = Config {
        upstream,
        idle,
        on_idle,
        latency: args.latency,
        jitter: args.jitter,
        connect_timeout: args.connect_timeout,
        silencer: None,
    };
    cfg.validate().map_err(|e| Failure::new(USAGE, e))?;
    if args.ignore_keepalive && !args.router {
        return Err(Failure::usage(
            "--ignore-keepalive is for router mode (add --router and a command after `--`): \
             in proxy mode keep-alive probes never count anyway, the relay sees payload, not segments",
        )
        .into());
    }
    if args.router {
        return run_router(&args, cfg);
    }
    if !args.cmd.is_empty() {
        return Err(
            Failure::usage("a command after `--` runs only in router mode: add --router").into(),
        );
    }
    let listen_text = args.listen.as_deref().unwrap_or("127.0.0.1:0");
    let (std_listener, bound) = crate::args::listen_flag(listen_text, "127.0.0.1:9000")?;
    let stats = Arc::new(Stats::default());
    if let Some(a) = args.metrics {
        let l = crate::args::bind_metrics(a)?;
        eprintln!(
            "kaprobe middlebox: metrics on http://{}/metrics",
            l.local_addr().unwrap_or(a)
        );
        let s = Arc::clone(&stats);
        kaprobe_sock::scrape::serve_blocking(l, move || s.prometheus());
    }
    let what = args
        .like
        .map_or(String::new(), |p| format!(" (like {})", p.name));
    eprintln!(
        "kaprobe middlebox: listening on {bound} -> {} (idle {}, then {}{what}{})",
        args.upstream,
        crate::util::human(cfg.idle),
        cfg.on_idle.as_str(),
        if cfg.latency.is_zero() {
            String::new()
        } else {
            format!(", latency {}", crate::util::human(cfg.latency))
        }
    );
    let stop = crate::util::stop_flag()?;
    let rt = relay_runtime()?;
    let log = args.log;
    if let Some(d) = args.duration {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let cfg = Arc::new(cfg);
    let run_stats = Arc::clone(&stats);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        middlebox::run(listener, cfg, run_stats, stop, move |f| print_fate(log, f)).await;
        Ok::<(), std::io::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    eprintln!(
        "kaprobe middlebox: stopped after {} connections",
        stats.accepted.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}

/// Router mode: the namespaces, a relay on the router's server side to --upstream, and CMD
/// in the client namespace; cleaned up when CMD ends, and on Ctrl-C or SIGTERM.
///
/// As a NAT (default), the router's conntrack forgets idle flows and the relay only relays.
/// With --ignore-keepalive, a second relay in the router namespace terminates CMD's
/// connections and does the idle work, connecting on through the server side.
fn run_router(args: &Args, cfg: Config) -> anyhow::Result<ExitCode> {
    use kaprobe_sock::router::{Conntrack, Forgotten, RouterLine};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::new(
            crate::exit::PERMISSION,
            "router mode needs root (it builds network namespaces and a firewall); without root use proxy mode (drop --router)",
        )
        .into());
    }
    if args.listen.is_some() {
        return Err(Failure::usage("--listen is chosen by router mode: leave it out").into());
    }
    let conntrack = if args.ignore_keepalive {
        Conntrack::Default
    } else {
        let forgotten = match cfg.on_idle {
            OnIdle::Silent => Forgotten::Drop,
            OnIdle::Rst => Forgotten::Reset,
            other => {
                return Err(Failure::usage(format!(
                    "--on-idle {} is for proxy mode or --ignore-keepalive: a NAT router drops (silent) or resets (rst) the packets of a forgotten flow",
                    other.as_str()
                ))
                .into())
            }
        };
        let secs = cfg.idle.as_secs_f64();
        if secs < 1.0 || secs.fract() != 0.0 {
            return Err(Failure::usage(format!(
                "--idle {} in router mode: conntrack counts whole seconds, use 1s or more in whole seconds (or --ignore-keepalive)",
                crate::util::human(cfg.idle)
            ))
            .into());
        }
        let idle_secs = u32::try_from(cfg.idle.as_secs()).unwrap_or(u32::MAX);
        Conntrack::Forget {
            idle_secs,
            forgotten,
        }
    };
    // Ctrl-C reaches CMD too (same process group); kaprobe stays to clean up after it.
    let stop = crate::util::stop_flag()?;
    let line = Arc::new(
        RouterLine::new(&std::process::id().to_string(), conntrack)
            .map_err(crate::exit::sock_failure)?,
    );
    let server_side = line
        .listen_on_server_side(0)
        .map_err(crate::exit::sock_failure)?;
    server_side.set_nonblocking(true)?;
    let server_addr = server_side.local_addr()?;
    // The relay CMD talks to, and the address it finds in $KAPROBE_UPSTREAM.
    let l7 = if args.ignore_keepalive {
        let l = line
            .listen_on_router(0)
            .map_err(crate::exit::sock_failure)?;
        l.set_nonblocking(true)?;
        Some(l)
    } else {
        None
    };
    let inside = match &l7 {
        Some(l) => l.local_addr()?,
        None => server_addr,
    };
    let action = match (args.ignore_keepalive, cfg.on_idle) {
        (false, OnIdle::Silent) => "dropped".to_string(),
        (false, _) => "reset".to_string(),
        (true, OnIdle::Silent) => "silent (dropped both ways at the router)".to_string(),
        (true, a) => a.as_str().to_string(),
    };
    eprintln!(
        "kaprobe middlebox: router mode{}: {} runs in namespace {}; it reaches {} at {inside} \
         ($KAPROBE_UPSTREAM); {} idle {} are forgotten, then {action}",
        if args.ignore_keepalive {
            " (L7: TCP ends at the router, keep-alive probes do not count)"
        } else {
            ""
        },
        args.cmd.join(" "),
        line.client_ns,
        args.upstream,
        if args.ignore_keepalive {
            "connections"
        } else {
            "flows"
        },
        crate::util::human(cfg.idle),
    );
    let log = args.log;
    let stats = Arc::new(Stats::default());
    if let Some(a) = args.metrics {
        let l = crate::args::bind_metrics(a)?;
        eprintln!(
            "kaprobe middlebox: metrics on http://{}/metrics",
            l.local_addr().unwrap_or(a)
        );
        let s = Arc::clone(&stats);
        kaprobe_sock::scrape::serve_blocking(l, move || s.prometheus());
    }
    let relays_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut relays = Vec::new();
    // The server side relays on to --upstream (on the host, loopback included), idle-blind.
    {
        let mut cfg = cfg.clone();
        cfg.idle = Duration::from_secs(86_400);
        cfg.on_idle = OnIdle::Fin;
        let (stats, stop) = (
            if l7.is_some() {
                Arc::new(Stats::default())
            } else {
                Arc::clone(&stats)
            },
            Arc::clone(&relays_stop),
        );
        let quiet = l7.is_some();
        relays.push(std::thread::spawn(move || -> std::io::Result<()> {
            let rt = relay_runtime()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(server_side)?;
                middlebox::run(l, Arc::new(cfg), stats, stop, move |f| {
                    if !quiet {
                        print_fate(log, f);
                    }
                })
                .await;
                Ok::<(), std::io::Error>(())
            })
        }));
    }
    // The L7 relay: in the router namespace, its timer on payload only.
    if let Some(l) = l7 {
        let mut cfg = cfg;
        cfg.upstream = vec![server_addr];
        let silencer_line = Arc::clone(&line);
        cfg.silencer = Some(middlebox::Silencer(Arc::new(move |flows| {
            silencer_line.drop_flows(flows).map_err(|e| e.to_string())
        })));
        let (stats, stop, line) = (
            Arc::clone(&stats),
            Arc::clone(&relays_stop),
            Arc::clone(&line),
        );
        relays.push(std::thread::spawn(move || -> std::io::Result<()> {
            // One thread, inside the router namespace: every socket it makes lives there.
            line.enter_router().map_err(std::io::Error::other)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l)?;
                middlebox::run(l, Arc::new(cfg), stats, stop, move |f| print_fate(log, f)).await;
                Ok::<(), std::io::Error>(())
            })
        }));
    }
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &line.client_ns])
        .args(&args.cmd)
        .env("KAPROBE_UPSTREAM", inside.to_string())
        .spawn()
        .map(|child| wait_or_stop(child, &stop));
    relays_stop.store(true, Ordering::Relaxed);
    for r in relays {
        let _ = r.join();
    }
    // The last reference: the namespaces go, with whatever CMD left running in them.
    drop(line);
    let status = status.map_err(|e| {
        Failure::new(
            crate::exit::FAILURE,
            format!(
                "run {}: {}",
                args.cmd.join(" "),
                kaprobe_sock::fmt::os_error(&e)
            ),
        )
    })?;
    let code = status.code().map_or_else(
        || {
            use std::os::unix::process::ExitStatusExt as _;
            // Killed by a signal: 128 + its number, as shells say.
            status
                .signal()
                .map_or(1, |s| u8::try_from(128 + s).unwrap_or(1))
        },
        |c| u8::try_from(c).unwrap_or(1),
    );
    Ok(ExitCode::from(code))
}

/// Wait for CMD; when kaprobe is told to stop (Ctrl-C, SIGTERM), pass SIGTERM on to it,
/// and SIGKILL after 3 s.
fn wait_or_stop(
    mut child: std::process::Child,
    stop: &std::sync::atomic::AtomicBool,
) -> std::process::ExitStatus {
    let mut deadline = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(_) => break,
        }
        if stop.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            match deadline {
                None => {
                    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                        // SAFETY: kill(2) on our own child, not yet reaped.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    deadline = Some(now + Duration::from_secs(3));
                }
                Some(d) if now >= d => {
                    let _ = child.kill();
                    break;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait().unwrap_or_else(|_| {
        use std::os::unix::process::ExitStatusExt as _;
        std::process::ExitStatus::from_raw(1 << 8)
    })
}

/// The relay's runtime: one worker per CPU the process may run on (at most 4), so that a
/// relay pinned to one CPU does not pass its connections between threads.
fn relay_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()
}

fn print_fate(log: LogArg, f: &Fate) {
    let line = match log {
        LogArg::Off => return,
        LogArg::Json => {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), "close".into());
            }
            v.to_string()
        }
        LogArg::Text => format!(
            "close {} -> {} {} idle={} lifetime={} up={}B down={}B{}",
            f.client,
            f.upstream
                .map_or_else(|| "-".to_string(), |u| u.to_string()),
            f.ending.as_str(),
            crate::util::human(Duration::from_secs_f64(f.idle.max(0.0))),
            crate::util::human(Duration::from_secs_f64(f.lifetime.max(0.0))),
            f.bytes_up,
            f.bytes_down,
            f.error
                .as_deref()
                .map_or_else(String::new, |e| format!(" ({e})"))
        ),
    };
    // The close log never stops the relay: a reader that went away just misses lines.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
