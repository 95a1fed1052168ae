//! `kaprobe demo`: a bounded tour on loopback for a newcomer; no arguments, no root.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use kaprobe_capture::{Event, LoopbackCapture};
use kaprobe_http::client::{probe, ProbeOptions};
use kaprobe_sock::conn::{self, Conn};
use kaprobe_sock::defaults::SystemDefaults;
use kaprobe_sock::diag;
use kaprobe_sock::hold::{hold, HoldEvent, HoldReport};
use kaprobe_sock::netns;
use kaprobe_sock::options::{self, KeepaliveConfig};

use crate::util;

const HELP: &str =
    "Opens a TCP connection to itself on loopback with keep-alive 1s idle / 1s interval / 3 probes,
shows the kernel's keep-alive timer ticking and its probes being answered, and explains what
was seen. As root it also silences the peer inside a private network namespace (its own
firewall; the host is not touched), shows the kernel giving up after 3 unanswered probes and
captures those probes on the wire. Last, `kaprobe serve` is measured by `kaprobe probe`.
Bounded: under twenty seconds.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct Args {}

const NEXT: &str = "
Next:
   kaprobe defaults                      the system settings and what they mean
   kaprobe hold HOST:PORT --idle 30s     hold a connection, see how it ends
   kaprobe sockets --state established   live sockets, their keep-alive timers
   kaprobe watch eth0                    keep-alive probes on the wire (root)
   kaprobe read capture.pcap             the same analysis over a pcap file
   kaprobe probe http://HOST/            what a server does to idle connections
   kaprobe race URL --idle 5s            reproduce the reuse race (502s, resets)
   kaprobe serve --keepalive-timeout 5s  HTTP server with keep-alive you control
   kaprobe probe ws://HOST/PATH          how long an idle WebSocket survives
   kaprobe --help                        everything else";

const WATCH: Duration = Duration::from_millis(3600);

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    crate::outln!("kaprobe demo: how TCP keep-alive keeps an idle connection honest\n")?;
    let (listener, addr) = conn::listen(SocketAddr::from(([127, 0, 0, 1], 0)), 1)?;
    let Conn {
        sock: client,
        local,
        ..
    } = conn::connect(&[addr], Duration::from_secs(5))?;
    let _server = conn::accept(&listener, addr)?;
    let cfg = demo_config();
    let peer = addr.to_string();
    options::apply(&client, &cfg, &peer)?;
    let eff = options::read(&client, &peer)?;
    say(
        &format!(
            "1. A connection {local} -> {addr} on loopback, with keep-alive set on the client:"
        ),
        3,
    )?;
    crate::outln!(
        "   idle {} before the first probe, then one every {}, give up after {} unanswered",
        util::human(eff.idle),
        util::human(eff.interval),
        eff.count
    )?;
    crate::outln!("   (read back from the kernel with getsockopt, not just what we asked for)\n")?;
    say(
        "   Lines marked 'timer' are the client's keep-alive timer as `kaprobe sockets` reads it \
         from the kernel (sock_diag), like `ss -o` shows it.\n",
        0,
    )?;
    crate::outln!(
        "2. Nobody sends anything for {:.1}s. Watch the kernel probe the peer:",
        WATCH.as_secs_f64()
    )?;
    let stop = AtomicBool::new(false);
    let ticker = timer_ticker(local, addr.port());
    let mut last_sent = None;
    // A closed stdout inside the hold shows at the next line printed after it.
    let report = hold(&client, &eff, &peer, &stop, Some(WATCH), |e| match *e {
        HoldEvent::ProbeSent { at, n, .. } => {
            last_sent = Some(at);
            let _ = say(
                &format!(
                "   {:>6.3}s  probe #{n} sent: an empty ACK with a sequence number one below what the peer expects",
                at.as_secs_f64()
            ),
                10,
            );
        }
        HoldEvent::ProbeAnswered { at, .. } => {
            let after = last_sent.map_or(0.0, |s| at.saturating_sub(s).as_secs_f64() * 1000.0);
            let _ = say(
                &format!(
                "   {:>6.3}s  answered within {after:.0}ms: the peer's kernel ACKs it, the connection is alive",
                at.as_secs_f64()
            ),
                10,
            );
        }
        HoldEvent::DataReceived { .. } | HoldEvent::PeerProbeAnswered { .. } => {}
    })?;
    ticker.store(true, Ordering::Relaxed);
    let d = SystemDefaults::read().ok();
    crate::outln!("\n3. What you saw")?;
    say(
        &format!(
            "   {} probes went out, {} were answered; the application never woke up for any of it.",
            report.probes_sent, report.probes_answered
        ),
        0,
    )?;
    say(
        &format!(
            "   Had the peer vanished silently (power loss, a NAT that forgot the flow), the probes \
             would go unanswered and after {} of silence the kernel would reset the connection and \
             the application's next read or write would fail with ETIMEDOUT.",
            util::human(eff.dead_peer_after())
        ),
        0,
    )?;
    if let Some(d) = d {
        say(
            &format!(
                "   With this machine's defaults (kaprobe defaults) that takes {}, and only on \
                 sockets that turn SO_KEEPALIVE on at all; most do not, and an idle connection to \
                 a dead peer lives on.",
                util::human(d.dead_peer_after())
            ),
            0,
        )?;
    }
    if is_root() {
        // root without CAP_SYS_ADMIN (some containers) cannot make a namespace: say so, go on
        if let Err(e) = dead_peer_step() {
            crate::outln!("   (skipped: {e:#})")?;
        }
    } else {
        crate::outln!(
            "\n   (Run as root to also see a peer vanish, inside a private network namespace.)"
        )?;
    }
    http_step()?;
    crate::outln!("{NEXT}")?;
    Ok(ExitCode::SUCCESS)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root only: in a private network namespace, silence the peer with a firewall rule and let
