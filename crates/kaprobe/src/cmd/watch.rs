//! `kaprobe watch IFACE`: keep-alive probes live on a network interface.

use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaprobe_capture::bpf::DEFAULT_SNAPLEN;
use kaprobe_capture::live::LiveOptions;
use kaprobe_capture::metrics::WatchMetrics;
use kaprobe_capture::watch::{watch, WatchOptions, WatchSink};
use kaprobe_capture::writer::Rotation;
use kaprobe_capture::{Analyzer, Event, Filter, LiveSource, Outcome, PcapFile, TrackerConfig};
use kaprobe_sock::scrape::serve_blocking;

use crate::exit::capture_failure;
use crate::render::capture::{
    flow_json, flows_table, packet_json, packet_note, rfc3339, sort_flows, stats_json, stats_line,
};

/// Watch TCP keep-alive probes live on a network interface.
///
/// Shows a refreshing table of the flows with keep-alive activity: who probes, the idle
/// time before the first probe, the interval between probes, probes sent and answered, the
/// last probe and the state (alive, probing with N unanswered, peer dead, closed). Flows
/// with trouble are listed first. On `lo` each packet is counted once. Stop with Ctrl-C
/// (a summary is printed) or let `--duration` stop it.
///
/// Cheap on busy interfaces: the kernel keeps only TCP (and only --port/--host when given)
/// and hands over the headers (--snaplen bytes), through a memory-mapped ring; it keeps a
/// small record per flow and withholds the segments that change nothing but counters
/// (see --every-packet). Packets the
/// kernel had to drop because watch fell behind are counted in the table, the summary and
/// the JSON stats, and a warning goes to stderr once a second while drops happen.
///
/// `--metrics ADDR` serves Prometheus metrics (probes, unanswered probes, dead peers, flows,
/// capture drops) on http://ADDR/metrics for a fleet-wide Prometheus: see docs/metrics.md.
///
/// Needs CAP_NET_RAW: run as root, or once
/// `sudo setcap cap_net_raw,cap_net_admin=eip $(which kaprobe)`.
///
/// Exit status: 0 done, 1 the --metrics address is in use, 2 bad flag or unknown
/// interface, 6 missing privilege, 7 the --write file could not be written.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sudo kaprobe watch eth0 --port 5432\n  \
    sudo kaprobe watch lo --port 8080 --duration 30s --json\n  \
    sudo kaprobe watch eth0 --host 10.0.0.7 --write probes.pcap\n  \
    sudo kaprobe watch eth0 --metrics 0.0.0.0:9464 --json > /dev/null\n\n\
    JSON schema: docs/watch.md; metrics and alert rules: docs/metrics.md")]
pub struct Args {
    /// Network interface to capture on (see `ip link`), e.g. eth0 or lo.
    pub iface: String,
    /// A filter expression as tcpdump takes it, after the interface: e.g.
    /// `kaprobe watch eth0 tcp port 443 and host 10.0.0.5` (pcap-filter(7): host, net,
    /// port, portrange, src/dst, tcp/ip/ip6, greater/less, tcp[tcpflags] & tcp-syn != 0,
    /// and/or/not, parentheses). Compiled into the kernel filter; see docs/watch.md.
    #[arg(
        value_name = "EXPRESSION",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub expression: Vec<String>,
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
    /// With --write: start a new file before one grows past SIZE, as tcpdump -C does
    /// (files FILE0, FILE1, ...). SIZE in bytes with a unit (500kB, 100MB, 2GB, 64MiB) or
    /// a plain number of millions of bytes (tcpdump's unit). Range 1kB..=1TB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "write")]
    pub write_size: Option<u64>,
    /// With --write-size: keep at most N files, overwriting the oldest (a ring for days-long
    /// captures, as tcpdump -W). Range 2..=100000.
    #[arg(long, value_name = "N", requires = "write_size",
          value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub write_files: Option<u32>,
    /// Bytes kept of each packet: enough for the headers kaprobe reads (Ethernet, VLAN,
    /// IPv6, TCP with options). 0 keeps whole packets (e.g. for --write), else 96..=65535.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SNAPLEN,
          value_parser = parse_snaplen)]
    pub snaplen: u32,
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT, e.g. 127.0.0.1:9464 or
    /// [::]:9464; port 0 picks a free port). The bound address is printed on stderr.
    #[arg(long, value_name = "ADDR", value_parser = crate::args::parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Hand every TCP packet to user space. By default the kernel keeps a small record per
    /// flow (an eBPF socket filter) and withholds the routine segments of quiet flows (data
    /// and ACKs in order, no probe pending, no reuse after idle, no FIN/RST), counting them
    /// in the record that watch reads back: the same results for a fraction of the CPU on
    /// busy links. Without CAP_BPF, or with --write, every packet is handed over anyway.
    #[arg(long)]
    pub every_packet: bool,
    /// On exit, write a picture of the flows seen to this HTML file (as `read --html`: a
    /// lane per flow, how each ended, failed reuses).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// Flow summaries kept for `--html` at most (the picture draws fewer; the rest are counted).
