//! Run a [`PacketSource`] through parsing, a filter and the [`Tracker`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::error::CaptureError;
use crate::filter::Expression;
use crate::flow::track::{Event, Tracker, TrackerConfig, TrackerStats};
use crate::io::source::{Frame, Next, PacketSource};
use crate::wire::packet::{ip_start, parse_frame, LinkType, Skip, TcpRepr};

/// Which packets to analyse: both conditions must hold when both are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Either endpoint's port.
    pub port: Option<u16>,
    /// Either endpoint's address.
    pub host: Option<IpAddr>,
}

impl Filter {
    /// True when `p` passes.
    #[must_use]
    pub fn matches(&self, p: &TcpRepr) -> bool {
        self.port
            .is_none_or(|port| p.src_port == port || p.dst_port == port)
            && self
                .host
                .is_none_or(|h| canon(p.src) == canon(h) || canon(p.dst) == canon(h))
    }
}

fn canon(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Counts over a whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Frames read from the source.
    pub frames: u64,
    /// Frames that were not TCP or could not be parsed, by reason.
    pub skipped: HashMap<String, u64>,
    /// Frames of a link type kaprobe does not read.
    pub unsupported_link: u64,
    /// TCP packets left out by the filter.
    pub filtered_out: u64,
    /// Frames the source dropped (kernel drops, a truncated last record).
    pub dropped: u64,
    pub tracker: TrackerStats,
    /// Timestamp of the first and last frame.
    pub first_ts: Option<Duration>,
    pub last_ts: Option<Duration>,
}

impl RunStats {
    /// Total frames skipped for any reason.
    #[must_use]
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum::<u64>() + self.unsupported_link
    }
}

/// Feeds frames to a tracker and keeps the counts.
pub struct Analyzer {
    pub tracker: Tracker,
    pub filter: Filter,
    /// A filter expression checked after `filter` (see [`crate::filter`]).
    pub expr: Option<Expression>,
    /// When set, the flows (by [`FlowKey`]) with at least one packet that passed.
    pub matched: Option<HashSet<FlowKey>>,
    pub stats: RunStats,
    skips: HashMap<Skip, u64>,
}

impl Analyzer {
    #[must_use]
    pub fn new(filter: Filter, cfg: TrackerConfig) -> Self {
        Self {
            tracker: Tracker::new(cfg),
            filter,
            expr: None,
            matched: None,
            stats: RunStats::default(),
            skips: HashMap::new(),
        }
    }

    /// Process one frame (numbered 1, 2, ... by the caller).
    #[inline]
    pub fn frame(&mut self, frame: &Frame<'_>, number: u64, out: &mut Vec<Event>) {
        self.stats.frames += 1;
        self.stats.first_ts.get_or_insert(frame.ts);
        self.stats.last_ts = Some(frame.ts);
        let Some(link) = frame.link else {
            self.stats.unsupported_link += 1;
            return;
        };
        match parse_frame(link, frame.data) {
            Ok(p) => {
                if self.filter.matches(&p) && self.expr_matches(link, frame) {
                    if let Some(m) = &mut self.matched {
                        m.insert(FlowKey::of(&p));
                    }
                    self.tracker.process(number, frame.ts, &p, out);
                } else {
                    self.stats.filtered_out += 1;
                }
            }
            Err(skip) => *self.skips.entry(skip).or_insert(0) += 1,
        }
    }

    /// Whether the frame passes the filter expression (true without one).
    #[inline]
    fn expr_matches(&self, link: LinkType, frame: &Frame<'_>) -> bool {
        let Some(e) = &self.expr else { return true };
        ip_start(link, frame.data)
            .and_then(|at| frame.data.get(at..))
            .is_some_and(|ip| e.matches_ip(ip, frame.orig_len))
    }

    /// Flush the tracker and fill in the final counts.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> RunStats {
        self.tracker.finish(out);
        self.sync_stats();
        self.stats.clone()
    }

    /// Copy the tracker counters and skip reasons into [`Analyzer::stats`].
    pub fn sync_stats(&mut self) {
        self.stats.tracker = self.tracker.stats().clone();
        self.stats.skipped = self
            .skips
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
    }
}

