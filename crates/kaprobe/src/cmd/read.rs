//! `kaprobe read FILE`: find keep-alive probes in a pcap or pcapng file.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kaprobe_capture::{
    Event, FileSource, Filter, FlowSummary, PacketEvent, RunStats, TrackerConfig,
};

use crate::exit::{self, capture_failure, Failure};
use crate::render::capture::{
    ending_lines, flow_json, flows_table, idle_limit_json, idle_limit_line, packet_json,
    sort_flows, stats_json, stats_line, write_packets,
};
use kaprobe_capture::flow::ending::IdleLimit;

/// Find TCP keep-alive probes, their ACKs and zero-window probes in a capture file.
///
/// Reads pcap and pcapng (tcpdump -w, tshark/dumpcap -w, Wireshark, kaprobe watch --write)
/// with Ethernet (802.1Q/QinQ), Linux cooked (SLL, SLL2), raw IP or BSD loopback framing,
/// IPv4 and IPv6. Prints a table of the flows with probes: who probes, idle time before the
/// first probe, the interval, answered/unanswered probes, how the flow ended and the likely
/// keep-alive settings. Frame numbers count every frame from 1, as Wireshark does.
///
/// FILE `-` reads the capture from standard input, so kaprobe can sit at the end of a
/// `tcpdump -w -` pipeline; the table comes when the input ends (Ctrl-C on tcpdump).
///
/// Exit status: 0 done, 2 bad flag, 7 unreadable/corrupt/unsupported file.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    tcpdump -i any -w ka.pcap 'tcp port 5432' & ...; kaprobe read ka.pcap\n  \
    sudo tcpdump -i lo -U -w - 'tcp port 5432' | kaprobe read -\n  \
    kaprobe read ka.pcapng --json | jq 'select(.type==\"flow\")'\n  \
    kaprobe read ka.pcap --port 8080 --packets\n\nJSON schema: docs/read.md")]
pub struct Args {
    /// The capture file (pcap or pcapng), or - for standard input.
    pub file: PathBuf,
    /// A filter expression as tcpdump takes it, after the file: e.g.
    /// `kaprobe read ka.pcap tcp port 443 and host 10.0.0.5` (pcap-filter(7): host, net,
    /// port, portrange, src/dst, tcp/ip/ip6, greater/less, tcp[tcpflags] & tcp-syn != 0,
    /// and/or/not, parentheses; see docs/read.md).
    #[arg(
        value_name = "EXPRESSION",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub expression: Vec<String>,
    /// One JSON object per line: {"type":"packet",...} per classified packet, then
    /// {"type":"flow",...} per flow (how it ended, its reuses), {"type":"idle_limit",...}
    /// per server whose reuses both worked and failed, then one {"type":"stats",...}.
    #[arg(long)]
    pub json: bool,
    /// Also write a picture of every flow to this HTML file: one self-contained page, a
    /// lane per flow (idle gaps, probes, FIN/RST/silence, failed reuses), open in a browser.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the flows that matched (--port, --host, the filter expression) to this
    /// pcap file: every frame of each TCP flow with at least one matching packet, so
    /// `kaprobe read big.pcap --write resets.pcap 'tcp[tcpflags] & tcp-rst != 0'` keeps
    /// whole conversations. Reads FILE a second time, so FILE cannot be standard input.
    #[arg(long, value_name = "OUT")]
    pub write: Option<PathBuf>,
    /// Only analyse packets to or from this TCP port (1-65535).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only analyse packets to or from this IP address.
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// List every classified packet in the human output (by default only when few).
    #[arg(long)]
    pub packets: bool,
    /// Most flows tracked at once; beyond it the least recently active flow is evicted
    /// (and counted). 1-100000000.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_flows: u64,
}