/// the kernel find out. The host's network is never touched.
fn dead_peer_step() -> anyhow::Result<()> {
    crate::outln!(
        "\n4. Now the peer vanishes (root: a private network namespace, its own firewall):"
    )?;
    let outcome =
        netns::in_private_netns(|| -> anyhow::Result<Option<(HoldReport, Vec<Event>)>> {
            let (listener, addr) = conn::listen(SocketAddr::from(([127, 0, 0, 1], 0)), 1)?;
            // capture on this namespace's lo from before the handshake (the socket is open when
            // start returns), as `kaprobe watch lo` would
            let capture = LoopbackCapture::start(addr.port(), Duration::from_millis(5500))?;
            let Conn { sock: client, .. } = conn::connect(&[addr], Duration::from_secs(5))?;
            let _server = conn::accept(&listener, addr)?;
            let peer = addr.to_string();
            options::apply(&client, &demo_config(), &peer)?;
            let eff = options::read(&client, &peer)?;
            let rule = format!("iptables -A INPUT -p tcp --dport {} -j DROP", addr.port());
            let dropped = std::process::Command::new("iptables")
                .args([
                    "-A",
                    "INPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    &addr.port().to_string(),
                    "-j",
                    "DROP",
                ])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !dropped {
                crate::outln!("   (skipped: iptables is not installed or did not work)")?;
                return Ok(None);
            }
            say(
                &format!(
                    "   `{rule}`: everything sent to the peer now disappears, nothing comes back"
                ),
                0,
            )?;
            let stop = AtomicBool::new(false);
            let report = hold(
                &client,
                &eff,
                &peer,
                &stop,
                Some(Duration::from_secs(10)),
                |e| {
                    if let HoldEvent::ProbeSent { at, n, unanswered } = *e {
                        // A closed stdout shows at the next line printed after the hold.
                        let _ = crate::outln!(
                            "   {:>6.3}s  probe #{n} sent ... no answer ({unanswered} unanswered)",
                            at.as_secs_f64()
                        );
                    }
                },
            )?;
            let events = capture.wait()?;
            Ok(Some((report, events)))
        })??;
    if let Some((r, events)) = outcome {
        say(
            &format!(
                "   {:>6.3}s  {}",
                r.lifetime.as_secs_f64(),
                r.outcome.describe()
            ),
            10,
        )?;
        say(
            &format!(
                "   {} unanswered probes, {:.2}s after the peer's last segment (the settings \
                 predict {:.0}s: idle 1s + 3 probes x 1s). The kernel then sends RST and the \
                 application sees ETIMEDOUT.",
                r.unanswered,
                r.silent_for.as_secs_f64(),
                r.expected_silent_for.as_secs_f64()
            ),
            0,
        )?;
        print_wire(&events)?;
    }
    Ok(())
}

