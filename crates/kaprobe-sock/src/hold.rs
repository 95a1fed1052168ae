//! Hold one idle connection and follow what the kernel's keep-alive does to it, through
//! TCP_INFO, until the connection ends or the caller stops.
//!
//! The connection is never written to. Every segment it sends is then a keep-alive probe
//! (or the ACK of something the peer sent), and every segment it receives with no payload
//! is an answer, so the `segs_out`/`segs_in` counters of TCP_INFO tell the story even when
//! a probe is answered faster than we poll.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::Socket;

use crate::error::{Error, Result};
use crate::info::{tcp_info, TcpInfo};
use crate::options::Effective;

/// How often TCP_INFO is read while the connection is quiet.
pub const POLL: Duration = Duration::from_millis(5);

/// How a held connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The peer closed its side (FIN): recv returned 0.
    PeerFin,
    /// The peer reset the connection (RST): ECONNRESET.
    PeerRst,
    /// The kernel gave up after the configured count of unanswered probes: ETIMEDOUT.
    KeepaliveTimeout,
    /// TCP_USER_TIMEOUT expired while probes went unanswered: ETIMEDOUT.
    UserTimeout,
    /// The caller stopped holding (duration reached or interrupted); still open.
    Stopped,
}

impl Outcome {
    /// A short sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::PeerFin => "the peer closed the connection (FIN)",
            Self::PeerRst => "the peer reset the connection (RST)",
            Self::KeepaliveTimeout => {
                "the kernel gave up on a silent peer after the configured unanswered probes (ETIMEDOUT)"
            }
            Self::UserTimeout => {
                "TCP_USER_TIMEOUT expired while keep-alive probes went unanswered (ETIMEDOUT)"
            }
            Self::Stopped => "still open when kaprobe stopped holding it",
        }
    }
}

/// Something seen while holding. `at` is the time since holding began.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HoldEvent {
    /// A keep-alive probe left; `unanswered` is the kernel's count of probes in flight.
    ProbeSent {
        #[serde(serialize_with = "crate::ser::secs")]
        at: Duration,
        n: u32,
        unanswered: u8,
    },
    /// The peer acknowledged: the connection is alive.
    ProbeAnswered {
        #[serde(serialize_with = "crate::ser::secs")]
        at: Duration,
        n: u32,
    },
    /// The peer probed us and our kernel answered (the peer runs keep-alive too).
    PeerProbeAnswered {
        #[serde(serialize_with = "crate::ser::secs")]
        at: Duration,
        n: u32,
    },
    /// The peer sent data (read and discarded); it restarts the idle timer.
    DataReceived {
        #[serde(serialize_with = "crate::ser::secs")]
        at: Duration,
        bytes: u64,
    },
}

/// The end of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HoldReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Time from the start of holding to the end.
    #[serde(serialize_with = "crate::ser::secs")]
    pub lifetime: Duration,
    /// Time from the start of holding to the last segment received from the peer.
    #[serde(serialize_with = "crate::ser::secs")]
    pub last_heard: Duration,
    /// Time from the last segment received to the end: what keep-alive timing decides.
    #[serde(serialize_with = "crate::ser::secs")]
    pub silent_for: Duration,
    /// Probes sent in all.
    pub probes_sent: u32,
    /// Probes the peer answered.
    pub probes_answered: u32,
    /// Keep-alive probes the peer sent us, answered by our kernel.
    pub peer_probes: u32,
    /// Probes in flight, unanswered, when the connection ended.
    pub unanswered: u8,
    /// What the settings predict for `silent_for` when the peer is silently gone.
    #[serde(serialize_with = "crate::ser::secs")]
    pub expected_silent_for: Duration,
    /// Whether `silent_for` matches the prediction (only for keep-alive/user timeouts).
    pub matches_config: Option<bool>,
}

