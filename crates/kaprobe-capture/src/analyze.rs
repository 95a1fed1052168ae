//! Run a [`PacketSource`] through parsing, a filter and the [`Tracker`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::error::CaptureError;
use crate::filter::Expression;
use crate::flow::table::{hash_key, FlowKey};
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

/// A parsed packet waiting in [`Analyzer::frame_ahead`]'s queue while its flow's state is
/// loaded.
struct Held {
    number: u64,
    ts: Duration,
    p: TcpRepr,
    key: FlowKey,
    hash: u64,
}

/// Packets [`Analyzer::frame_ahead`] holds before processing the oldest: its index entry is
/// requested when a packet arrives, its flow record [`SLOT_LAG`] packets later, and it is
/// processed [`AHEAD`] packets later, by when both are in the cache.
const AHEAD: usize = 16;
const AHEAD_MASK: usize = AHEAD - 1;
const _: () = assert!(AHEAD.is_power_of_two() && SLOT_LAG < AHEAD);
const SLOT_LAG: usize = 8;
/// Below this many flows their state stays in the cache and packets are processed at once:
/// holding them back would only cost the copies.
const PREFETCH_FROM_FLOWS: usize = 8192;

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
    /// Packets held by [`Analyzer::frame_ahead`]: a ring of [`AHEAD`] entries (grown once)
    /// holding those numbered `held_tail..held_head`, written and processed in place.
    held: Vec<Held>,
    held_head: usize,
    held_tail: usize,
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
            held: Vec::with_capacity(AHEAD),
            held_head: 0,
            held_tail: 0,
        }
    }

    /// Count `frame`, parse it and apply the filters: the packet, its flow key and the key's
    /// hash when it is to be tracked (the flow noted in `matched`), else `None` (counted as
    /// skipped or filtered out).
    #[inline]
    fn admit(&mut self, frame: &Frame<'_>) -> Option<(TcpRepr, FlowKey, u64)> {
        self.stats.frames += 1;
        self.stats.first_ts.get_or_insert(frame.ts);
        self.stats.last_ts = Some(frame.ts);
        let Some(link) = frame.link else {
            self.stats.unsupported_link += 1;
            return None;
        };
        match parse_frame(link, frame.data) {
            Ok(p) => {
                if !(self.filter.matches(&p) && self.expr_matches(link, frame)) {
                    self.stats.filtered_out += 1;
                    return None;
                }
                let key = Tracker::key_of(&p);
                if let Some(m) = &mut self.matched {
                    m.insert(key);
                }
                let hash = hash_key(&key);
                Some((p, key, hash))
            }
            Err(skip) => {
                *self.skips.entry(skip).or_insert(0) += 1;
                None
            }
        }
    }

    /// Like [`Analyzer::frame`], but the packet is processed a few packets later (at once
    /// by [`Analyzer::flush`]), after its flow's state was requested from memory: with many
    /// flows that hides most of a lookup's cache misses behind the packets before it.
    /// Events come out in the same order as with [`Analyzer::frame`], only later.
    #[inline]
    pub fn frame_ahead(&mut self, frame: &Frame<'_>, number: u64, out: &mut Vec<Event>) {
        let Some((p, key, hash)) = self.admit(frame) else {
            return;
        };
        if self.held_head == self.held_tail && self.tracker.flows_tracked() < PREFETCH_FROM_FLOWS {
            self.tracker
                .process_keyed(number, frame.ts, &p, key, hash, out);
            return;
        }
        self.tracker.prefetch(hash, 0);
        if self.held_head - self.held_tail == AHEAD {
            self.process_oldest(out);
        }
        let h = Held {
            number,
            ts: frame.ts,
            p,
            key,
            hash,
        };
        // The ring fills once (head == len until then), then entries are overwritten.
        if self.held.len() < AHEAD {
            self.held.push(h);
        } else {
            self.held[self.held_head & AHEAD_MASK] = h;
        }
        self.held_head += 1;
        if self.held_head - self.held_tail > SLOT_LAG {
            let lagging = (self.held_head - 1 - SLOT_LAG) & AHEAD_MASK;
            if let Some(h) = self.held.get(lagging) {
                self.tracker.prefetch(h.hash, 1);
            }
        }
        if self.tracker.flows_tracked() < PREFETCH_FROM_FLOWS / 2 {
            // Back to a small table (flows ended): stop holding packets.
            self.flush(out);
        }
    }

    /// Process the oldest held packet, in place.
    #[inline]
    fn process_oldest(&mut self, out: &mut Vec<Event>) {
        if let Some(h) = self.held.get(self.held_tail & AHEAD_MASK) {
            self.tracker
                .process_keyed(h.number, h.ts, &h.p, h.key, h.hash, out);
        }
        self.held_tail += 1;
    }

    /// Process every packet [`Analyzer::frame_ahead`] still holds.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        while self.held_tail < self.held_head {
            self.process_oldest(out);
        }
    }

    /// Process one frame (numbered 1, 2, ... by the caller).
    #[inline]
    pub fn frame(&mut self, frame: &Frame<'_>, number: u64, out: &mut Vec<Event>) {
        if let Some((p, key, hash)) = self.admit(frame) {
            self.tracker
                .process_keyed(number, frame.ts, &p, key, hash, out);
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
        self.flush(out);
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
                a.frame_ahead(&f, number, &mut out);
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
                if !flows.contains(&Tracker::key_of(&p)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Conv;
    use crate::wire::packet::LinkType;
    use std::net::SocketAddr;

    /// Events and counts of a run over `frames`, packet by packet or held for prefetching.
    fn run(frames: &[(Duration, Vec<u8>)], ahead: bool) -> (Vec<Event>, RunStats) {
        let mut a = Analyzer::new(Filter::default(), TrackerConfig::default());
        let mut out = Vec::new();
        for (i, (ts, ip)) in frames.iter().enumerate() {
            let f = Frame {
                ts: *ts,
                data: ip,
                orig_len: u32::try_from(ip.len()).unwrap_or(u32::MAX),
                link: Some(LinkType::RawIp),
            };
            if ahead {
                a.frame_ahead(&f, i as u64 + 1, &mut out);
            } else {
                a.frame(&f, i as u64 + 1, &mut out);
            }
        }
        let stats = a.finish(&mut out);
        (out, stats)
    }

    #[test]
    fn holding_packets_for_prefetch_changes_nothing_but_when() {
        // 12,000 flows (past the prefetch threshold) interleaved in time, each with data, a
        // keep-alive and its ACK, a reuse after idle, some closed and some reset.
        let mut frames = Vec::new();
        for n in 0..12_000u32 {
            let client = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40_000));
            let server = SocketAddr::from(([10, 2, 0, 1], 80));
            let mut c = Conv::new(client, server, [n, n * 7], Duration::from_secs(100));
            c.handshake(None)
                .data(0, 10)
                .ack(1)
                .wait(2.0)
                .keepalive(0, false, None)
                .keepalive_ack(1, None)
                .wait(0.1)
                .data(0, 10)
                .data(1, 20);
            match n % 3 {
                0 => {
                    c.fin(0).fin(1).ack(0);
                }
                1 => {
                    c.rst(1);
                }
                _ => {}
            }
            // Spread the flows over time so their packets interleave.
            let shift = Duration::from_micros(u64::from(n) * 50);
            frames.extend(c.frames.iter().map(|f| (f.ts + shift, f.ip.clone())));
        }
        frames.sort_by_key(|f| f.0);
        let (now, now_stats) = run(&frames, false);
        let (held, held_stats) = run(&frames, true);
        assert!(now.len() >= 36_000, "{}", now.len());
        // Enough flows at once that packets were held.
        assert!(held_stats.tracker.peak_flows >= PREFETCH_FROM_FLOWS as u64);
        assert_eq!(now_stats.tracker, held_stats.tracker);
        assert_eq!(now, held);
    }
}
