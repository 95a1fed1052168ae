//! The flow tracker and probe classifier. Time is injected (every call carries the packet's
//! timestamp), so a file replays identically and tests need no clock.
//!
//! Per direction it keeps the highest sequence number sent, the highest ACK sent and the
//! last advertised window. A segment from A is a keep-alive probe when it is a pure ACK
//! (no SYN/FIN/RST) with 0 or 1 byte whose sequence number is one below what B has already
//! acknowledged (`seq == B.ack - 1`): the byte before A's `snd_una`, which only a probe
//! re-sends. If B last advertised a zero window it is a zero-window probe instead, as is a
//! 1-byte segment at A's `snd_una` (its `snd_nxt`, the window being shut) while B's window
//! is zero. B's pure ACK repeating
//! `probe.seq + 1` is the keep-alive ACK. When a capture starts mid-idle and B's ACK number
//! is not yet known, a zero-length segment is held as a candidate and confirmed by B's reply
//! (`ack == seq + 1`) or by A's RST at `seq + 1`. A segment that is a probe by its own
//! sequence number is never taken for an answer: when both ends probe at the same tick, each
//! probe acknowledges the other's (`ack == peer probe seq + 1`) before the real ACKs come.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::flow::ending::{EndTrack, Ending, IdleLimit, IdleLimits, Seg};
use crate::flow::infer::{infer, median, Inference};
use crate::flow::table::{hash_key, Ep, FlowKey, FlowTable};
use crate::io::ebpf::{kernel_key, Fingerprint, KernelFlows, KernelKey, Mirror};
use crate::wire::packet::{TcpFlags, TcpRepr};
use crate::wire::seq::SeqNum;

/// What a classified packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A keep-alive probe (pure ACK or 1 byte at `snd_una - 1`).
    Keepalive,
    /// The peer's ACK answering a keep-alive probe.
    KeepaliveAck,
    /// A probe sent because the peer advertised a zero receive window.
    ZeroWindowProbe,
}

impl Kind {
    /// The snake_case name used in JSON and tables.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keepalive => "keepalive",
            Self::KeepaliveAck => "keepalive_ack",
            Self::ZeroWindowProbe => "zero_window_probe",
        }
    }
}

/// One classified packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacketEvent {
    /// 1-based frame number in the source (as Wireshark numbers frames).
    pub frame: u64,
    /// Capture time since the Unix epoch.
    pub ts: Duration,
    pub kind: Kind,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes.
    pub len: u32,
    /// For probes: this is the sender's n-th probe of its kind in the flow (1-based).
    pub probe_number: u32,
    /// For keep-alives: unanswered keep-alives sent just before this one.
    pub unanswered_before: u32,
    /// For keep-alives: time since the sender's previous keep-alive.
    pub since_prev_probe: Option<Duration>,
    /// For probes: time since the last packet in the flow that was not a probe or its ACK.
    pub idle: Option<Duration>,
    /// For keep-alive ACKs: time since the probe.
    pub rtt: Option<Duration>,
    /// True when a later packet confirmed this one (a capture that started mid-idle).
    pub confirmed_later: bool,
}

/// How a flow ended, or where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Open, last probe answered (or none pending).
    Alive,
    /// Open, the latest probes are unanswered.
    Probing,
    /// The prober reset the connection after unanswered probes: the peer was dead.
    PeerDead,
    /// Closed with FIN in both directions.
    Closed,
    /// Reset, not after unanswered probes.
    Reset,
    /// No packet for the tracker's idle timeout.
    Expired,
    /// Evicted to make room in a full flow table.
    Evicted,
}

impl Outcome {
    /// The snake_case name used in JSON and tables.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Probing => "probing",
            Self::PeerDead => "peer_dead",
            Self::Closed => "closed",
            Self::Reset => "reset",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
        }
    }
}

/// Which side of the connection sends the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    Both,
    /// The handshake was not seen, so client and server are unknown.
    Unknown,
}

impl Role {
    /// The snake_case name used in JSON and tables.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Both => "both",
            Self::Unknown => "unknown",
        }
    }
}

/// A flow's keep-alive story.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowSummary {
    /// The side that sent the SYN (or the first sender seen when the handshake was missed).
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// True when the SYN was seen, so `client`/`server` are certain.
    pub roles_known: bool,
    /// The endpoint sending the (most) probes.
    pub prober: Option<SocketAddr>,
    pub prober_role: Role,
    pub first_seen: Duration,
    pub last_seen: Duration,
    pub packets: u64,
    pub keepalives: u32,
    pub answered: u32,
    pub unanswered: u32,
    pub zero_window_probes: u32,
    pub first_probe: Option<Duration>,
    pub last_probe: Option<Duration>,
    /// Idle time between the last other packet and the first keep-alive.
    pub idle_before_first_probe: Option<Duration>,
    /// Median gap between consecutive keep-alives of the prober, seconds.
    pub probe_interval: Option<f64>,
    /// Unanswered keep-alives at the end (or before the RST).
    pub unanswered_at_end: u32,
    pub outcome: Outcome,
    pub inference: Inference,
    /// How the connection ended, who ended it, and its reuses after idle.
    pub ending: Ending,
}

/// Something the tracker found.
///
/// Events and their parts derive `Serialize` with serde's own shapes (enum names in
/// snake_case, durations as `{secs, nanos}`); `kaprobe`'s documented `--json` output is
/// written by the binary, field by field, and does not depend on these derives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Packet(PacketEvent),
    Flow(Box<FlowSummary>),
    /// At the end: reuses towards one server both worked and failed, bracketing its idle
    /// limit (or the path's).
    IdleLimit(IdleLimit),
}

/// The activity order (eviction when full, expiry after `idle_timeout`) is kept to this
/// many seconds.
const PROMOTE_SECS: u64 = 8;

/// Packets a flow has had before the kernel is asked to withhold its routine segments.
const MIN_PACKETS_TO_WITHHOLD: u64 = 8;

/// Servers whose reuses are bracketed at most (the rest are not counted).
const MAX_LIMIT_SERVERS: usize = 4096;

/// Tracker limits.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Most flows tracked at once; the least recently active is evicted beyond it.
    pub max_flows: usize,
    /// Flows with no packet for this long are dropped (longer than the 7875s it takes
    /// Linux defaults to give up on a dead peer).
    pub idle_timeout: Duration,
    /// How long a closed flow is kept to absorb its last ACKs.
    pub closed_linger: Duration,
    /// Emit summaries for flows without any probe too.
    pub report_all_flows: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_flows: 250_000,
            idle_timeout: Duration::from_secs(3 * 3600),
            closed_linger: Duration::from_secs(1),
            report_all_flows: false,
        }
    }
}