/// Analyse a whole source, calling `on_event` for each event as it is found (packet events
/// in frame order as far as they are known, flow summaries when flows end and at the end).
///
/// # Errors
/// The source's errors.
pub fn analyze<S: PacketSource + ?Sized>(
    source: &mut S,
    filter: Filter,
    cfg: TrackerConfig,
    on_event: impl FnMut(Event),
) -> Result<RunStats, CaptureError> {
    analyze_with(source, filter, None, cfg, None, on_event)
}

/// As [`analyze`], keeping only the packets that also pass the expression `expr`.
/// When `matched` is given, it receives the flows with at least one packet that passed.
///
/// # Errors
/// As [`analyze`].
pub fn analyze_with<S: PacketSource + ?Sized>(
    source: &mut S,
    filter: Filter,
    expr: Option<Expression>,
    cfg: TrackerConfig,
    matched: Option<&mut HashSet<FlowKey>>,
    mut on_event: impl FnMut(Event),
) -> Result<RunStats, CaptureError> {
    let mut a = Analyzer::new(filter, cfg);
    a.expr = expr;
    if matched.is_some() {
        a.matched = Some(HashSet::new());
    }
    let mut out = Vec::new();
    let mut number = 0u64;
    loop {
        match source.next_frame()? {
            Next::Frame(f) => {
                number += 1;
                a.frame(&f, number, &mut out);
                for e in out.drain(..) {
                    on_event(e);
                }
            }
            Next::Idle => {}
            Next::End => break,
        }
    }
    let mut stats = a.finish(&mut out);
    for e in out.drain(..) {
        on_event(e);
    }
    stats.dropped = source.dropped();
    if let (Some(out), Some(found)) = (matched, a.matched.take()) {
        *out = found;
    }
    Ok(stats)
}

/// A TCP flow's two endpoints, in a fixed order (the same key for both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub a: (IpAddr, u16),
    pub b: (IpAddr, u16),
}

impl FlowKey {
    #[must_use]
    pub fn of(p: &TcpRepr) -> FlowKey {
        let (x, y) = ((canon(p.src), p.src_port), (canon(p.dst), p.dst_port));
        if x <= y {
            FlowKey { a: x, b: y }
        } else {
            FlowKey { a: y, b: x }
        }
    }
}

/// Copy the frames of `source` that belong to `flows` into `out` (a new pcap file of the
/// first such frame's link type, cut to `snaplen`). Returns the frames written and the TCP
/// frames of those flows left out because their link type differs from the first's (a
/// pcapng file may mix interfaces).
///
/// # Errors
/// Source read errors and [`CaptureError::Write`].
pub fn write_flows<S: PacketSource + ?Sized>(
    source: &mut S,
    flows: &HashSet<FlowKey>,
    out: &std::path::Path,
    snaplen: u32,
) -> Result<(u64, u64), CaptureError> {
    let mut file: Option<(LinkType, crate::io::writer::PcapFile)> = None;
    let (mut written, mut other_link) = (0u64, 0u64);
    loop {
        match source.next_frame()? {
            Next::Frame(f) => {
                let Some(link) = f.link else { continue };
                let Ok(p) = parse_frame(link, f.data) else {
                    continue;
                };
                if !flows.contains(&FlowKey::of(&p)) {
                    continue;
                }
                if file.is_none() {
                    let w = crate::io::writer::PcapFile::create_with_snaplen(out, link, snaplen)?;
                    file = Some((link, w));
                }
                if let Some((first, w)) = &mut file {
                    if *first == link {
                        w.write(&f)?;
                        written += 1;
                    } else {
                        other_link += 1;
                    }
                }
            }
            Next::Idle => {}
            Next::End => break,
        }
    }
    match &mut file {
        Some((_, w)) => w.flush()?,
        // No flow matched: still leave a valid, empty file.
        None => {
            crate::io::writer::PcapFile::create(out, LinkType::Ethernet)?.flush()?;
        }
    }
    Ok((written, other_link))
}