const HTML_FLOWS_KEPT: usize = 50_000;

/// A file size: `500kB`, `100MB`, `2GB` (powers of 1000), `64KiB`, `100MiB`, `1GiB` (powers
/// of 1024), or a plain number of millions of bytes, as tcpdump's -C takes it.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!("'{s}' is not a size: use e.g. 500kB, 100MB, 2GB, 64MiB, or a number of millions of bytes (1kB..=1TB)")
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" => 1e6,
        "b" => 1.0,
        "k" | "kb" => 1e3,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || !(1e3..=1e12).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn parse_snaplen(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Ok(0),
        Ok(n) if (96..=65_535).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a snap length: use 0 (whole packets) or 96..=65535 bytes"
        )),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::args::parse_duration(s)?;
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
    metrics: Option<Arc<WatchMetrics>>,
    /// Kernel drops already warned about.
    drops_seen: u64,
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
        if let Some(m) = &self.metrics {
            m.on_event(e);
        }
        if self.json {
            let v = match e {
                Event::Packet(p) => packet_json(p),
                Event::Flow(f) => flow_json(f),
                Event::IdleLimit(l) => crate::render::capture::idle_limit_json(l),
            };
            self.line(&v.to_string());
        } else if !self.tty {
            let s = match e {
                Event::Packet(p) => format!(
                    "{} {} {} -> {} {}",
                    rfc3339(p.ts),
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
                Event::IdleLimit(l) => crate::render::capture::idle_limit_line(l),
            };
            self.line(&crate::term::wrap(&s, 4));
        }
    }

    fn wants_snapshot(&self) -> bool {
        self.metrics.is_some() || (!self.json && self.tty)
    }

    fn tick(&mut self, a: &Analyzer) {
        let dropped = a.stats.dropped;
        if dropped > self.drops_seen {
            // Once per tick, never per packet: watch must not fall behind silently.
            eprintln!(
                "kaprobe watch: warning: the kernel dropped {} packets in the last second \
                 ({dropped} in all): watch is falling behind; narrow it with --port/--host",
                dropped - self.drops_seen
            );
            self.drops_seen = dropped;
        }
        if !self.wants_snapshot() {
            return;
        }
        let want_table = !self.json && self.tty;
        let mut flows = a.tracker.snapshot();
        if let Some(m) = &self.metrics {
            let probing = flows
                .iter()
                .filter(|f| f.outcome == Outcome::Probing)
                .count() as u64;
            m.publish(&a.stats, a.tracker.flows_tracked() as u64, probing);
        }
        if !want_table {
            return;
        }
        sort_flows(&mut flows);
        let mut screen = String::from("\x1b[H\x1b[2J");
        screen.push_str(&title(
            &self.iface,
            self.started.elapsed(),
            flows.len(),
            dropped,
            crate::term::output().width,
        ));
        screen.push('\n');
        if !flows.is_empty() {
            screen.push_str(&flows_table(&flows).to_string());
            screen.push('\n');
        }
        screen.push_str(&stats_line(&a.stats, self.started.elapsed()));
        self.line(&screen);
    }
}

