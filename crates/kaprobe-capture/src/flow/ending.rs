//! How a connection ended, who ended it, after how much idle time, and what happened to
//! data sent after an idle gap (a reuse): the per-flow half of "why did my connection die?".
//! The tracker feeds [`EndTrack`] every segment; [`EndTrack::conclude`] turns what it saw
//! into an [`Ending`] when the flow is summarised. Across flows, [`IdleLimits`] brackets the
//! idle time after which reuses towards one server start failing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::wire::seq::SeqNum;

/// A gap without payload at least this long before data makes that data a reuse.
pub const REUSE_GAP: Duration = Duration::from_millis(500);
/// Reuses remembered per flow.
const MAX_REUSES: usize = 8;

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndBy {
    Client,
    Server,
    /// Something between the two: nothing answered, or a RST the peer did not send.
    Path,
    /// The handshake was not captured: which side is which is unknown.
    Unknown,
}

impl EndBy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Path => "path",
            Self::Unknown => "unknown",
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndHow {
    Fin,
    Rst,
    /// Data or probes went unanswered until the sender gave up or the capture ended.
    Silent,
    /// The prober gave up after its unanswered keep-alive probes.
    KeepaliveTimeout,
}

impl EndHow {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Silent => "silent",
            Self::KeepaliveTimeout => "keepalive_timeout",
        }
    }
}

/// What became of data sent after an idle gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReuseResult {
    /// The peer acknowledged it.
    Ok,
    /// The peer (or the path) answered with a RST.
    Reset,
    /// Nothing acknowledged it.
    Unanswered,
    /// It was sent after the peer's FIN, or crossed it.
    AfterFin,
}

impl ReuseResult {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Reset => "reset",
            Self::Unanswered => "unanswered",
            Self::AfterFin => "after_fin",
        }
    }

    #[must_use]
    pub fn failed(self) -> bool {
        self != Self::Ok
    }
}

/// One reuse: who wrote after how much idle, and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reuse {
    /// `client`, `server` or `unknown`.
    pub by: EndBy,
    pub at: Duration,
    pub idle: Duration,
    pub result: ReuseResult,
}

/// How one flow ended (all `None`/empty while it is still open with nothing to say).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ending {
    pub by: Option<EndBy>,
    pub how: Option<EndHow>,
    /// Silence before the ending began (before the FIN or RST, or before the data that
    /// went unanswered).
    pub idle_before_end: Option<Duration>,
    /// Why `by` is `path`, when it is.
    pub evidence: Option<String>,
    pub reuse_failed: bool,
    pub reuses: Vec<Reuse>,
    /// One sentence, or empty when there is nothing to say.
    pub verdict: String,
}

#[derive(Debug, Clone, Copy)]
struct ReuseRec {
    side: usize,
    at: Duration,
    idle: Duration,
    /// One past the reuse's last byte.
    end: SeqNum,
    result: Option<ReuseResult>,
    /// Its sender sent again later (a retransmission, a FIN, a RST) with no answer in
    /// between: an unanswered reuse is only judged once time has passed on the wire.
    followed: bool,
    /// The peer acknowledged its bytes but has not replied with data yet: a relay or a
    /// proxy's kernel acknowledges a request that the server behind it never sees.
    acked: bool,
}

impl ReuseRec {
    /// Still waiting for its verdict: no result, and not acknowledged more than
    /// [`ANSWER_WINDOW`] before `ts`.
    fn open_at(&self, ts: Duration) -> bool {
        self.result.is_none() && !(self.acked && ts.saturating_sub(self.at) > ANSWER_WINDOW)
    }
}

/// A reuse the peer acknowledged and then, within this long and before any reply, closed
/// (FIN) or reset failed all the same: the request reached a relay, not the server.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(1);

/// A later segment from a reuse's sender at least this long after it shows the reuse went
/// unanswered for that long (the shortest retransmission timeout).
const FOLLOW_AFTER: Duration = Duration::from_millis(200);