/// Tolerance for comparing an observed death with the prediction: timers run on jiffies and
/// we poll every few milliseconds.
pub fn tolerance(expected: Duration) -> Duration {
    Duration::from_millis(250).max(expected / 100)
}

struct Tracker {
    start: Instant,
    idle: Duration,
    last: TcpInfo,
    last_heard: Instant,
    heard_probe_answer: bool,
    probes_sent: u32,
    probes_answered: u32,
    peer_probes: u32,
    unanswered: u8,
    pending: u32,
    /// When our latest probe was seen leaving (since `start`).
    last_probe_at: Duration,
}

/// Timer slack when deciding whether our own keep-alive timer could have fired.
const SLACK: Duration = Duration::from_millis(50);

impl Tracker {
    fn update(&mut self, now: Instant, info: TcpInfo, on_event: &mut impl FnMut(&HoldEvent)) {
        let at = now - self.start;
        let data = info.bytes_received.saturating_sub(self.last.bytes_received);
        let sent = info.segs_out.wrapping_sub(self.last.segs_out);
        let got = info.segs_in.wrapping_sub(self.last.segs_in);
        // When the kernel last heard from the peer, to its own clock (jiffies): the time
        // of an answer, more exact than this poll's.
        let since =
            Duration::from_millis(u64::from(info.last_ack_recv_ms.min(info.last_data_recv_ms)));
        let heard = now.checked_sub(since).unwrap_or(now).max(self.start);
        if data > 0 {
            on_event(&HoldEvent::DataReceived { at, bytes: data });
            self.pending = 0;
            self.heard_probe_answer = false;
        } else if sent > 0 || got > 0 {
            // The kernel sends a keep-alive probe only when it has heard nothing for at
            // least `idle` (tcp_keepalive_timer). Any other segment we sent answered a
            // probe of the peer's, which arrived in the same window.
            let due = now.saturating_duration_since(self.last_heard) + SLACK >= self.idle;
            let peer_probes = if due {
                sent.saturating_sub(1).min(got)
            } else {
                sent.min(got)
            };
            let ours = sent - peer_probes;
            if ours > 0 {
                self.last_probe_at = at;
            }
            for _ in 0..ours {
                self.probes_sent += 1;
                self.pending += 1;
                on_event(&HoldEvent::ProbeSent {
                    at,
                    n: self.probes_sent,
                    unanswered: info.probes.max(1),
                });
            }
            for _ in 0..peer_probes {
                self.peer_probes += 1;
                on_event(&HoldEvent::PeerProbeAnswered {
                    at,
                    n: self.peer_probes,
                });
            }
            let answered = (got - peer_probes).min(self.pending);
            // An answer is timed when the kernel received it, but never before the probe
            // it answers was seen leaving (both may be seen in one poll).
            let answered_at = (heard - self.start).max(self.last_probe_at);
            for _ in 0..answered {
                self.probes_answered += 1;
                on_event(&HoldEvent::ProbeAnswered {
                    at: answered_at,
                    n: self.probes_answered,
                });
            }
            if answered > 0 {
                self.pending = 0;
                self.heard_probe_answer = true;
                // `last_heard` is never earlier than the answer reported above.
                self.last_heard = self.start + answered_at;
                self.unanswered = info.probes;
                self.last = info;
                return;
            }
        }
        if got > 0 || data > 0 {
            self.last_heard = heard;
        }
        self.unanswered = info.probes;
        self.last = info;
    }
}