/// Counters over everything processed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub tcp_packets: u64,
    pub flows: u64,
    pub evictions: u64,
    pub expired: u64,
    pub keepalives: u64,
    pub keepalive_acks: u64,
    pub zero_window_probes: u64,
    pub peak_flows: u64,
    /// Of `tcp_packets`, those the kernel withheld from user space and counted in its flow
    /// records (live capture with per-flow state in the kernel, see [`crate::io::ebpf`]).
    pub withheld: u64,
}

/// A probe waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The probe's sequence number (its answer acknowledges `seq + 1`).
    seq: SeqNum,
    /// When it was sent, for the ACK's round-trip time.
    ts: Duration,
    kind: Kind,
}

/// A zero-length segment that may be a probe, seen before the peer's ACK number was known.
#[derive(Debug, Clone, Copy)]
struct Cand {
    frame: u64,
    ts: Duration,
    ack: SeqNum,
}

/// The candidates one direction holds: all at the same sequence number.
#[derive(Debug, Clone)]
struct Cands {
    seq: SeqNum,
    list: Vec<Cand>,
}

/// Most candidates held per direction.
const MAX_CANDS: usize = 64;
/// Most interval samples kept per side (for the median and the inference).
const MAX_SAMPLES: usize = 256;

/// What a pure ACK of 0 or 1 byte is, by [`Flow::classify_probe`].
enum Sighting {
    /// A probe of this kind, judged by the peer's ACK number (and window).
    Probe(Kind),
    /// Perhaps a probe: the peer's ACK number is not known yet.
    Candidate,
    /// Neither.
    Nothing,
}

/// One direction's sequence state, as the sender of that direction sent it: what every
/// packet reads (24 bytes; the probe state is in [`ProbeDir`], read only when `watching`).
#[derive(Debug, Clone, Default)]
#[repr(C)]
struct Dir {
    /// Highest ACK number this side sent: the peer's `snd_una` as this side sees it.
    last_ack: Option<SeqNum>,
    /// One past the highest sequence number this side sent (its `snd_nxt`).
    next_seq: Option<SeqNum>,
    /// The last window this side advertised (raw, unscaled); zero marks zero-window probes.
    window: Option<u16>,
    /// This side has a probe pending or candidates held (`ProbeDir`): the peer's ACKs are
    /// to be checked against them.
    watching: bool,
}

/// Where a flow stands with the kernel's record of it (live capture with
/// [`KernelFlows`]).
#[derive(Debug, Clone, Copy, Default)]
struct KernelLink {
    /// The flow's first packet: the kernel's record made at the same packet has it too.
    first: Fingerprint,
    /// Packets of the flow processed here (all passed by the kernel): the record counts
    /// the same ones.
    count: u32,
    /// A request to withhold is outstanding.
    outstanding: bool,
    /// The kernel took it (its arming event): the count of passed packets it was armed at.
    armed_at: Option<u32>,
    /// Passed packets processed since the request, while it was not taken.
    since_request: u32,
    /// Withheld packets already taken in (the record's count is cumulative).
    taken: u64,
    /// Requests in a row that came to nothing (each next one waits twice as many passed
    /// packets: a flow whose packets are seldom routine is not asked about after every one).
    misses: u8,
    /// Never ask: a new connection reused the 4-tuple, and the kernel's record mirrors the
    /// old one.
    off: bool,
}

/// One direction's probe state and handshake, read at probes, their answers and SYNs.
#[derive(Debug, Clone, Default)]
struct ProbeDir {
    /// This side's latest probe, until the peer answers it or this side sends data.
    pending: Option<Pending>,
    /// This side's probe candidates (capture started mid-idle), until confirmed or cleared.
    cands: Option<Box<Cands>>,
    /// This side's initial sequence number, from its SYN: a new SYN with another ISN is a
    /// new connection on the same 4-tuple.
    isn: Option<SeqNum>,
}

/// One side's probes, kept only once a flow has any (see `Flow::sides`).
#[derive(Debug, Clone, Default)]
struct Side {
    /// Keep-alive probes this side sent.
    keepalives: u32,
    /// Zero-window probes this side sent.
    zwp: u32,
    /// Of its keep-alives, how many the peer answered.
    answered: u32,
    /// Keep-alives sent since the last answer: the unanswered run.
    run: u32,
    /// When the first keep-alive was sent, and the idle time before it.
    first_probe: Option<Duration>,
    idle_first: Option<Duration>,
    /// When the latest keep-alive was sent.
    last_probe: Option<Duration>,
    /// When the latest keep-alive was answered (cleared by the next probe).
    last_answer: Option<Duration>,
    /// True when the latest keep-alive has been answered.
    last_answered: bool,
    /// Seconds between consecutive keep-alives: the probe interval's samples.
    gaps: Vec<f64>,
    /// Seconds between a keep-alive left unanswered and the next one (the retry interval).
    unanswered_gaps: Vec<f64>,
    /// Seconds from a keep-alive's answer to the next keep-alive (the idle time again).
    answered_gaps: Vec<f64>,
    /// The unanswered run when this side reset the connection: the probe count it gave
    /// up after.
    gave_up_after: Option<u32>,
}

fn push_bounded(v: &mut Vec<f64>, x: f64) {
    if v.len() < MAX_SAMPLES {
        v.push(x);
    }
}

/// One connection's state. `repr(C)` keeps the fields every packet touches together at the
/// front (right after the table's key): with the table's 64-byte aligned slots a packet
/// reads three cache lines of key and flow state (see the `hot_fields_*` test), not the
/// whole record: with thousands of flows those misses are most of watch's time.
///
/// Sides are indexed 0 and 1: side 0 is the first sender seen, side 1 its peer;
/// `dirs[i]` and `sides[i]` describe what side `i` sent.
#[derive(Debug, Clone)]
#[repr(C)]
struct Flow {
    /// Packets seen in the flow.
    packets: u64,
    /// The latest packet's timestamp (for idle expiry and activity order).
    last_seen: Duration,
    /// Sequence state per direction.
    dirs: [Dir; 2],
    /// The latest packet that was neither a probe nor a probe's answer: idle is measured
    /// from it.
    last_activity: Option<Duration>,
    /// Side 0's endpoint is the flow key's lower one: a packet from it is from side 0.
    side0_is_lo: bool,
    /// A FIN seen from each side.
    fin: [bool; 2],
    /// How and when the flow ended (RST or FIN both ways), once it has.
    ended: Option<(Outcome, Duration)>,
    /// FINs, RSTs, TTLs and reuses after idle: how the connection ends (its per-packet
    /// fields first).
    end: EndTrack,
    // Fields below are read at handshakes, probes and summaries, not for every packet.
    /// The client's side index, once a SYN or SYN-ACK has named it.
    client: Option<usize>,
    /// Probe state and initial sequence number per direction.
    probe: [ProbeDir; 2],
    /// True once the flow's summary was emitted (each flow is summarised once).
    reported: bool,
    /// The first packet's timestamp.
    first_seen: Duration,
    /// Both endpoints as socket addresses, by side index.
    eps: [SocketAddr; 2],
    /// Per-side probe counts and timings: allocated at the first probe, so flows without
    /// probes stay small.
    sides: Option<Box<[Side; 2]>>,
    /// The kernel's record of this flow, when it keeps one.
    kernel: KernelLink,
}