/// What the tracker tells about one flow's segments, kept small: per side the first FIN and
/// the TTL seen, the first RST, the last payload, and a few reuses.
///
/// `repr(C)` with the fields every segment touches first (see [`EndTrack::HOT_BYTES`]).
#[derive(Debug, Clone, Default)]
#[repr(C)]
pub struct EndTrack {
    /// Reuses still waiting for their result: while there are none, a segment without FIN,
    /// RST or a new reuse changes only the few fields next to this one.
    open: u8,
    /// TTL (hop limit) of each side's latest segment that was not a RST.
    ttl: [Option<u8>; 2],
    last_payload: Option<Duration>,
    reuses: Vec<ReuseRec>,
    fin_at: [Option<Duration>; 2],
    /// The first RST: its sender, when, and its TTL.
    rst: Option<(usize, Duration, u8)>,
    /// Silence before the first FIN or RST.
    idle_before_close: Option<Duration>,
}

/// One segment as the ending needs it.
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    pub side: usize,
    pub ts: Duration,
    pub seq: SeqNum,
    pub ack: Option<SeqNum>,
    pub payload: u32,
    pub fin: bool,
    pub rst: bool,
    pub ttl: u8,
    /// A keep-alive or zero-window probe (its byte is not data).
    pub probe: bool,
}

impl EndTrack {
    /// Bytes at the front that the common segment (no FIN, RST or reuse) touches.
    pub const HOT_BYTES: usize = std::mem::offset_of!(EndTrack, reuses);

    /// Whether the ending is worth a summary on its own: a RST, or a reuse that did not work.
    #[must_use]
    pub fn worth_telling(&self) -> bool {
        self.rst.is_some()
            || self.reuses.iter().any(|r| match r.result {
                Some(x) => x.failed(),
                None => r.followed && !r.acked,
            })
    }

    /// Whether any data was sent after an idle gap.
    #[must_use]
    pub fn has_reuses(&self) -> bool {
        !self.reuses.is_empty()
    }

    /// No reuse is waiting for its result: a segment without FIN or RST that starts no
    /// reuse changes only each side's TTL and the time of the last payload.
    #[must_use]
    pub fn settled(&self) -> bool {
        self.open == 0
    }

    /// Each side's latest TTL and the time of the last payload (what [`EndTrack::fold`]
    /// sets).
    #[must_use]
    pub fn routine_state(&self) -> ([Option<u8>; 2], Option<Duration>) {
        (self.ttl, self.last_payload)
    }

    /// Take in segments that were counted elsewhere (withheld by the kernel while the
    /// ending was settled): the latest TTL per side and the last payload's time.
    pub fn fold(&mut self, ttl: [Option<u8>; 2], last_payload: Option<Duration>) {
        for (mine, theirs) in self.ttl.iter_mut().zip(ttl) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        if last_payload.is_some() {
            self.last_payload = last_payload;
        }
    }

    /// Account for one segment.
    #[inline]
    pub fn on_segment(&mut self, g: &Seg) {
        // Most segments are ACKs or data with no reuse open: a few stores, no loops.
        if !g.rst && !g.fin && self.open == 0 {
            self.ttl[g.side] = Some(g.ttl);
            if g.payload > 0 && !g.probe {
                if self
                    .last_payload
                    .is_some_and(|t| g.ts.saturating_sub(t) >= REUSE_GAP)
                {
                    self.on_segment_slow(g);
                    return;
                }
                self.last_payload = Some(g.ts);
            }
            return;
        }
        self.on_segment_slow(g);
    }