/// What the capture saw on the namespace's loopback: each classified packet, the RST, and
/// the flow's inferred settings.
fn print_wire(events: &[Event]) -> anyhow::Result<()> {
    say(
        "\n5. The same thing on the wire (kaprobe's own capture on lo, like `kaprobe watch lo`):",
        3,
    )?;
    // times from the flow's first packet (the handshake), as on the hold's clock above
    let t0 = events.iter().find_map(|e| match e {
        Event::Flow(f) => Some(f.first_seen),
        Event::Packet(_) | Event::IdleLimit(_) => None,
    });
    for e in events {
        match e {
            Event::Packet(p) => {
                let at = t0.map_or(0.0, |t| p.ts.saturating_sub(t).as_secs_f64());
                say(
                    &format!(
                        "   {at:>7.3}s  {} -> {}  {} #{} (seq {}, {} bytes, {} unanswered before it)",
                        p.src,
                        p.dst,
                        p.kind.as_str(),
                        p.probe_number,
                        p.seq,
                        p.len,
                        p.unanswered_before
                    ),
                    11,
                )?;
            }
            Event::Flow(f) => {
                say(&format!(
                    "   flow {} -> {}: {} probes by the {}, {} answered, {} unanswered at the end; outcome: {}",
                    f.client,
                    f.server,
                    f.keepalives,
                    f.prober_role.as_str(),
                    f.answered,
                    f.unanswered_at_end,
                    f.outcome.as_str()
                ), 2)?;
                if !f.inference.name.is_empty() {
                    say(&format!("   inferred: {}", f.inference.name), 2)?;
                }
            }
            Event::IdleLimit(_) => {}
        }
    }
    Ok(())
}

fn demo_config() -> KeepaliveConfig {
    KeepaliveConfig {
        idle: Some(Duration::from_secs(1)),
        interval: Some(Duration::from_secs(1)),
        count: Some(3),
        user_timeout: None,
    }
}

/// Every 500ms, print the client socket's keep-alive timer as sock_diag reports it, until
/// the returned flag is set.
fn timer_ticker(local: SocketAddr, port: u16) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let start = Instant::now();
    std::thread::spawn(move || {
        let filter = diag::Filter {
            port: Some(port),
            ipv6: false,
            ..diag::Filter::default()
        };
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            if flag.load(Ordering::Relaxed) {
                break;
            }
            let Ok(list) = diag::list(&filter) else {
                return;
            };
            if let Some(e) = list.iter().find(|e| e.local == local) {
                let printed = crate::outln!(
                    "   {:>6.3}s  timer: {} fires in {}ms, {} probes unanswered",
                    start.elapsed().as_secs_f64(),
                    e.timer.as_str(),
                    e.expires.as_millis(),
                    e.retrans
                );
                if printed.is_err() {
                    // Stdout is gone: the main thread finds out at its next line.
                    return;
                }
            }
        }
    });
    done
}

/// HTTP keep-alive: start `kaprobe serve` with a 2s idle timeout on loopback and let
/// `kaprobe probe` measure it from outside.
fn http_step() -> anyhow::Result<()> {
    use std::io::BufRead;
    crate::outln!("\n6. HTTP keep-alive: the same question one layer up.")?;
    say(
        "   `kaprobe serve --keepalive-timeout 2s` on loopback, measured from outside by \
         `kaprobe probe`:\n",
        0,
    )?;
    let exe = std::env::current_exe()?;
    let mut server = crate::util::ChildGuard(
        std::process::Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keepalive-timeout",
                "2s",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?,
    );
    let stderr = server
        .0
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr from kaprobe serve"))?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = lines
        .find_map(|l| {
            l.ok()
                .and_then(|l| l.split_once("listening on ").map(|(_, u)| format!("{u}/")))
        })
        .ok_or_else(|| anyhow::anyhow!("kaprobe serve did not start"))?;
    let opts = ProbeOptions {
        max_wait: Duration::from_secs(8),
        connections: 20,
        ..ProbeOptions::default()
    };
    let rt = crate::measure::runtime()?;
    let report = rt.block_on(probe(&url, &opts));
    rt.shutdown_timeout(Duration::from_millis(100));
    crate::render::http::probe(&report.map_err(crate::exit::http_failure)?)?;
    say(
        "\n   A proxy or client pool that keeps idle connections longer than that will, now and \
         then, send a request on a connection the server is closing: the 502 / \"connection \
         reset by peer\" that `kaprobe race` reproduces and docs/why-did-my-connection-die.md \
         explains.",
        0,
    )?;
    Ok(())
}

/// Print prose wrapped to the output width; continuation lines keep the line's own leading
/// spaces plus `indent`.
fn say(text: &str, indent: usize) -> anyhow::Result<()> {
    crate::outln!("{}", crate::term::wrap(text, indent))?;
    Ok(())
}