/// Hold `sock` idle until it ends, `stop` is set, or `max` has passed, calling `on_event`
/// for every keep-alive event. `eff` is what the kernel reported for the socket; `peer`
/// names it in errors.
pub fn hold(
    sock: &Socket,
    eff: &Effective,
    peer: &str,
    stop: &AtomicBool,
    max: Option<Duration>,
    mut on_event: impl FnMut(&HoldEvent),
) -> Result<HoldReport> {
    let start = Instant::now();
    let first = tcp_info(sock, peer)?;
    // Data the peer sent before holding began (a greeting sent as soon as it accepts) is
    // reported like any other: the baseline counts no bytes received.
    let mut baseline = first;
    baseline.bytes_received = 0;
    let mut t = Tracker {
        start,
        idle: eff.idle,
        peer_probes: 0,
        last: baseline,
        last_heard: start,
        heard_probe_answer: false,
        probes_sent: 0,
        probes_answered: 0,
        unanswered: first.probes,
        pending: 0,
        last_probe_at: Duration::ZERO,
    };
    if first.bytes_received > 0 {
        // Only the data: segments counted before holding began are the handshake's.
        let mut seen = baseline;
        seen.bytes_received = first.bytes_received;
        t.update(start, seen, &mut on_event);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = loop {
        if stop.load(Ordering::Relaxed) || max.is_some_and(|m| start.elapsed() >= m) {
            break Outcome::Stopped;
        }
        if !poll_readable(sock, POLL, peer)? {
            if let Ok(info) = tcp_info(sock, peer) {
                t.update(Instant::now(), info, &mut on_event);
            }
            continue;
        }
        // readable: data, EOF or an error. Counters are not read first, since the segments
        // the kernel sends at the end (its RST after the last probe, the ACK of a FIN) are
        // not probes; they were last read at most one poll interval ago.
        match recv(sock, &mut buf) {
            Ok(0) => break Outcome::PeerFin,
            Ok(_) => {
                if let Ok(info) = tcp_info(sock, peer) {
                    t.update(Instant::now(), info, &mut on_event);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break Outcome::PeerRst,
            Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                break if eff.user_timeout.is_some() {
                    Outcome::UserTimeout
                } else {
                    Outcome::KeepaliveTimeout
                };
            }
            Err(e) => return Err(Error::io(format!("read from {peer}"), e)),
        }
    };
    let end = Instant::now();
    let silent_for = end.saturating_duration_since(t.last_heard);
    let expected = eff.dead_peer_after_from(t.heard_probe_answer);
    let matches_config = matches!(outcome, Outcome::KeepaliveTimeout | Outcome::UserTimeout)
        .then(|| silent_for.abs_diff(expected) <= tolerance(expected));
    Ok(HoldReport {
        outcome,
        lifetime: end - start,
        last_heard: t.last_heard - start,
        silent_for,
        probes_sent: t.probes_sent,
        probes_answered: t.probes_answered,
        peer_probes: t.peer_probes,
        unanswered: if outcome == Outcome::Stopped {
            t.unanswered
        } else {
            // the kernel drops the connection at the run that finds the limit reached
            u8::try_from(t.pending).unwrap_or(u8::MAX).max(t.unanswered)
        },
        expected_silent_for: expected,
        matches_config,
    })
}

fn poll_readable(sock: &Socket, timeout: Duration, peer: &str) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::io(format!("wait for the connection to {peer}"), e));
    }
    Ok(rc > 0 && pfd.revents != 0)
}