    fn on_segment_slow(&mut self, g: &Seg) {
        let (s, d) = (g.side, 1 - g.side);
        for r in self.reuses.iter_mut().filter(|r| r.side == s) {
            if r.result.is_none() && !r.acked && g.ts >= r.at + FOLLOW_AFTER {
                r.followed = true;
            }
        }
        // The peer's ACKs acknowledge this side's open reuses (the reply settles them)...
        if let Some(ack) = g.ack {
            if !g.rst {
                for r in self.reuses.iter_mut().filter(|r| r.side == d) {
                    if r.result.is_none() && ack.diff(r.end) >= 0 {
                        r.acked = true;
                    }
                }
            }
        }
        // ...and its RST fails them.
        if g.rst {
            if self.rst.is_none() {
                self.rst = Some((s, g.ts, g.ttl));
                if self.idle_before_close.is_none() && self.fin_at.iter().all(Option::is_none) {
                    self.idle_before_close = self.idle_of_closer(d, g.ts);
                }
            }
            for r in self.reuses.iter_mut().filter(|r| r.side == d) {
                if r.open_at(g.ts) {
                    r.result = Some(ReuseResult::Reset);
                } else if r.result.is_none() {
                    r.result = Some(ReuseResult::Ok);
                }
            }
            self.settle(g.ts);
            return;
        }
        self.ttl[s] = Some(g.ttl);
        if g.payload > 0 && !g.probe {
            // A reply: the peer's open reuses worked.
            for r in self.reuses.iter_mut().filter(|r| r.side == d) {
                if r.result.is_none() {
                    r.result = Some(ReuseResult::Ok);
                }
            }
            let gap = self.last_payload.map(|t| g.ts.saturating_sub(t));
            if let Some(idle) = gap.filter(|gap| *gap >= REUSE_GAP) {
                let result = self.fin_at[d].map(|_| ReuseResult::AfterFin);
                if self.reuses.len() == MAX_REUSES {
                    // Keep the first ones and the latest.
                    self.reuses.remove(MAX_REUSES / 2);
                }
                self.reuses.push(ReuseRec {
                    side: s,
                    at: g.ts,
                    idle,
                    end: g.seq.add(g.payload),
                    result,
                    followed: false,
                    acked: false,
                });
            }
            self.last_payload = Some(g.ts);
        }
        if g.fin {
            if self.fin_at[s].is_none() {
                self.fin_at[s] = Some(g.ts);
                if self.idle_before_close.is_none() && self.fin_at[d].is_none() {
                    self.idle_before_close = self.idle_of_closer(d, g.ts);
                }
            }
            // Data of the other side not yet acknowledged crossed this FIN, and data
            // acknowledged just before it got no reply but the FIN.
            for r in self.reuses.iter_mut().filter(|r| r.side == d) {
                if r.open_at(g.ts) {
                    r.result = Some(ReuseResult::AfterFin);
                }
            }
            // This side closing itself: it was not waiting for a reply.
            for r in self.reuses.iter_mut().filter(|r| r.side == s) {
                if r.result.is_none() && r.acked {
                    r.result = Some(ReuseResult::Ok);
                }
            }
        }
        self.settle(g.ts);
    }

    /// Count the reuses still open, settling as worked those acknowledged longer than
    /// [`ANSWER_WINDOW`] ago (nothing can fail them any more).
    fn settle(&mut self, ts: Duration) {
        let mut open = 0u8;
        for r in &mut self.reuses {
            if r.result.is_none() {
                if r.open_at(ts) {
                    open += 1;
                } else {
                    r.result = Some(ReuseResult::Ok);
                }
            }
        }
        self.open = open;
    }

    /// The closer's silence before it closed at `ts`: since the last payload, or, when the
    /// other side (`other`) has a reuse still open (in flight, or only acknowledged by a
    /// relay), since the payload before that reuse: the closer never saw it.
    fn idle_of_closer(&self, other: usize, ts: Duration) -> Option<Duration> {
        let before_reuse = self
            .reuses
            .iter()
            .filter(|r| r.side == other && r.open_at(ts))
            .map(|r| r.at.saturating_sub(r.idle))
            .min();
        before_reuse
            .or(self.last_payload)
            .map(|t| ts.saturating_sub(t))
    }

