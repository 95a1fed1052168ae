//! Run a [`PacketSource`] through parsing, a filter and the [`Tracker`].

use std::collections::HashMap;
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
    analyze_with(source, filter, None, cfg, on_event)
}

/// As [`analyze`], keeping only the packets that also pass the expression `expr`.
///
/// # Errors
/// As [`analyze`].
pub fn analyze_with<S: PacketSource + ?Sized>(
    source: &mut S,
    filter: Filter,
    expr: Option<Expression>,
    cfg: TrackerConfig,
    mut on_event: impl FnMut(Event),
) -> Result<RunStats, CaptureError> {
    let mut a = Analyzer::new(filter, cfg);
    a.expr = expr;
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
    Ok(stats)
}