/// Packets listed in human output without `--packets`.
const AUTO_PACKET_ROWS: usize = 60;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let expr = crate::args::filter_expression(&args.expression)?;
    if args.write.is_some() && args.file.as_os_str() == "-" {
        return Err(Failure::usage(
            "--write reads the capture twice (once to find the flows, once to copy them): give a file, not - (standard input)",
        )
        .into());
    }
    if let Some(w) = &args.write {
        if same_file(&args.file, w) {
            return Err(Failure::usage(format!(
                "--write {} is the file being read: choose another name",
                w.display()
            ))
            .into());
        }
    }
    let mut src = open(&args.file)?;
    let filter = Filter {
        port: args.port,
        host: args.host,
    };
    let cfg = TrackerConfig {
        max_flows: usize::try_from(args.max_flows).unwrap_or(usize::MAX),
        // JSON tells every flow's ending; the table only the flows with something to say.
        report_all_flows: args.json || args.html.is_some(),
        ..TrackerConfig::default()
    };
    let started = Instant::now();
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut flows: Vec<FlowSummary> = Vec::new();
    let mut packets: Vec<PacketEvent> = Vec::new();
    let mut n_packets = 0usize;
    let mut limits = Vec::new();
    let mut marks = crate::render::html::Marks::default();
    let want_html = args.html.is_some();
    let mut write_err: Option<io::Error> = None;
    let json = args.json;
    let keep_rows = args.packets;
    let mut matched = std::collections::HashSet::new();
    let collect = args.write.is_some().then_some(&mut matched);
    let stats =
        kaprobe_capture::analyze::analyze_with(&mut src, filter, expr, cfg, collect, |e| match e {
            Event::Packet(p) => {
                n_packets += 1;
                if want_html {
                    marks.add(&p);
                }
                if json {
                    if write_err.is_none() {
                        if let Err(e) = writeln!(out, "{}", packet_json(&p)) {
                            write_err = Some(e);
                        }
                    }
                } else if keep_rows || packets.len() <= AUTO_PACKET_ROWS {
                    packets.push(p);
                }
            }
            Event::Flow(f) => flows.push(*f),
            Event::IdleLimit(l) => limits.push(l),
        })
        .map_err(capture_failure)?;
    let elapsed = started.elapsed();
    sort_flows(&mut flows);
    if let Some(w) = &args.write {
        let mut again = open(&args.file)?;
        let (frames, other) =
            kaprobe_capture::analyze::write_flows(&mut again, &matched, w, 262_144)
                .map_err(capture_failure)?;
        eprintln!(
            "kaprobe read: wrote {frames} frames of {} matching flows to {}{}",
            matched.len(),
            w.display(),
            if other > 0 {
                format!(" ({other} frames of another link type left out)")
            } else {
                String::new()
            }
        );
    }
    if let Some(path) = &args.html {
        let title = format!("kaprobe read {}", args.file.display());
        crate::render::html::write(
            path,
            &crate::render::html::page(&title, &flows, &marks, &limits),
        )?;
    }
    if want_html && !json {
        // The picture shows every flow; the table keeps to those with something to say.
        flows.retain(crate::render::html::telling);
    }
    let res = if json {
        match write_err {
            Some(e) => Err(e),
            None => write_json_tail(&mut out, &flows, &limits, &stats, elapsed),
        }
    } else {
        write_human(
            &mut out, &args, &packets, n_packets, &flows, &stats, elapsed,
        )
        .and_then(|()| {
            limits
                .iter()
                .try_for_each(|l| writeln!(out, "{}", idle_limit_line(l)))
        })
    };
    match res.and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `kaprobe read f | head`: the reader left; that is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::new(
            exit::FAILURE,
            format!("write to stdout: {}", kaprobe_sock::fmt::os_error(&e)),
        )
        .into()),
    }
}

fn write_json_tail(
    out: &mut impl Write,
    flows: &[FlowSummary],
    limits: &[IdleLimit],
    stats: &RunStats,
    elapsed: Duration,
) -> io::Result<()> {
    for f in flows {
        writeln!(out, "{}", flow_json(f))?;
    }
    for l in limits {
        writeln!(out, "{}", idle_limit_json(l))?;
    }
    writeln!(out, "{}", stats_json(stats, elapsed))
}

fn write_human(
    out: &mut impl Write,
    args: &Args,
    packets: &[PacketEvent],
    n_packets: usize,
    flows: &[FlowSummary],
    stats: &RunStats,
    elapsed: Duration,
) -> io::Result<()> {
    if n_packets > 0 && (args.packets || n_packets <= AUTO_PACKET_ROWS) {
        write_packets(out, packets)?;
    } else if n_packets > 0 {
        writeln!(
            out,
            "{n_packets} classified packets (list them with --packets or --json)"
        )?;
    }
    if flows.is_empty() {
        writeln!(out, "No keep-alive or zero-window probes found.")?;
    } else {
        writeln!(out, "{}", flows_table(flows))?;
        for line in ending_lines(flows) {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(out, "{}", stats_line(stats, elapsed))
}

/// The capture file, or standard input for `-`.
/// Whether two paths name the same existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn open(file: &std::path::Path) -> anyhow::Result<FileSource> {
    if file.as_os_str() != "-" {
        return FileSource::open(file).map_err(capture_failure);
    }
    let stdin = io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        return Err(Failure::usage(
            "FILE '-' reads a capture from standard input, but it is a terminal: \
             pipe one in (tcpdump -U -w - ... | kaprobe read -)",
        )
        .into());
    }
    FileSource::from_reader("standard input", stdin).map_err(capture_failure)
}