    /// The ending, given which side is the client (`None`: unknown), whether the flow is
    /// over (`closed`), whether the prober of side `gave_up` reset after unanswered probes,
    /// and whether the flow is IPv6 (its evidence then speaks of the hop limit, not the TTL).
    #[must_use]
    pub fn conclude(
        &self,
        client: Option<usize>,
        closed: bool,
        gave_up: Option<usize>,
        ipv6: bool,
    ) -> Ending {
        let role = |side: usize| match client {
            Some(c) if c == side => EndBy::Client,
            Some(_) => EndBy::Server,
            None => EndBy::Unknown,
        };
        // A reuse the capture ended on, before any answer could come, is not judged.
        // An acknowledged one without a reply or a close after it worked, as far as TCP tells.
        let reuses: Vec<Reuse> = self
            .reuses
            .iter()
            .filter(|r| r.result.is_some() || r.followed || r.acked)
            .map(|r| Reuse {
                by: role(r.side),
                at: r.at,
                idle: r.idle,
                result: r.result.unwrap_or(if r.acked {
                    ReuseResult::Ok
                } else {
                    ReuseResult::Unanswered
                }),
            })
            .collect();
        let reuse_failed = reuses.iter().any(|r| r.result.failed());
        let first_fin = match self.fin_at {
            [Some(a), Some(b)] => Some(if a <= b { (0, a) } else { (1, b) }),
            [Some(a), None] => Some((0, a)),
            [None, Some(b)] => Some((1, b)),
            [None, None] => None,
        };
        let mut e = Ending {
            by: None,
            how: None,
            idle_before_end: self.idle_before_close,
            evidence: None,
            reuse_failed,
            reuses,
            verdict: String::new(),
        };
        // The ending began with whichever came first: a FIN, a RST, or data after an idle
        // gap that nothing ever acknowledged.
        let unanswered = e
            .reuses
            .iter()
            .find(|r| r.result == ReuseResult::Unanswered)
            .copied();
        let fin_at = first_fin.map_or(Duration::MAX, |(_, t)| t);
        let silent_at = unanswered.map_or(Duration::MAX, |r| r.at);
        let rst_at = self.rst_ts();
        if let Some(r) = unanswered.filter(|_| silent_at <= fin_at && silent_at <= rst_at) {
            e.by = Some(EndBy::Path);
            e.how = Some(EndHow::Silent);
            e.idle_before_end = Some(r.idle);
            e.evidence = Some("nothing acknowledged data sent after an idle gap".into());
        } else if fin_at <= rst_at && fin_at != Duration::MAX {
            if let Some((side, _)) = first_fin {
                e.by = Some(role(side));
                e.how = Some(EndHow::Fin);
            }
        } else if let Some((side, _, ttl)) = self.rst {
            if gave_up == Some(side) {
                e.by = Some(role(side));
                e.how = Some(EndHow::KeepaliveTimeout);
            } else {
                e.how = Some(EndHow::Rst);
                match self.ttl[side] {
                    Some(usual) if usual != ttl => {
                        e.by = Some(EndBy::Path);
                        let field = if ipv6 { "hop limit" } else { "TTL" };
                        e.evidence = Some(format!(
                            "the RST came with {field} {ttl}, the {}'s own segments with {usual}",
                            role(side).as_str()
                        ));
                    }
                    _ => e.by = Some(role(side)),
                }
            }
        } else if !closed {
            e.idle_before_end = None;
        }
        let rst_by = self.rst.map(|(side, _, _)| role(side));
        e.verdict = verdict(&e, rst_by);
        e
    }