/// Bytes at the front of a [`Flow`] that every packet reads: the part worth prefetching.
const FLOW_HOT_BYTES: usize = std::mem::offset_of!(Flow, end) + EndTrack::HOT_BYTES;

fn sub(a: Duration, b: Duration) -> Duration {
    a.saturating_sub(b)
}

/// What a free table slot holds (never read as a flow).
impl Default for Flow {
    fn default() -> Self {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            eps: [none, none],
            side0_is_lo: true,
            client: None,
            dirs: [Dir::default(), Dir::default()],
            probe: [ProbeDir::default(), ProbeDir::default()],
            first_seen: Duration::ZERO,
            last_seen: Duration::ZERO,
            last_activity: None,
            packets: 0,
            fin: [false; 2],
            ended: None,
            reported: false,
            sides: None,
            end: EndTrack::default(),
            kernel: KernelLink::default(),
        }
    }
}

impl Flow {
    /// A flow whose first packet is `p`; `src_is_lo` says whether its sender is the lower
    /// endpoint of the flow key.
    fn new(p: &TcpRepr, ts: Duration, src_is_lo: bool) -> Self {
        Self {
            eps: [
                SocketAddr::new(p.src, p.src_port),
                SocketAddr::new(p.dst, p.dst_port),
            ],
            side0_is_lo: src_is_lo,
            first_seen: ts,
            last_seen: ts,
            ..Self::default()
        }
    }

    /// The flow's key in the kernel's maps.
    fn kernel_key(&self) -> KernelKey {
        let (lo, hi) = if self.side0_is_lo {
            (self.eps[0], self.eps[1])
        } else {
            (self.eps[1], self.eps[0])
        };
        kernel_key((lo.ip(), lo.port()), (hi.ip(), hi.port()))
    }

    /// This flow's side index of the kernel key's side `k` (0: the lower endpoint).
    fn side_of_key(&self, k: usize) -> usize {
        usize::from((k == 0) != self.side0_is_lo)
    }

    /// Count `total` withheld packets (cumulative), the latest at `last`: returns how many
    /// were new.
    fn add_withheld(&mut self, total: u64, last: Duration, stats: &mut TrackerStats) -> u64 {
        let n = total.saturating_sub(self.kernel.taken);
        if n == 0 {
            return 0;
        }
        self.kernel.taken = total;
        self.packets += n;
        stats.tcp_packets += n;
        stats.withheld += n;
        self.last_seen = self.last_seen.max(last);
        self.last_activity = Some(self.last_activity.map_or(last, |t| t.max(last)));
        n
    }

    /// Take the state the withheld segments left: each side's sequence end, ACK, window
    /// and TTL, the last payload's time.
    fn apply_mirror(&mut self, m: &Mirror) {
        let mut ttl = [None; 2];
        for key_side in 0..2 {
            let s = self.side_of_key(key_side);
            let d = &mut self.dirs[s];
            if let Some(n) = m.next_seq[key_side] {
                d.next_seq = Some(SeqNum(n));
            }
            if let Some(a) = m.last_ack[key_side] {
                d.last_ack = Some(SeqNum(a));
            }
            if let Some(w) = m.window[key_side] {
                d.window = Some(w);
            }
            ttl[s] = m.ttl[key_side];
        }
        self.end.fold(ttl, m.last_payload);
    }

    /// Before processing a packet the kernel passed (already counted in `kernel.count`):
    /// when it is the one after the count the record was armed at, it ended a withholding:
    /// take in what was withheld first, as the kernel froze it.
    fn before_passed(&mut self, k: &KernelFlows, stats: &mut TrackerStats) {
        let link = &mut self.kernel;
        match link.armed_at {
            Some(at) if link.outstanding && link.count > at => {}
            _ => return,
        }
        link.outstanding = false;
        link.armed_at = None;
        let Some(r) = k.read(&self.kernel_key()) else {
            return;
        };
        if r.first != self.kernel.first {
            // Another lifetime's record: it never takes this flow's requests.
            self.kernel.off = true;
            return;
        }
        let (total, last, m) = if r.armed {
            (r.skipped, r.last, r.live)
        } else {
            (r.fold_skipped, r.fold_last, r.fold)
        };
        if self.add_withheld(total, last, stats) > 0 {
            self.apply_mirror(&m);
            self.kernel.misses = 0;
        }
    }

    /// Take in what the kernel is withholding now, when every packet it passed has been
    /// processed (the record is then exact): for summaries, expiry and eviction. Returns
    /// the packets taken in.
    fn take_withheld(&mut self, k: &KernelFlows, stats: &mut TrackerStats) -> u64 {
        let link = &self.kernel;
        if !(link.outstanding && link.armed_at.is_some_and(|at| link.count >= at)) {
            return 0;
        }
        let Some(r) = k.read(&self.kernel_key()) else {
            return 0;
        };
        if !(r.first == self.kernel.first && r.armed) {
            return 0;
        }
        let n = self.add_withheld(r.skipped, r.last, stats);
        if n > 0 {
            self.apply_mirror(&r.live);
        }
        n
    }

    /// After processing `p` (a packet the kernel passed), ask the kernel to withhold this
    /// flow's routine segments, when nothing is under way that such a segment could change:
    /// no probe pending or candidate held on either side, no reuse awaiting its result, not
    /// ended.
    fn request_withholding(&mut self, k: &KernelFlows) {
        if self.kernel.off || self.kernel.armed_at.is_some() {
            return;
        }
        let quiet = self.ended.is_none()
            && !self.reported
            && !self.dirs[0].watching
            && !self.dirs[1].watching
            && self.end.settled();
        // A short flow (a handshake, one exchange, a close) would pay for the request and
        // the reads with nothing withheld.
        if !quiet || self.packets < MIN_PACKETS_TO_WITHHOLD {
            return;
        }
        let link = &mut self.kernel;
        if link.outstanding {
            // Not taken yet: the packets still in the ring when it was made, or a packet
            // that is not routine passed since. Ask again (with the newer count) after
            // twice as many passed packets as the last time.
            link.since_request += 1;
            if link.since_request < 8 << link.misses.min(7) {
                return;
            }
            link.misses = link.misses.saturating_add(1);
        }
        k.arm(&self.kernel_key(), &self.kernel.first, self.kernel.count);
        self.kernel.outstanding = true;
        self.kernel.since_request = 0;
    }