fn recv(sock: &Socket, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut s: &Socket = sock;
    s.read(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{apply, read, KeepaliveConfig};
    use std::net::TcpListener;

    fn pair() -> (Socket, Socket) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (Socket::from(c), Socket::from(s))
    }

    /// Hold `c` for `ms` milliseconds: the report and every event.
    fn hold_for(c: &Socket, ms: u64) -> (HoldReport, Vec<HoldEvent>) {
        let eff = read(c, "t").unwrap();
        let stop = AtomicBool::new(false);
        let mut events = Vec::new();
        let r = hold(c, &eff, "t", &stop, Some(Duration::from_millis(ms)), |e| {
            events.push(*e);
        })
        .unwrap();
        (r, events)
    }

    fn one_second_timers() -> KeepaliveConfig {
        KeepaliveConfig {
            idle: Some(Duration::from_secs(1)),
            interval: Some(Duration::from_secs(1)),
            count: Some(3),
            user_timeout: None,
        }
    }

    #[test]
    fn probes_from_both_sides_are_told_apart() {
        let (c, s) = pair();
        let cfg = one_second_timers();
        apply(&c, &cfg, "t").unwrap();
        apply(&s, &cfg, "t").unwrap();
        let eff = read(&c, "t").unwrap();
        let stop = AtomicBool::new(false);
        let r = hold(
            &c,
            &eff,
            "t",
            &stop,
            Some(Duration::from_millis(2600)),
            |_| {},
        )
        .unwrap();
        assert_eq!(
            (r.probes_sent, r.probes_answered, r.peer_probes),
            (2, 2, 2),
            "{r:?}"
        );
    }

    #[test]
    fn answered_probes_are_counted_on_loopback() {
        let (c, _s) = pair();
        let cfg = one_second_timers();
        apply(&c, &cfg, "t").unwrap();
        let eff = read(&c, "t").unwrap();
        let mut events = Vec::new();
        let stop = AtomicBool::new(false);
        let r = hold(
            &c,
            &eff,
            "t",
            &stop,
            Some(Duration::from_millis(2600)),
            |e| {
                events.push(*e);
            },
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Stopped);
        assert_eq!(r.probes_sent, 2, "{events:?}");
        assert_eq!(r.probes_answered, 2, "{events:?}");
        assert_eq!(r.matches_config, None);
    }

    #[test]
    fn peer_fin_and_rst_are_told_apart() {
        let (c, s) = pair();
        let eff = read(&c, "t").unwrap();
        drop(s);
        let stop = AtomicBool::new(false);
        let r = hold(&c, &eff, "t", &stop, Some(Duration::from_secs(5)), |_| {}).unwrap();
        assert_eq!(r.outcome, Outcome::PeerFin);

        let (c, s) = pair();
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
        let r = hold(&c, &eff, "t", &stop, Some(Duration::from_secs(5)), |_| {}).unwrap();
        assert_eq!(r.outcome, Outcome::PeerRst);
    }

    #[test]
    fn data_sent_right_at_connect_is_reported() {
        use std::io::Write;
        let (c, s) = pair();
        // The peer greets as soon as it accepts, before holding begins.
        (&s).write_all(b"hello\r\n").unwrap();
        let mut waited = 0;
        while tcp_info(&c, "t").unwrap().bytes_received < 7 && waited < 1000 {
            std::thread::sleep(Duration::from_millis(1));
            waited += 1;
        }
        let (r, events) = hold_for(&c, 300);
        assert_eq!(r.outcome, Outcome::Stopped);
        let bytes: u64 = events
            .iter()
            .map(|e| match e {
                HoldEvent::DataReceived { bytes, .. } => *bytes,
                _ => 0,
            })
            .sum();
        assert_eq!(bytes, 7, "{events:?}");
        // And data that comes later still counts on top.
        drop(s);
    }

    #[test]
    fn last_heard_is_never_before_an_answered_probe() {
        let (c, _s) = pair();
        apply(&c, &one_second_timers(), "t").unwrap();
        let (r, events) = hold_for(&c, 2600);
        let mut sent = Vec::new();
        let mut answered = Vec::new();
        for e in &events {
            match e {
                HoldEvent::ProbeSent { at, .. } => sent.push(*at),
                HoldEvent::ProbeAnswered { at, .. } => answered.push(*at),
                _ => {}
            }
        }
        assert_eq!(answered.len(), 2, "{events:?}");
        let last = *answered.last().unwrap();
        assert!(r.last_heard >= last, "{r:?} {events:?}");
        // Each answer comes after its probe left, and about 1s apart.
        for (s, a) in sent.iter().zip(&answered) {
            assert!(a >= s, "{events:?}");
        }
        assert!(
            r.last_heard.abs_diff(Duration::from_secs(2)) < Duration::from_millis(200),
            "{r:?}"
        );
    }
}