    fn rst_ts(&self) -> Duration {
        self.rst.map_or(Duration::MAX, |(_, t, _)| t)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// One sentence for a flow's ending, naming the failed reuse when there is one; `rst_by`
/// sent the flow's first RST, if any.
fn verdict(e: &Ending, rst_by: Option<EndBy>) -> String {
    let Some(how) = e.how else {
        return String::new();
    };
    let who = e.by.map_or("someone", EndBy::as_str);
    let idle = e
        .idle_before_end
        .map_or(String::new(), |d| format!(" after {} idle", secs(d)));
    let mut v = match how {
        EndHow::Fin => format!("{who} closed{idle} (FIN)"),
        EndHow::Rst if e.by == Some(EndBy::Path) => format!(
            "a middlebox reset the connection{idle}: {}",
            e.evidence.as_deref().unwrap_or("")
        ),
        EndHow::Rst => format!("{who} reset the connection{idle} (RST)"),
        EndHow::Silent => {
            format!("the flow went silent{idle}: data sent then was never acknowledged, so something on the path forgot it")
        }
        EndHow::KeepaliveTimeout => {
            format!("the {who} gave up after its keep-alive probes went unanswered (the peer or the path was gone)")
        }
    };
    if let Some(r) = e.reuses.iter().find(|r| r.result.failed()) {
        let other = match r.by {
            EndBy::Client => "the server's",
            EndBy::Server => "the client's",
            _ => "the other side's",
        };
        let got_rst = rst_by.is_some_and(|b| b != r.by);
        let what = match r.result {
            ReuseResult::Reset => "and got a RST".to_string(),
            ReuseResult::AfterFin if got_rst => "and got a RST".to_string(),
            ReuseResult::AfterFin => format!("and met {other} FIN"),
            ReuseResult::Unanswered => "and got no answer".to_string(),
            ReuseResult::Ok => String::new(),
        };
        let by = if r.by == EndBy::Unknown {
            "one side"
        } else {
            r.by.as_str()
        };
        let limit = if e.by == Some(EndBy::Path) {
            "the path's".to_string()
        } else {
            other.to_string()
        };
        v.push_str(&format!(
            "; the {by} wrote after {} idle {what}: a pool kept the connection longer than {limit} idle timeout",
            secs(r.idle)
        ));
    }
    v
}

/// Reuses towards one server, across flows: the longest idle that worked and the shortest
/// that failed bracket its idle limit (or the path's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleLimit {
    pub server: SocketAddr,
    /// How the failures looked: `silent`, `rst` or `fin`.
    pub how: &'static str,
    pub longest_ok: Duration,
    pub shortest_failed: Duration,
    /// Flows with a reuse towards this server.
    pub flows: u32,
    /// A known default that falls in the bracket, if any.
    pub hint: Option<&'static str>,
}

/// Known idle timeouts, for the hint (sources in docs/read.md).
pub const KNOWN_LIMITS: &[(u64, &str)] = &[
    (5, "Node.js http.Server keepAliveTimeout (5s)"),
    (60, "AWS Application Load Balancer idle timeout (60s)"),
    (75, "nginx keepalive_timeout (75s)"),
    (240, "Azure Load Balancer idle timeout (4 min)"),
    (
        350,
        "AWS NAT gateway / Network Load Balancer idle timeout (350s)",
    ),
    (600, "Google Cloud load balancers (600s)"),
];

#[derive(Debug, Default, Clone)]
struct Bracket {
    longest_ok: Option<Duration>,
    shortest_failed: Option<(Duration, ReuseResult)>,
    flows: u32,
}

/// Per server endpoint, the bracket of its reuses (bounded: at most `cap` servers).
#[derive(Debug, Default)]
pub struct IdleLimits {
    by_server: HashMap<SocketAddr, Bracket>,
    cap: usize,
}

impl IdleLimits {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            by_server: HashMap::new(),
            cap,
        }
    }

    /// Count one flow's reuses by the client towards `server`.
    pub fn add(&mut self, server: SocketAddr, reuses: &[Reuse]) {
        let client_reuses = reuses.iter().filter(|r| r.by == EndBy::Client);
        if reuses.iter().all(|r| r.by != EndBy::Client) {
            return;
        }
        if !self.by_server.contains_key(&server) && self.by_server.len() >= self.cap {
            return;
        }
        let b = self.by_server.entry(server).or_default();
        b.flows += 1;
        for r in client_reuses {
            if r.result.failed() {
                if b.shortest_failed.is_none_or(|(d, _)| r.idle < d) {
                    b.shortest_failed = Some((r.idle, r.result));
                }
            } else if b.longest_ok.is_none_or(|d| r.idle > d) {
                b.longest_ok = Some(r.idle);
            }
        }
    }

    /// The servers whose reuses both worked and failed, shortest failure first.
    #[must_use]
    pub fn limits(&self) -> Vec<IdleLimit> {
        let mut v: Vec<IdleLimit> = self
            .by_server
            .iter()
            .filter_map(|(server, b)| {
                let ok = b.longest_ok?;
                let (failed, result) = b.shortest_failed?;
                let how = match result {
                    ReuseResult::Unanswered => "silent",
                    ReuseResult::AfterFin => "fin",
                    _ => "rst",
                };
                let (lo, hi) = (ok.min(failed), ok.max(failed));
                let hint = KNOWN_LIMITS
                    .iter()
                    .find(|(s, _)| {
                        let d = Duration::from_secs(*s);
                        d >= lo && d <= hi
                    })
                    .map(|(_, name)| *name);
                Some(IdleLimit {
                    server: *server,
                    how,
                    longest_ok: ok,
                    shortest_failed: failed,
                    flows: b.flows,
                    hint,
                })
            })
            .collect();
        v.sort_by_key(|l| l.shortest_failed);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(side: usize, ts: u64, seq: u32, ack: u32, payload: u32) -> Seg {
        Seg {
            side,
            ts: Duration::from_millis(ts),
            seq: SeqNum(seq),
            ack: Some(SeqNum(ack)),
            payload,
            fin: false,
            rst: false,
            ttl: 64,
            probe: false,
        }
    }

    #[test]
    fn server_fin_then_client_write_gets_a_rst_and_a_failed_reuse() {
        let mut t = EndTrack::default();
        // client (side 0) request, server (side 1) response
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 200));
        t.on_segment(&seg(0, 11, 150, 700, 0));
        // server closes after 1s idle
        t.on_segment(&Seg {
            fin: true,
            ..seg(1, 1010, 700, 150, 0)
        });
        // client writes 1s later, server resets
        t.on_segment(&seg(0, 2010, 150, 701, 50));
        t.on_segment(&Seg {
            rst: true,
            ack: None,
            ..seg(1, 2011, 701, 0, 0)
        });
        let e = t.conclude(Some(0), true, None, false);
        assert_eq!(
            (e.by, e.how),
            (Some(EndBy::Server), Some(EndHow::Fin)),
            "{e:?}"
        );
        assert_eq!(e.idle_before_end, Some(Duration::from_millis(1000)));
        assert!(e.reuse_failed);
        assert_eq!(e.reuses[0].result, ReuseResult::AfterFin);
        assert_eq!(e.reuses[0].by, EndBy::Client);
        assert!(
            e.verdict.starts_with(
                "server closed after 1.00s idle (FIN); the client wrote after 2.00s idle"
            ),
            "{}",
            e.verdict
        );
    }

    #[test]
    fn a_rst_with_another_ttl_is_the_paths() {
        let mut t = EndTrack::default();
        t.on_segment(&Seg {
            ttl: 63,
            ..seg(0, 0, 100, 500, 50)
        });
        t.on_segment(&Seg {
            ttl: 63,
            ..seg(1, 10, 500, 150, 20)
        });
        t.on_segment(&Seg {
            ttl: 63,
            ..seg(0, 2010, 150, 520, 50)
        });
        t.on_segment(&Seg {
            rst: true,
            ack: None,
            ttl: 64,
            ..seg(1, 2011, 520, 0, 0)
        });
        let e = t.conclude(Some(0), true, None, false);
        assert_eq!(
            (e.by, e.how),
            (Some(EndBy::Path), Some(EndHow::Rst)),
            "{e:?}"
        );
        assert!(e.evidence.as_deref().unwrap().contains("TTL 64"), "{e:?}");
        assert_eq!(e.reuses[0].result, ReuseResult::Reset);
    }

    #[test]
    fn unanswered_data_after_idle_is_a_silent_drop() {
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 20));
        t.on_segment(&seg(0, 3010, 150, 520, 50));
        t.on_segment(&seg(0, 3220, 150, 520, 50)); // retransmission
        let e = t.conclude(Some(0), false, None, false);
        assert_eq!(
            (e.by, e.how),
            (Some(EndBy::Path), Some(EndHow::Silent)),
            "{e:?}"
        );
        assert_eq!(e.idle_before_end, Some(Duration::from_millis(3000)));
        assert!(e.reuse_failed);
    }

    #[test]
    fn a_reuse_the_capture_ends_on_is_not_judged() {
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 20));
        // data after 3s idle, and the capture ends before any answer could come
        t.on_segment(&seg(0, 3010, 150, 520, 50));
        let e = t.conclude(Some(0), false, None, false);
        assert_eq!((e.by, e.how), (None, None), "{e:?}");
        assert!(!e.reuse_failed && e.reuses.is_empty(), "{e:?}");
    }

    #[test]
    fn an_open_flow_with_answered_reuses_has_nothing_to_say() {
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 20));
        t.on_segment(&seg(0, 1010, 150, 520, 50));
        t.on_segment(&seg(1, 1020, 520, 200, 20));
        let e = t.conclude(Some(0), false, None, false);
        assert_eq!((e.by, e.how), (None, None));
        assert!(!e.reuse_failed && e.verdict.is_empty());
        assert_eq!(e.reuses[0].result, ReuseResult::Ok);
    }

    #[test]
    fn a_reuse_a_relay_acknowledged_then_closed_on_failed_all_the_same() {
        // A proxy (side 0) reuses its upstream connection after 0.95s; the relay's kernel
        // acknowledges the request, but the FIN of the server behind it (idle 1s there) comes
        // next, then a RST: no reply.
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 200));
        t.on_segment(&seg(0, 11, 150, 700, 0));
        t.on_segment(&seg(0, 960, 150, 700, 50));
        t.on_segment(&seg(1, 960, 700, 200, 0));
        t.on_segment(&Seg {
            fin: true,
            ..seg(1, 1010, 700, 200, 0)
        });
        t.on_segment(&Seg {
            rst: true,
            ack: None,
            ..seg(1, 1060, 701, 0, 0)
        });
        let e = t.conclude(Some(0), true, None, false);
        assert_eq!((e.by, e.how), (Some(EndBy::Server), Some(EndHow::Fin)));
        assert!(e.reuse_failed, "{e:?}");
        assert_eq!(e.reuses[0].result, ReuseResult::AfterFin);
        // The server's silence runs from its reply, not from the request it never saw.
        assert_eq!(e.idle_before_end, Some(Duration::from_millis(1000)));
        assert!(
            e.verdict.ends_with(
                "the client wrote after 0.95s idle and got a RST: a pool kept the connection longer than the server's idle timeout"
            ),
            "{}",
            e.verdict
        );
    }

    #[test]
    fn an_acknowledged_reuse_with_a_reply_or_a_late_close_worked() {
        // Replied to: fine.
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 20));
        t.on_segment(&seg(0, 1010, 150, 520, 50));
        t.on_segment(&seg(1, 1011, 520, 200, 0));
        t.on_segment(&seg(1, 1030, 520, 200, 20));
        t.on_segment(&Seg {
            fin: true,
            ..seg(1, 1100, 540, 200, 0)
        });
        let e = t.conclude(Some(0), true, None, false);
        assert!(!e.reuse_failed, "{e:?}");
        assert_eq!(e.reuses[0].result, ReuseResult::Ok);
        // Acknowledged, no reply (a one-way message), the peer's idle close much later.
        let mut t = EndTrack::default();
        t.on_segment(&seg(0, 0, 100, 500, 50));
        t.on_segment(&seg(1, 10, 500, 150, 20));
        t.on_segment(&seg(0, 1010, 150, 520, 50));
        t.on_segment(&seg(1, 1011, 520, 200, 0));
        t.on_segment(&Seg {
            fin: true,
            ..seg(1, 6011, 520, 200, 0)
        });
        let e = t.conclude(Some(0), true, None, false);
        assert!(!e.reuse_failed, "{e:?}");
        assert_eq!(e.reuses[0].result, ReuseResult::Ok);
        assert_eq!(e.idle_before_end, Some(Duration::from_millis(5001)));
    }

    #[test]
    fn an_ipv6_path_reset_speaks_of_the_hop_limit() {
        let mut t = EndTrack::default();
        t.on_segment(&Seg {
            ttl: 63,
            ..seg(1, 10, 500, 150, 20)
        });
        t.on_segment(&Seg {
            rst: true,
            ack: None,
            ttl: 64,
            ..seg(1, 2011, 520, 0, 0)
        });
        let e = t.conclude(Some(0), true, None, true);
        assert_eq!(e.by, Some(EndBy::Path));
        assert_eq!(
            e.evidence.as_deref(),
            Some("the RST came with hop limit 64, the server's own segments with 63")
        );
    }

    #[test]
    fn idle_limits_bracket_a_server_and_name_a_known_default() {
        let server: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut l = IdleLimits::new(10);
        let r = |idle: u64, result| Reuse {
            by: EndBy::Client,
            at: Duration::ZERO,
            idle: Duration::from_secs(idle),
            result,
        };
        l.add(server, &[r(50, ReuseResult::Ok)]);
        l.add(server, &[r(70, ReuseResult::Reset)]);
        l.add(server, &[r(90, ReuseResult::Reset)]);
        let v = l.limits();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].longest_ok, Duration::from_secs(50));
        assert_eq!(v[0].shortest_failed, Duration::from_secs(70));
        assert_eq!(v[0].how, "rst");
        assert_eq!(v[0].flows, 3);
        assert!(v[0].hint.unwrap().contains("60s"), "{:?}", v[0].hint);
    }
}