    fn has_probes(&self) -> bool {
        self.sides
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x.keepalives + x.zwp > 0))
    }

    fn sides(&mut self) -> &mut [Side; 2] {
        self.sides.get_or_insert_with(Box::default)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_probe(
        &mut self,
        s: usize,
        frame: u64,
        ts: Duration,
        kind: Kind,
        seq: SeqNum,
        ack: SeqNum,
        len: u32,
        late: bool,
        stats: &mut TrackerStats,
        out: &mut Vec<Event>,
    ) {
        let idle = self.last_activity.map(|la| sub(ts, la));
        let (src, dst) = (self.eps[s], self.eps[1 - s]);
        let side = &mut self.sides()[s];
        let mut ev = PacketEvent {
            frame,
            ts,
            kind,
            src,
            dst,
            seq: seq.0,
            ack: ack.0,
            len,
            probe_number: 0,
            unanswered_before: 0,
            since_prev_probe: None,
            idle,
            rtt: None,
            confirmed_later: late,
        };
        if kind == Kind::ZeroWindowProbe {
            side.zwp += 1;
            ev.probe_number = side.zwp;
            stats.zero_window_probes += 1;
        } else {
            side.keepalives += 1;
            ev.probe_number = side.keepalives;
            stats.keepalives += 1;
            if side.first_probe.is_none() {
                side.first_probe = Some(ts);
                side.idle_first = idle;
            }
            if let Some(lp) = side.last_probe {
                let gap = sub(ts, lp);
                ev.since_prev_probe = Some(gap);
                push_bounded(&mut side.gaps, gap.as_secs_f64());
                if side.last_answered {
                    if let Some(la) = side.last_answer {
                        push_bounded(&mut side.answered_gaps, sub(ts, la).as_secs_f64());
                    }
                } else {
                    push_bounded(&mut side.unanswered_gaps, gap.as_secs_f64());
                }
            }
            ev.unanswered_before = side.run;
            side.run += 1;
            side.last_probe = Some(ts);
            side.last_answered = false;
            side.last_answer = None;
        }
        out.push(Event::Packet(ev));
    }

    fn record_answer(&mut self, s: usize, ts: Duration, kind: Kind) {
        let side = &mut self.sides()[s];
        if kind == Kind::Keepalive {
            side.answered += 1;
            side.run = 0;
            side.last_answered = true;
            side.last_answer = Some(ts);
        }
    }

    /// Account for one packet from side `s` (0 or 1). The steps, in order:
    /// 1. [`note_handshake`](Self::note_handshake): a SYN names the client and the ISN;
    /// 2. [`take_answer`](Self::take_answer): does it answer the other side's probe (or
    ///    confirm its held candidates)?
    /// 3. [`confirm_by_rst`](Self::confirm_by_rst): an RST right after this side's
    ///    candidates makes them probes;
    /// 4. [`classify_probe`](Self::classify_probe): is it itself a probe (recorded, then
    ///    awaited as pending) or a candidate (held)?
    /// 5. [`advance_direction`](Self::advance_direction): sequence, ACK and window state;
    /// 6. [`note_end`](Self::note_end): FIN/RST and the flow's outcome.
    fn on_packet(
        &mut self,
        s: usize,
        frame: u64,
        ts: Duration,
        p: &TcpRepr,
        stats: &mut TrackerStats,
        out: &mut Vec<Event>,
    ) {
        self.packets += 1;
        self.last_seen = ts;
        let f = p.flags;
        let pure = !f.any(TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST);
        self.note_handshake(s, p);
        // A packet that is a probe or a probe's answer does not count as activity.
        let mut probe_related = false;
        if f.ack() && !f.rst() && !self.is_own_probe(s, p, pure) {
            probe_related = self.take_answer(s, frame, ts, p, pure, stats, out);
        }
        if f.rst() {
            self.confirm_by_rst(s, p, stats, out);
        }
        let mut probe_kind = None;
        if pure && f.ack() && p.payload_len <= 1 && !probe_related {
            match self.classify_probe(s, p) {
                Sighting::Probe(kind) => probe_kind = Some(kind),
                Sighting::Candidate => {
                    probe_related = true;
                    self.hold_candidate(s, frame, ts, p);
                }
                Sighting::Nothing => {}
            }
        }
        if let Some(kind) = probe_kind {
            probe_related = true;
            self.record_probe(
                s,
                frame,
                ts,
                kind,
                p.seq,
                p.ack,
                p.payload_len,
                false,
                stats,
                out,
            );
            self.probe[s].pending = Some(Pending {
                seq: p.seq,
                ts,
                kind,
            });
            self.sync_watching(s);
        }
        self.advance_direction(s, ts, p, probe_kind.is_some(), probe_related);
        self.note_end(s, ts, p);
        self.end.on_segment(&Seg {
            side: s,
            ts,
            seq: p.seq,
            ack: f.ack().then_some(p.ack),
            payload: p.payload_len,
            fin: f.fin(),
            rst: f.rst(),
            ttl: p.ttl,
            probe: probe_kind.is_some(),
        });
    }

    /// How the flow ended (or nothing yet), from what [`EndTrack`] saw.
    fn ending(&self) -> Ending {
        let gave_up = self
            .sides
            .as_ref()
            .and_then(|x| (0..2).find(|&i| x[i].gave_up_after.is_some()));
        self.end.conclude(
            self.client,
            self.ended.is_some(),
            gave_up,
            self.eps[0].is_ipv6(),
        )
    }

    /// Keep `dirs[s].watching` true exactly while side `s` has a probe pending or
    /// candidates held.
    #[inline]
    fn sync_watching(&mut self, s: usize) {
        let p = &self.probe[s];
        self.dirs[s].watching = p.pending.is_some() || p.cands.is_some();
    }

    /// Step 1: a SYN names the client (the SYN's sender; for a SYN-ACK, its receiver unless
    /// already known) and records the sender's initial sequence number.
    #[inline]
    fn note_handshake(&mut self, s: usize, p: &TcpRepr) {
        let f = p.flags;
        if f.syn() {
            if f.ack() {
                self.client.get_or_insert(1 - s);
            } else {
                self.client = Some(s);
            }
            self.probe[s].isn = Some(p.seq);
        }
    }

    /// A segment at one below what the peer has acknowledged, with 0 or 1 byte, is a probe
    /// whatever it acknowledges: when both ends probe at the same tick, each probe carries
    /// `ack == peer's probe seq + 1` without answering it (the real ACKs follow).
    #[inline]
    fn is_own_probe(&self, s: usize, p: &TcpRepr, pure: bool) -> bool {
        pure && p.flags.ack()
            && p.payload_len <= 1
            && self.dirs[1 - s]
                .last_ack
                .is_some_and(|ra| p.seq.add(1) == ra)
    }

    /// Step 2: does this ACK from side `s` answer the other side's pending probe, or confirm
    /// its held candidates (`ack == candidate seq + 1`)? Records the answer (and the probes,
    /// for candidates) and emits the keep-alive ACK event for a pure ACK. True when the packet
    /// is a probe's answer, so not activity.
    #[allow(clippy::too_many_arguments)]
    fn take_answer(
        &mut self,
        s: usize,
        frame: u64,
        ts: Duration,
        p: &TcpRepr,
        pure: bool,
        stats: &mut TrackerStats,
        out: &mut Vec<Event>,
    ) -> bool {
        let d = 1 - s;
        let mut probe_related = false;
        if !self.dirs[d].watching {
            return false;
        }
        if let Some(pend) = self.probe[d].pending {
            let answered = match pend.kind {
                Kind::ZeroWindowProbe => p.ack.diff(pend.seq) >= 0,
                _ => p.ack.diff(pend.seq) >= 1,
            };
            if answered {
                self.probe[d].pending = None;
                self.sync_watching(d);
                self.record_answer(d, ts, pend.kind);
                if pure && p.payload_len == 0 {
                    probe_related = true;
                    if pend.kind == Kind::Keepalive && p.ack == pend.seq.add(1) {
                        stats.keepalive_acks += 1;
                        out.push(Event::Packet(self.ack_event(frame, ts, p, s, pend.ts)));
                    }
                }
            }
        } else if let Some(c) = self.probe[d].cands.take() {
            self.sync_watching(d);
            if p.ack == c.seq.add(1) {
                let kind = if p.window == 0 {
                    Kind::ZeroWindowProbe
                } else {
                    Kind::Keepalive
                };
                let mut last_ts = ts;
                for cand in &c.list {
                    self.record_probe(
                        d, cand.frame, cand.ts, kind, c.seq, cand.ack, 0, true, stats, out,
                    );
                    last_ts = cand.ts;
                }
                self.record_answer(d, ts, kind);
                if pure && p.payload_len == 0 {
                    probe_related = true;
                    if kind == Kind::Keepalive {
                        stats.keepalive_acks += 1;
                        out.push(Event::Packet(self.ack_event(frame, ts, p, s, last_ts)));
                    }
                }
            }
        }
        probe_related
    }

    /// Step 3: an RST at candidate seq + 1 confirms its sender's candidates were probes.
    fn confirm_by_rst(
        &mut self,
        s: usize,
        p: &TcpRepr,
        stats: &mut TrackerStats,
        out: &mut Vec<Event>,
    ) {
        if let Some(c) = self.probe[s].cands.take() {
            self.sync_watching(s);
            if p.seq == c.seq.add(1) {
                for cand in &c.list {
                    self.record_probe(
                        s,
                        cand.frame,
                        cand.ts,
                        Kind::Keepalive,
                        c.seq,
                        cand.ack,
                        0,
                        true,
                        stats,
                        out,
                    );
                }
            }
        }
    }

    /// Step 4: what a pure ACK of 0 or 1 byte from side `s` (not an answer) is, judged by
    /// the peer's last ACK number and window.
    #[inline]
    fn classify_probe(&self, s: usize, p: &TcpRepr) -> Sighting {
        let d = 1 - s;
        let peer_window_zero = self.dirs[d].window == Some(0);
        match self.dirs[d].last_ack {
            Some(ra) if p.seq.add(1) == ra => Sighting::Probe(if peer_window_zero {
                Kind::ZeroWindowProbe
            } else {
                Kind::Keepalive
            }),
            // 1 byte at snd_una (= snd_nxt: the window is shut) into a zero window.
            Some(ra) if p.payload_len == 1 && p.seq == ra && peer_window_zero => {
                Sighting::Probe(Kind::ZeroWindowProbe)
            }
            Some(_) => Sighting::Nothing,
            // The peer's ACK number is not known yet (capture started mid-idle): an empty
            // segment may be a probe, held until the peer's reply or an RST tells.
            None if p.payload_len == 0 => Sighting::Candidate,
            None => Sighting::Nothing,
        }
    }

    /// Hold a zero-length segment from side `s` as a probe candidate: repeats at the same
    /// sequence number join the list (up to [`MAX_CANDS`]), another sequence number starts
    /// a new one.
    fn hold_candidate(&mut self, s: usize, frame: u64, ts: Duration, p: &TcpRepr) {
        let cand = Cand {
            frame,
            ts,
            ack: p.ack,
        };
        match &mut self.probe[s].cands {
            Some(c) if c.seq == p.seq => {
                if c.list.len() < MAX_CANDS {
                    c.list.push(cand);
                }
            }
            other => {
                *other = Some(Box::new(Cands {
                    seq: p.seq,
                    list: vec![cand],
                }));
            }
        }
        self.sync_watching(s);
    }

    /// Step 5: side `s`'s sequence space, highest ACK and window; data or SYN/FIN clears
    /// its pending probe and candidates; anything not probe-related is activity.
    #[inline]
    fn advance_direction(
        &mut self,
        s: usize,
        ts: Duration,
        p: &TcpRepr,
        is_probe: bool,
        probe_related: bool,
    ) {
        let f = p.flags;
        let syn_fin = u32::from(f.syn()) + u32::from(f.fin());
        let end = if is_probe {
            p.seq.add(1)
        } else {
            p.seq.add(p.payload_len.wrapping_add(syn_fin))
        };
        let dir = &mut self.dirs[s];
        dir.next_seq = Some(dir.next_seq.map_or(end, |n| n.max(end)));
        if f.ack() {
            dir.last_ack = Some(dir.last_ack.map_or(p.ack, |a| a.max(p.ack)));
        }
        if !f.rst() {
            dir.window = Some(p.window);
        }
        if !is_probe && (p.payload_len > 0 || syn_fin > 0) && dir.watching {
            dir.watching = false;
            self.probe[s].pending = None;
            self.probe[s].cands = None;
        }
        if !probe_related {
            self.last_activity = Some(ts);
        }
    }

    /// Step 6: FINs, and the outcome once the flow ends: an RST after unanswered probes from
    /// the same side means the peer was dead; FIN both ways (or a capture that starts at the
    /// FIN) is a close.
    #[inline]
    fn note_end(&mut self, s: usize, ts: Duration, p: &TcpRepr) {
        let f = p.flags;
        if f.fin() {
            self.fin[s] = true;
        }
        if self.ended.is_none() {
            if f.rst() {
                let run = self.sides.as_ref().map_or(0, |x| x[s].run);
                let outcome = if run > 0 {
                    self.sides()[s].gave_up_after = Some(run);
                    Outcome::PeerDead
                } else {
                    Outcome::Reset
                };
                self.ended = Some((outcome, ts));
            } else if self.fin[0] && self.fin[1] {
                self.ended = Some((Outcome::Closed, ts));
            } else if self.packets == 1 && f.fin() {
                // The capture starts as the connection closes: nothing left to learn.
                self.ended = Some((Outcome::Closed, ts));
            }
        }
    }

    /// True for the last ACK of the closing handshake: the flow will carry nothing more.
    #[inline]
    fn is_final_ack(&self, s: usize, p: &TcpRepr) -> bool {
        self.fin[0]
            && self.fin[1]
            && p.flags.ack()
            && !p.flags.fin()
            && Some(p.ack) == self.dirs[1 - s].next_seq
    }

    fn ack_event(
        &self,
        frame: u64,
        ts: Duration,
        p: &TcpRepr,
        s: usize,
        probe_ts: Duration,
    ) -> PacketEvent {
        PacketEvent {
            frame,
            ts,
            kind: Kind::KeepaliveAck,
            src: self.eps[s],
            dst: self.eps[1 - s],
            seq: p.seq.0,
            ack: p.ack.0,
            len: p.payload_len,
            probe_number: 0,
            unanswered_before: 0,
            since_prev_probe: None,
            idle: None,
            rtt: Some(sub(ts, probe_ts)),
            confirmed_later: false,
        }
    }

    fn summary(&self, open_outcome: Option<Outcome>) -> FlowSummary {
        let default_sides = [Side::default(), Side::default()];
        let sides: &[Side; 2] = self.sides.as_deref().unwrap_or(&default_sides);
        let (ci, roles_known) = match self.client {
            Some(c) => (c, true),
            None => (0, false),
        };
        let probing = |x: &Side| x.keepalives + x.zwp > 0;
        let main = if sides[1].keepalives + sides[1].zwp > sides[0].keepalives + sides[0].zwp {
            1
        } else {
            0
        };
        let prober = probing(&sides[main]).then_some(self.eps[main]);
        let prober_role = match (probing(&sides[0]), probing(&sides[1])) {
            (true, true) => Role::Both,
            (false, false) => Role::Unknown,
            _ if !roles_known => Role::Unknown,
            _ if main == ci => Role::Client,
            _ => Role::Server,
        };
        let m = &sides[main];
        let keepalives = sides[0].keepalives + sides[1].keepalives;
        let answered = sides[0].answered + sides[1].answered;
        let outcome = match (self.ended, open_outcome) {
            (Some((o, _)), _) => o,
            (None, Some(o)) => o,
            (None, None) => {
                if m.run > 0 {
                    Outcome::Probing
                } else {
                    Outcome::Alive
                }
            }
        };
        FlowSummary {
            client: self.eps[ci],
            server: self.eps[1 - ci],
            roles_known,
            prober,
            prober_role,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            packets: self.packets,
            keepalives,
            answered,
            unanswered: keepalives.saturating_sub(answered),
            zero_window_probes: sides[0].zwp + sides[1].zwp,
            first_probe: m.first_probe,
            last_probe: m.last_probe,
            idle_before_first_probe: m.idle_first,
            probe_interval: median(&m.gaps),
            unanswered_at_end: m.run,
            outcome,
            inference: infer(
                m.idle_first,
                &m.answered_gaps,
                &m.unanswered_gaps,
                m.gave_up_after,
            ),
            ending: self.ending(),
        }
    }
}

