//! `kaprobe watch IFACE`: keep-alive probes live on a network interface.

use std::io::{self, IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kaprobe_capture::live::{watch, PcapFile, WatchOptions, WatchSink};
use kaprobe_capture::{Analyzer, Event, Filter, LiveSource, TrackerConfig};

use super::read::{
    capture_failure, flow_json, flows_table, packet_json, packet_note, sort_flows, stats_json,
    stats_line,
};

/// Watch TCP keep-alive probes live on a network interface.
///
/// Shows a refreshing table of the flows with keep-alive activity: who probes, the idle
/// time before the first probe, the interval between probes, probes sent and answered, the
/// last probe and the state (alive, probing with N unanswered, peer dead, closed). Flows
/// with trouble are listed first. On `lo` each packet is counted once. Stop with Ctrl-C
/// (a summary is printed) or let `--duration` stop it.
///
/// Needs CAP_NET_RAW: run as root, or once
/// `sudo setcap cap_net_raw,cap_net_admin=eip $(which kaprobe)`.
///
/// Exit status: 0 done, 2 bad flag or unknown interface, 6 missing privilege, 7 the
/// --write file could not be written.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sudo kaprobe watch eth0 --port 5432\n  \
    sudo kaprobe watch lo --port 8080 --duration 30s --json\n  \
    sudo kaprobe watch eth0 --host 10.0.0.7 --write probes.pcap\n\nJSON schema: docs/watch.md")]
pub struct Args {
    /// Network interface to capture on (see `ip link`), e.g. eth0 or lo.
    pub iface: String,
    /// Only packets to or from this TCP port (1-65535).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only packets to or from this IP address.
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// Stop after this long (e.g. 30s, 5m, 1h30m; a bare number is seconds; > 0).
    #[arg(long, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Stream one JSON object per line: {"type":"packet",...} per classified packet,
    /// {"type":"flow",...} when a flow with probes ends and for open flows at the end,
    /// then {"type":"stats",...}.
    #[arg(long)]
    pub json: bool,
    /// Put the interface in promiscuous mode (see traffic not addressed to this host).
    #[arg(long)]
    pub promisc: bool,
    /// Also save every captured frame to this pcap file (readable by kaprobe read,
    /// tcpdump and Wireshark).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::util::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be greater than 0"));
    }
    Ok(d)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a zeroed struct plus a handler that only stores to an
        // atomic (async-signal-safe); no SA_RESTART, so a blocked read returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

struct Sink {
    json: bool,
    tty: bool,
    iface: String,
    started: Instant,
    out: io::Stdout,
    broken: bool,
}

impl Sink {
    fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        let mut o = self.out.lock();
        if writeln!(o, "{s}").and_then(|()| o.flush()).is_err() {
            // The reader went away (`| head`): stop writing, stop capturing.
            self.broken = true;
            STOP.store(true, Ordering::Relaxed);
        }
    }
}

impl WatchSink for Sink {
    fn event(&mut self, e: &Event) {
        if self.json {
            let v = match e {
                Event::Packet(p) => packet_json(p),
                Event::Flow(f) => flow_json(f),
            };
            self.line(&v.to_string());
        } else if !self.tty {
            let s = match e {
                Event::Packet(p) => format!(
                    "{} {} {} -> {} {}",
                    super::read::rfc3339(p.ts),
                    p.kind.as_str(),
                    p.src,
                    p.dst,
                    packet_note(p)
                ),
                Event::Flow(f) => format!(
                    "flow {} -> {} {}: {} keep-alives, {} answered; {}",
                    f.client,
                    f.server,
                    f.outcome.as_str(),
                    f.keepalives,
                    f.answered,
                    f.inference.name
                ),
            };
            self.line(&crate::util::wrap(&s, 4));
        }
    }

    fn tick(&mut self, a: &Analyzer) {
        if self.json || !self.tty {
            return;
        }
        let mut flows = a.tracker.snapshot();
        sort_flows(&mut flows);
        let mut screen = String::from("\x1b[H\x1b[2J");
        screen.push_str(&format!(
            "kaprobe watch {} - {:.0} s - {} flows with probes (Ctrl-C to stop)\n",
            self.iface,
            self.started.elapsed().as_secs_f64(),
            flows.len()
        ));
        if !flows.is_empty() {
            screen.push_str(&flows_table(&flows).to_string());
            screen.push('\n');
        }
        screen.push_str(&stats_line(&a.stats, self.started.elapsed()));
        self.line(&screen);
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut src = LiveSource::open(&args.iface, args.promisc).map_err(capture_failure)?;
    let mut tap = match &args.write {
        Some(p) => Some(PcapFile::create(p, src.link()).map_err(capture_failure)?),
        None => None,
    };
    install_signal_handlers();
    let opts = WatchOptions {
        filter: Filter {
            port: args.port,
            host: args.host,
        },
        duration: args.duration,
        tracker: TrackerConfig::default(),
    };
    let mut sink = Sink {
        json: args.json,
        tty: io::stdout().is_terminal(),
        iface: args.iface.clone(),
        started: Instant::now(),
        out: io::stdout(),
        broken: false,
    };
    if sink.json {
        let start = serde_json::json!({
            "type": "start",
            "iface": args.iface,
            "time": super::read::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            ),
        });
        sink.line(&start.to_string());
    } else if !sink.tty {
        sink.line(&format!("watching {} for keep-alive probes", args.iface));
    }
    // Summaries of flows still open arrive as events at the end; collect them for the table.
    struct Final<'a> {
        inner: &'a mut Sink,
        flows: Vec<kaprobe_capture::FlowSummary>,
    }
    impl WatchSink for Final<'_> {
        fn event(&mut self, e: &Event) {
            if let Event::Flow(f) = e {
                self.flows.push((**f).clone());
            }
            self.inner.event(e);
        }
        fn tick(&mut self, a: &Analyzer) {
            self.inner.tick(a);
        }
    }
    let mut fin = Final {
        inner: &mut sink,
        flows: Vec::new(),
    };
    let stats = watch(&mut src, &opts, &STOP, tap.as_mut(), &mut fin).map_err(capture_failure)?;
    let mut flows = fin.flows;
    let elapsed = sink.started.elapsed();
    if sink.json {
        sink.line(&stats_json(&stats, elapsed).to_string());
    } else {
        sort_flows(&mut flows);
        if sink.tty {
            sink.line("");
        }
        if flows.is_empty() {
            sink.line("No keep-alive or zero-window probes seen.");
        } else {
            sink.line(&flows_table(&flows).to_string());
        }
        sink.line(&stats_line(&stats, elapsed));
    }
    if let Some(p) = &args.write {
        if !sink.json {
            sink.line(&format!("frames saved to {}", p.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