/// The screen's first line, fitted to `width`: what is watched, for how long, what was
/// found; the least needed parts go first when it is narrow, and what still does not fit
/// wraps between words.
fn title(iface: &str, elapsed: Duration, flows: usize, dropped: u64, width: usize) -> String {
    let secs = elapsed.as_secs();
    let head = format!("kaprobe watch {iface} - {secs}s - {flows} flows with probes");
    let full = format!("{head} - {dropped} packets dropped by the kernel - Ctrl-C stops");
    let short = format!("{head} - {dropped} dropped");
    [full, short]
        .into_iter()
        .find(|t| t.chars().count() <= width)
        .unwrap_or_else(|| crate::term::wrap_to(&format!("{head} - {dropped} dropped"), width, 2))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let expr = crate::args::filter_expression(&args.expression)?;
    let filter = Filter {
        port: args.port,
        host: args.host,
    };
    let mut src = LiveSource::open_filtered(
        &args.iface,
        &LiveOptions {
            promisc: args.promisc,
            filter,
            snaplen: args.snaplen,
            // A copy to a file needs every packet.
            withhold: !args.every_packet && args.write.is_none(),
        },
        expr.as_ref(),
    )
    .map_err(capture_failure)?;
    if let Some(why) = src.withhold_error() {
        eprintln!(
            "kaprobe watch: note: the kernel keeps no per-flow state ({why}); every packet \
             is handed over (more CPU on busy links)"
        );
    }
    let mut tap = match (&args.write, args.write_size) {
        (Some(p), Some(max_bytes)) => Some(
            PcapFile::rotating(
                p,
                src.link(),
                src.snaplen(),
                Rotation {
                    max_bytes,
                    max_files: args.write_files,
                },
            )
            .map_err(capture_failure)?,
        ),
        (Some(p), None) => Some(
            PcapFile::create_with_snaplen(p, src.link(), src.snaplen()).map_err(capture_failure)?,
        ),
        (None, _) => None,
    };
    let metrics = match args.metrics {
        Some(addr) => {
            let l = crate::args::bind_metrics(addr)?;
            let bound = l.local_addr().unwrap_or(addr);
            let m = Arc::new(WatchMetrics::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ));
            let (m2, iface) = (Arc::clone(&m), args.iface.clone());
            serve_blocking(l, move || m2.render(&iface));
            eprintln!("kaprobe watch: metrics on http://{bound}/metrics");
            Some(m)
        }
        None => None,
    };
    install_signal_handlers();
    let opts = WatchOptions {
        filter,
        expr,
        duration: args.duration,
        tracker: TrackerConfig {
            // The picture shows every flow; the table and the stream keep to the telling ones.
            report_all_flows: args.html.is_some(),
            ..TrackerConfig::default()
        },
    };
    let mut sink = Sink {
        json: args.json,
        tty: io::stdout().is_terminal(),
        iface: args.iface.clone(),
        started: Instant::now(),
        out: io::stdout(),
        broken: false,
        metrics: metrics.clone(),
        drops_seen: 0,
    };
    if sink.json {
        let start = serde_json::json!({
            "type": "start",
            "iface": args.iface,
            "time": rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            ),
        });
        sink.line(&start.to_string());
    } else if !sink.tty {
        sink.line(&format!("watching {} for keep-alive probes", args.iface));
    }
    // Summaries of flows still open arrive as events at the end; collect them for the table
    // (and, with --html, every flow, the probes and the idle limits for the picture).
    struct Final<'a> {
        inner: &'a mut Sink,
        flows: Vec<kaprobe_capture::FlowSummary>,
        html: bool,
        marks: crate::render::html::Marks,
        limits: Vec<kaprobe_capture::flow::ending::IdleLimit>,
    }
    impl WatchSink for Final<'_> {
        fn event(&mut self, e: &Event) {
            match e {
                Event::Flow(f) => {
                    if !self.html || self.flows.len() < HTML_FLOWS_KEPT {
                        self.flows.push((**f).clone());
                    }
                    if self.html && !crate::render::html::telling(f) {
                        return;
                    }
                }
                Event::Packet(p) if self.html => self.marks.add(p),
                Event::IdleLimit(l) => self.limits.push(l.clone()),
                Event::Packet(_) => {}
            }
            self.inner.event(e);
        }
        fn tick(&mut self, a: &Analyzer) {
            self.inner.tick(a);
        }
        fn wants_snapshot(&self) -> bool {
            self.inner.wants_snapshot()
        }
    }
    let mut fin = Final {
        inner: &mut sink,
        flows: Vec::new(),
        html: args.html.is_some(),
        marks: crate::render::html::Marks::default(),
        limits: Vec::new(),
    };
    let stats = watch(&mut src, &opts, &STOP, tap.as_mut(), &mut fin).map_err(capture_failure)?;
    let saved = tap
        .as_ref()
        .map(|t| (t.files_started(), t.path().to_path_buf()));
    let (mut flows, marks, limits) = (fin.flows, fin.marks, fin.limits);
    if let Some(path) = &args.html {
        sort_flows(&mut flows);
        let title = format!("kaprobe watch {}", args.iface);
        crate::render::html::write(
            path,
            &crate::render::html::page(&title, &flows, &marks, &limits),
        )?;
        flows.retain(crate::render::html::telling);
    }
    let elapsed = sink.started.elapsed();
    if let Some(m) = &metrics {
        m.publish(&stats, 0, 0);
    }
    if stats.dropped > sink.drops_seen {
        eprintln!(
            "kaprobe watch: warning: the kernel dropped {} packets in all: watch fell behind",
            stats.dropped
        );
    }
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
        let mut line = stats_line(&stats, elapsed);
        if stats.dropped == 0 {
            line.push_str("; 0 dropped by the kernel");
        }
        sink.line(&line);
    }
    if let Some(p) = &args.write {
        if !sink.json {
            match (args.write_size, &saved) {
                (Some(_), Some((files, last))) => sink.line(&format!(
                    "frames saved to {} files named {}N (the last: {})",
                    args.write_files
                        .map_or(*files, |n| (*files).min(u64::from(n))),
                    p.display(),
                    last.display()
                )),
                _ => sink.line(&format!("frames saved to {}", p.display())),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::title;
    use std::time::Duration;

    #[test]
    fn the_title_fits_the_width() {
        let t = title("eth0", Duration::from_secs(12), 3, 0, 200);
        assert!(
            t.contains("packets dropped by the kernel - Ctrl-C stops"),
            "{t}"
        );
        for width in [80, 60, 40, 20] {
            for iface in ["lo", "eth0", "enp0s31f6", "very-long-bridge-name0"] {
                let t = title(iface, Duration::from_secs(86_399), 12_345, 9_876_543, width);
                assert!(t.contains(iface), "{t}");
                for line in t.lines() {
                    // Only a single word wider than the screen may stick out.
                    assert!(
                        line.chars().count() <= width || !line.trim().contains(' '),
                        "{width}: {line:?}"
                    );
                }
            }
        }
        // At 80 columns the common case is one line and keeps the drop count.
        let t = title("enp0s31f6", Duration::from_secs(3600), 120, 7, 80);
        assert_eq!(t.lines().count(), 1, "{t}");
        assert!(
            t.contains("7 dropped") || t.contains("7 packets dropped"),
            "{t}"
        );
    }
}