/// Tracks TCP flows and classifies keep-alive probes, their ACKs and zero-window probes.
pub struct Tracker {
    /// Limits: table size, idle timeout, linger after close, which flows are reported.
    cfg: TrackerConfig,
    /// Every flow tracked, keyed by its 4-tuple in either direction, least recently active
    /// first (evicted first when full, expired first when idle).
    table: FlowTable<Flow>,
    /// Flows that ended, with the time they ended, in that order: removed once
    /// `closed_linger` has passed (their last ACKs absorbed).
    closed: VecDeque<(Duration, FlowKey)>,
    /// Counters over everything processed.
    stats: TrackerStats,
    /// The next time [`Tracker::expire`] does any work (once a second of packet time).
    next_expiry: Duration,
    /// Reuses after idle per server, across flows: the idle limits they bracket.
    limits: IdleLimits,
    /// The kernel's per-flow records (live capture), when it keeps them.
    kernel: Option<Arc<KernelFlows>>,
}

impl Tracker {
    #[must_use]
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            table: FlowTable::new(cfg.max_flows),
            cfg,
            closed: VecDeque::new(),
            stats: TrackerStats::default(),
            next_expiry: Duration::ZERO,
            limits: IdleLimits::new(MAX_LIMIT_SERVERS),
            kernel: None,
        }
    }

    /// Work with the kernel's per-flow records of a live capture: read what it withheld
    /// before a flow's next packet, and ask it to withhold quiet flows' routine segments.
    pub fn set_kernel(&mut self, k: Option<Arc<KernelFlows>>) {
        self.kernel = k;
    }

    /// Note in each flow the kernel armed since the last look the count it was armed at.
    #[inline]
    fn note_armings(&mut self) {
        let Some(k) = self.kernel.as_deref() else {
            return;
        };
        let table = &mut self.table;
        k.armings(|key, first, at| {
            if let Some(f) = table.get_mut(&FlowKey::from_kernel_key(&key)) {
                if f.kernel.outstanding && f.kernel.first == first {
                    f.kernel.armed_at = Some(at);
                }
            }
        });
    }

    /// Take in what the kernel withheld for the flow at `key`, if it may have: true when
    /// there was something.
    fn take_withheld_at(&mut self, key: &FlowKey) -> bool {
        let Some(k) = self.kernel.as_deref() else {
            return false;
        };
        match self.table.get_mut(key) {
            Some(f) => f.take_withheld(k, &mut self.stats) > 0,
            _ => false,
        }
    }

    /// The kernel forgets a flow the table dropped, when its record counts exactly the
    /// packets processed here: a packet still in the ring was counted in the record, and a
    /// flow made here from it must not meet a fresh record made from the packet after it
    /// (their counts would differ by the packets in between). Such a record stays: it never
    /// matches a request of the new flow (another first packet), so nothing is withheld.
    fn forget(&self, f: &Flow) {
        if let Some(k) = &self.kernel {
            let key = f.kernel_key();
            let aligned = k.read(&key).is_some_and(|r| r.passed == f.kernel.count);
            k.forget(&key, aligned);
        }
    }

    /// Take in what the kernel withheld for every flow a snapshot shows (the ones with
    /// probes, or all when every flow is reported), so live tables count those packets.
    pub fn take_withheld_for_snapshot(&mut self) {
        if self.kernel.is_none() {
            return;
        }
        self.note_armings();
        let all = self.cfg.report_all_flows;
        let keys: Vec<FlowKey> = self
            .table
            .iter()
            .filter(|(_, f)| f.kernel.armed_at.is_some() && (all || f.has_probes()))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.take_withheld_at(&key);
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Flows tracked now.
    #[must_use]
    pub fn flows_tracked(&self) -> usize {
        self.table.len()
    }

    /// Conclude a flow once: count its reuses towards its server's idle limit, and emit its
    /// summary when it has probes, an ending worth telling, or every flow is wanted.
    fn report(
        cfg: &TrackerConfig,
        limits: &mut IdleLimits,
        flow: &mut Flow,
        open: Option<Outcome>,
        out: &mut Vec<Event>,
    ) {
        if flow.reported {
            return;
        }
        flow.reported = true;
        let tell = flow.has_probes() || cfg.report_all_flows || flow.end.worth_telling();
        if !tell && !flow.end.has_reuses() {
            return;
        }
        let summary = flow.summary(open);
        if summary.roles_known {
            limits.add(summary.server, &summary.ending.reuses);
        }
        if tell {
            out.push(Event::Flow(Box::new(summary)));
        }
    }

    /// The idle limits bracketed so far (servers whose reuses both worked and failed).
    #[must_use]
    pub fn idle_limits(&self) -> Vec<IdleLimit> {
        self.limits.limits()
    }

    /// Process one TCP packet seen at `ts` as frame number `frame`, appending what was
    /// found (packet classifications, summaries of flows that ended) to `out`.
    pub fn process(&mut self, frame: u64, ts: Duration, p: &TcpRepr, out: &mut Vec<Event>) {
        let key = Self::key_of(p);
        self.process_keyed(frame, ts, p, key, hash_key(&key), out);
    }

    /// The flow key of `p` and its hash, for [`Tracker::prefetch`] and
    /// [`Tracker::process_keyed`].
    #[must_use]
    #[inline]
    pub fn key_of(p: &TcpRepr) -> FlowKey {
        FlowKey::new(Ep::new(p.src, p.src_port), Ep::new(p.dst, p.dst_port))
    }

    /// Start loading what a packet with key hash `hash` will need: `stage` 0 its index entry,
    /// 1 its flow record (after stage 0 had time to arrive). A hint, never needed.
    #[inline]
    pub fn prefetch(&self, hash: u64, stage: u8) {
        if stage == 0 {
            self.table.prefetch_index(hash);
        } else {
            self.table.prefetch_slot(hash, FLOW_HOT_BYTES);
        }
    }

    /// [`Tracker::process`] with the packet's key and its hash already computed.
    pub fn process_keyed(
        &mut self,
        frame: u64,
        ts: Duration,
        p: &TcpRepr,
        key: FlowKey,
        hash: u64,
        out: &mut Vec<Event>,
    ) {
        self.stats.tcp_packets += 1;
        self.note_armings();
        if ts >= self.next_expiry {
            self.expire(ts, out);
        }
        let src_is_lo = key.is_lo(&Ep::new(p.src, p.src_port));
        let idx = self.find_or_insert(key, hash, ts, p, src_is_lo, out);
        let Some(flow) = self.table.at(idx) else {
            return;
        };
        let s = usize::from(src_is_lo != flow.side0_is_lo);
        if let Some(k) = self.kernel.as_deref() {
            let link = &mut flow.kernel;
            link.count = link.count.wrapping_add(1);
            if link.count == 1 {
                link.first = Fingerprint {
                    seq: p.seq.0,
                    ack: p.ack.0,
                    window: p.window,
                    flags: p.flags.0,
                };
            }
            flow.before_passed(k, &mut self.stats);
        }
        let new_connection = p.flags.syn()
            && !p.flags.ack()
            && (flow.ended.is_some() || flow.probe[s].isn.is_some_and(|i| i != p.seq));
        if new_connection {
            let mut old = std::mem::replace(flow, Flow::new(p, ts, src_is_lo));
            // The kernel's record goes on (counts, an outstanding request), but its mirror
            // is the old connection's: no more requests for this one.
            flow.kernel = old.kernel;
            flow.kernel.off = true;
            Self::report(&self.cfg, &mut self.limits, &mut old, None, out);
            self.stats.flows += 1;
        }
        // A restarted flow's first sender is this packet's source.
        let s = if new_connection { 0 } else { s };
        let was_ended = flow.ended.is_some();
        flow.on_packet(s, frame, ts, p, &mut self.stats, out);
        if !was_ended {
            if let Some((_, at)) = flow.ended {
                Self::report(&self.cfg, &mut self.limits, flow, None, out);
                self.closed.push_back((at, key));
            }
        }
        if let Some(k) = self.kernel.as_deref() {
            flow.request_withholding(k);
        }
        if was_ended && flow.is_final_ack(s, p) {
            if let Some(f) = self.table.remove(&key) {
                self.forget(&f);
            }
        }
    }

    /// The table slot of `key`'s flow: found (and promoted in the activity order at most once
    /// a second), or inserted, evicting and reporting the least recently active flow when
    /// the table is full.
    fn find_or_insert(
        &mut self,
        key: FlowKey,
        hash: u64,
        ts: Duration,
        p: &TcpRepr,
        src_is_lo: bool,
        out: &mut Vec<Event>,
    ) -> u32 {
        if let Some(i) = self.table.lookup_touch_hashed(&key, hash, false) {
            // Keep the activity order to PROMOTE_SECS: promote a flow at most once in each
            // such period (each promotion writes three other flows' links: with 100,000 busy
            // flows, cache misses).
            let promote = self.table.at(i).is_some_and(|f| {
                f.last_seen.as_secs() / PROMOTE_SECS != ts.as_secs() / PROMOTE_SECS
            });
            if promote {
                self.table.promote(i);
            }
            return i;
        }
        if self.kernel.is_some() && self.table.is_full() {
            // The least recently active flow may only look idle: the kernel withheld its
            // packets. Such a flow moves up; a few tries, then the oldest goes.
            for _ in 0..8 {
                let Some(oldest) = self.table.oldest().map(|(k, _)| *k) else {
                    break;
                };
                if !self.take_withheld_at(&oldest) {
                    break;
                }
                self.table.lookup_touch(&oldest, true);
            }
        }
        let (evicted, i) = self.table.insert(key, Flow::new(p, ts, src_is_lo));
        self.stats.flows += 1;
        self.stats.peak_flows = self.stats.peak_flows.max(self.table.len() as u64);
        if let Some((_, mut old)) = evicted {
            if let Some(k) = self.kernel.as_deref() {
                old.take_withheld(k, &mut self.stats);
            }
            self.forget(&old);
            self.stats.evictions += 1;
            Self::report(
                &self.cfg,
                &mut self.limits,
                &mut old,
                Some(Outcome::Evicted),
                out,
            );
        }
        i
    }

    /// Drop flows idle past the timeout and closed flows past their linger, as of `now`.
    /// Called by [`Tracker::process`]; live sources also call it when no packet comes.
    pub fn expire(&mut self, now: Duration, out: &mut Vec<Event>) {
        if now < self.next_expiry {
            return;
        }
        self.next_expiry = now.saturating_add(Duration::from_secs(1));
        self.note_armings();
        while let Some(&(at, key)) = self.closed.front() {
            if at + self.cfg.closed_linger > now {
                break;
            }
            self.closed.pop_front();
            let remove = self
                .table
                .get_mut(&key)
                .is_some_and(|f| f.ended.is_some_and(|(_, t)| t == at));
            if remove {
                if let Some(f) = self.table.remove(&key) {
                    self.forget(&f);
                }
            }
        }
        while let Some((key, f)) = self.table.oldest() {
            if f.last_seen + self.cfg.idle_timeout > now {
                break;
            }
            let key = *key;
            if self.take_withheld_at(&key)
                && self
                    .table
                    .get_mut(&key)
                    .is_some_and(|f| f.last_seen + self.cfg.idle_timeout > now)
            {
                // Busy after all, in the kernel.
                self.table.lookup_touch(&key, true);
                continue;
            }
            if let Some((_, mut f)) = self.table.pop_oldest() {
                self.forget(&f);
                if f.ended.is_none() {
                    self.stats.expired += 1;
                }
                Self::report(
                    &self.cfg,
                    &mut self.limits,
                    &mut f,
                    Some(Outcome::Expired),
                    out,
                );
            }
        }
    }

    /// Summaries of every flow with probes, as they stand now (for live tables).
    #[must_use]
    pub fn snapshot(&self) -> Vec<FlowSummary> {
        self.table
            .iter()
            .filter(|(_, f)| f.has_probes() || self.cfg.report_all_flows)
            .map(|(_, f)| f.summary(None))
            .collect()
    }

    /// End of input: summaries of all flows not yet reported.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.note_armings();
        for (_, mut f) in self.table.drain() {
            if let Some(k) = self.kernel.as_deref() {
                f.take_withheld(k, &mut self.stats);
            }
            Self::report(&self.cfg, &mut self.limits, &mut f, None, out);
        }
        self.closed.clear();
        out.extend(self.limits.limits().into_iter().map(Event::IdleLimit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Conv;
    use crate::wire::packet::{parse_frame, LinkType};

    #[test]
    fn hot_fields_fill_three_cache_lines_of_a_slot() {
        use crate::flow::table::{occupied_offset, slot_size, value_offset};
        // The key, whether the slot is in use and every field a common packet reads: three
        // 64-byte lines (the ones prefetched), the slot aligned to them.
        let hot = value_offset::<Flow>() + FLOW_HOT_BYTES;
        assert!(hot <= 3 * 64, "{hot} bytes");
        assert!(occupied_offset::<Flow>() < 64);
        assert_eq!(slot_size::<Flow>() % 64, 0);
        assert_eq!(std::mem::size_of::<Dir>(), 24);
    }

    fn feed(t: &mut Tracker, c: &Conv, out: &mut Vec<Event>) {
        for (i, f) in c.frames.iter().enumerate() {
            let p = parse_frame(LinkType::RawIp, &f.ip).unwrap();
            t.process(i as u64 + 1, f.ts, &p, out);
        }
    }

    fn conv(port: u16) -> Conv {
        Conv::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 80)),
            [1, 2],
            Duration::from_secs(100),
        )
    }

    #[test]
    fn closed_flows_leave_the_table_at_the_last_ack() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let mut c = conv(1000);
        c.handshake(None).data(0, 10).ack(1).fin(0).fin(1);
        feed(&mut t, &c, &mut out);
        assert_eq!(t.flows_tracked(), 1, "still waiting for the last ACK");
        let mut c2 = c.clone();
        c2.frames.clear();
        c2.ack(0);
        feed(&mut t, &c2, &mut out);
        assert_eq!(t.flows_tracked(), 0);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_and_counts_it() {
        let mut t = Tracker::new(TrackerConfig {
            max_flows: 2,
            ..TrackerConfig::default()
        });
        let mut out = Vec::new();
        for port in 1..=3 {
            let mut c = conv(port);
            c.handshake(None)
                .data(0, 5)
                .ack(1)
                .wait(2.0)
                .keepalive(0, false, None);
            feed(&mut t, &c, &mut out);
        }
        assert_eq!(t.flows_tracked(), 2);
        assert_eq!(t.stats().evictions, 1);
        let evicted: Vec<&FlowSummary> = out
            .iter()
            .filter_map(|e| match e {
                Event::Flow(f) if f.outcome == Outcome::Evicted => Some(&**f),
                _ => None,
            })
            .collect();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].client.port(), 1);
    }

    #[test]
    fn an_idle_flow_expires_after_the_timeout() {
        let mut t = Tracker::new(TrackerConfig {
            idle_timeout: Duration::from_secs(60),
            ..TrackerConfig::default()
        });
        let mut out = Vec::new();
        let mut c = conv(7);
        c.handshake(None).wait(5.0).keepalive(0, false, None);
        feed(&mut t, &c, &mut out);
        t.expire(Duration::from_secs(100 + 66), &mut out);
        assert_eq!(t.flows_tracked(), 0);
        assert_eq!(t.stats().expired, 1);
        assert!(out
            .iter()
            .any(|e| matches!(e, Event::Flow(f) if f.outcome == Outcome::Expired)));
    }
}
