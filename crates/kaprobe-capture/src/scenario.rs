//! Synthetic TCP conversations with per-frame ground truth, for fixtures, tests, fuzz seeds
//! and benchmarks. Each frame says which kind kaprobe must give it and, where Wireshark is
//! known to judge it differently, names that documented case.
//!
//! Built only with the `testing` feature (and for this crate's own tests).

use std::net::SocketAddr;
use std::time::Duration;

use crate::craft::{ip_packet, TcpSpec};
use crate::flow::track::Kind;
use crate::wire::packet::{LinkType, TcpFlags};

/// A documented case where Wireshark's keep-alive analysis is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WiresharkWrong {
    /// The capture starts while the connection is idle: Wireshark has no earlier segment to
    /// compare with and misses probes (and their ACKs) that the peer's ACK number identifies.
    MidIdleStart,
    /// The first keep-alive ACK in a direction is missed because Wireshark compares its
    /// scaled window with the SYN's unscaled one.
    WindowScaleFirstAck,
    /// A Linux zero-window probe (pure ACK at snd_una - 1 while the peer's window is 0)
    /// is called a keep-alive by Wireshark.
    LinuxZeroWindowProbe,
    /// A 1-byte retransmission of the last unacknowledged byte is called a keep-alive.
    OneByteRetransmission,
    /// Both ends probe at the same tick and the probes cross in flight: Wireshark misses the
    /// ACK that answers the probe sent first (the sender of that ACK sent its own probe in
    /// between, so the ACK does not follow a keep-alive in its direction).
    CrossingProbes,
}

impl WiresharkWrong {
    /// The snake_case name of the case.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MidIdleStart => "mid_idle_start",
            Self::WindowScaleFirstAck => "window_scale_first_ack",
            Self::LinuxZeroWindowProbe => "linux_zero_window_probe",
            Self::OneByteRetransmission => "one_byte_retransmission",
            Self::CrossingProbes => "crossing_probes",
        }
    }
}

/// One frame with its expected classification.
#[derive(Debug, Clone)]
pub struct Labeled {
    pub ts: Duration,
    /// The raw IP packet.
    pub ip: Vec<u8>,
    /// What kaprobe must classify it as.
    pub expect: Option<Kind>,
    /// Where Wireshark's keep_alive / keep_alive_ack flag is expected to differ.
    pub wireshark_wrong: Option<WiresharkWrong>,
}

/// A conversation between a client (side 0) and a server (side 1).
#[derive(Debug, Clone)]
pub struct Conv {
    eps: [SocketAddr; 2],
    /// Next sequence number each side will send (snd_nxt).
    pub next: [u32; 2],
    /// Each side's advertised (raw) window.
    pub win: [u16; 2],
    t: Duration,
    pub frames: Vec<Labeled>,
}

impl Conv {
    /// A conversation starting at `t0` with initial sequence numbers `isn`.
    #[must_use]
    pub fn new(client: SocketAddr, server: SocketAddr, isn: [u32; 2], t0: Duration) -> Self {
        Self {
            eps: [client, server],
            next: isn,
            win: [502, 509],
            t: t0,
            frames: Vec::new(),
        }
    }

    /// Let `secs` pass.
    pub fn wait(&mut self, secs: f64) -> &mut Self {
        self.t += Duration::from_secs_f64(secs);
        self
    }

    /// Add a raw segment from side `from`.
    #[allow(clippy::too_many_arguments)]
    pub fn seg(
        &mut self,
        from: usize,
        seq: u32,
        ack: u32,
        flags: u8,
        len: u32,
        expect: Option<Kind>,
        ws: Option<WiresharkWrong>,
    ) -> &mut Self {
        let from = from.min(1);
        let mut s = TcpSpec::new(self.eps[from], self.eps[1 - from], seq, ack);
        s.flags = flags;
        s.window = self.win[from];
        s.payload = vec![b'x'; len as usize];
        if flags & TcpFlags::SYN != 0 {
            s.mss = Some(65_495);
        }
        self.frames.push(Labeled {
            ts: self.t,
            ip: ip_packet(&s),
            expect,
            wireshark_wrong: ws,
        });
        self.t += Duration::from_micros(40);
        self
    }

    /// SYN, SYN-ACK, ACK; with `wscale` both sides offer that shift and the SYNs carry the
    /// unscaled window 65495 / 65483 like Linux.
    pub fn handshake(&mut self, wscale: Option<u8>) -> &mut Self {
        let [c, s] = self.next;
        let mk = |from: usize, seq: u32, ack: u32, flags: u8, window: u16, eps: [SocketAddr; 2]| {
            let mut sp = TcpSpec::new(eps[from], eps[1 - from], seq, ack);
            sp.flags = flags;
            sp.window = window;
            sp.wscale = wscale;
            sp.mss = Some(65_495);
            ip_packet(&sp)
        };
        let t = self.t;
        self.frames.push(Labeled {
            ts: t,
            ip: mk(0, c, 0, TcpFlags::SYN, 65_495, self.eps),
            expect: None,
            wireshark_wrong: None,
        });
        self.frames.push(Labeled {
            ts: t + Duration::from_micros(20),
            ip: mk(
                1,
                s,
                c.wrapping_add(1),
                TcpFlags::SYN | TcpFlags::ACK,
                65_483,
                self.eps,
            ),
            expect: None,
            wireshark_wrong: None,
        });
        self.t = t + Duration::from_micros(40);
        self.next = [c.wrapping_add(1), s.wrapping_add(1)];
        let [c1, s1] = self.next;
        self.seg(0, c1, s1, TcpFlags::ACK, 0, None, None)
    }

    /// `n` bytes of data from `from` (PSH|ACK).
    pub fn data(&mut self, from: usize, n: u32) -> &mut Self {
        let (seq, ack) = (self.next[from], self.next[1 - from]);
        self.next[from] = seq.wrapping_add(n);
        self.seg(from, seq, ack, TcpFlags::ACK | TcpFlags::PSH, n, None, None)
    }

    /// A pure ACK from `from` acknowledging everything the peer sent.
    pub fn ack(&mut self, from: usize) -> &mut Self {
        let (seq, ack) = (self.next[from], self.next[1 - from]);
        self.seg(from, seq, ack, TcpFlags::ACK, 0, None, None)
    }

    /// A keep-alive from `from` at snd_una - 1 (0 bytes, or 1 byte Windows-style).
    pub fn keepalive(
        &mut self,
        from: usize,
        one_byte: bool,
        ws: Option<WiresharkWrong>,
    ) -> &mut Self {
        let (seq, ack) = (self.next[from].wrapping_sub(1), self.next[1 - from]);
        self.seg(
            from,
            seq,
            ack,
            TcpFlags::ACK,
            u32::from(one_byte),
            Some(Kind::Keepalive),
            ws,
        )
    }

    /// The peer `from` answering a keep-alive.
    pub fn keepalive_ack(&mut self, from: usize, ws: Option<WiresharkWrong>) -> &mut Self {
        let (seq, ack) = (self.next[from], self.next[1 - from]);
        self.seg(
            from,
            seq,
            ack,
            TcpFlags::ACK,
            0,
            Some(Kind::KeepaliveAck),
            ws,
        )
    }

    /// RST|ACK from `from` at its snd_nxt.
    pub fn rst(&mut self, from: usize) -> &mut Self {
        let (seq, ack) = (self.next[from], self.next[1 - from]);
        self.seg(from, seq, ack, TcpFlags::RST | TcpFlags::ACK, 0, None, None)
    }

    /// FIN|ACK from `from`.
    pub fn fin(&mut self, from: usize) -> &mut Self {
        let (seq, ack) = (self.next[from], self.next[1 - from]);
        self.next[from] = seq.wrapping_add(1);
        self.seg(from, seq, ack, TcpFlags::FIN | TcpFlags::ACK, 0, None, None)
    }
}

/// A named fixture: frames of one or more conversations, in time order.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub frames: Vec<Labeled>,
}

fn ep(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

const T0: Duration = Duration::from_secs(1_700_000_000);

/// Every built-in scenario, covering the classification rules and Wireshark's known faults.
#[must_use]
pub fn all() -> Vec<Scenario> {
    use WiresharkWrong as W;
    let mut out = Vec::new();
    let (c, s) = (ep("127.0.0.1:40001"), ep("127.0.0.1:8080"));

    // Kernel keep-alives answered, idle 10s, then FIN.
    let mut k = Conv::new(c, s, [1_000, 5_000_000], T0);
    k.handshake(Some(7))
        .data(0, 100)
        .data(1, 200)
        .ack(0)
        .wait(10.0);
    for _ in 0..3 {
        k.keepalive(0, false, None)
            .wait(0.0001)
            .keepalive_ack(1, None)
            .wait(10.0);
    }
    k.fin(0).fin(1).ack(0);
    out.push(Scenario {
        name: "linux_keepalive_answered",
        frames: k.frames,
    });

    // Both ends run keep-alive with the same timers and probe at the same tick: each probe
    // carries ack = the other's probe seq + 1 without answering it; the ACKs follow.
    let mut k = Conv::new(
        ep("127.0.0.1:40009"),
        ep("127.0.0.1:8443"),
        [40_000, 90_000],
        T0,
    );
    k.handshake(None).data(0, 10).data(1, 10).ack(0).wait(1.0);
    for _ in 0..3 {
        k.keepalive(0, false, None)
            .keepalive(1, false, None)
            .wait(0.05)
            .keepalive_ack(0, None)
            .keepalive_ack(1, Some(W::CrossingProbes))
            .wait(1.0);
    }
    out.push(Scenario {
        name: "crossing_keepalives",
        frames: k.frames,
    });

    // The server never sends after its SYN-ACK: its first keep-alive ACK carries a scaled
    // window that Wireshark compares with the SYN-ACK's unscaled one.
    let mut k = Conv::new(c, s, [7_000, 9_000], T0);
    k.handshake(Some(7)).wait(1.0);
    k.keepalive(0, false, None)
        .keepalive_ack(1, Some(W::WindowScaleFirstAck))
        .wait(1.0)
        .keepalive(0, false, None)
        .keepalive_ack(1, None);
    out.push(Scenario {
        name: "first_keepalive_ack_after_syn_window",
        frames: k.frames,
    });

    // Capture starts mid-idle: the first segments seen are probes.
    let mut k = Conv::new(ep("[::1]:40002"), ep("[::1]:443"), [u32::MAX - 2, 77], T0);
    k.next = [3_000_000_000, 1_000];
    k.keepalive(0, false, Some(W::MidIdleStart))
        .keepalive_ack(1, Some(W::MidIdleStart))
        .wait(75.0)
        .keepalive(0, false, Some(W::MidIdleStart))
        .keepalive_ack(1, Some(W::MidIdleStart))
        .wait(75.0)
        .keepalive(0, false, Some(W::MidIdleStart))
        .keepalive_ack(1, Some(W::MidIdleStart));
    out.push(Scenario {
        name: "mid_idle_start",
        frames: k.frames,
    });

    // Dead peer: three unanswered probes 1s apart, then the prober's RST.
    let mut k = Conv::new(c, ep("127.0.0.1:9000"), [u32::MAX - 50, 1], T0);
    k.handshake(None).data(0, 100).ack(1).wait(2.0);
    for _ in 0..3 {
        k.keepalive(0, false, None).wait(1.0);
    }
    k.rst(0);
    out.push(Scenario {
        name: "dead_peer",
        frames: k.frames,
    });

    // Linux zero-window probes: the server's window is 0, the client probes at snd_una - 1.
    let mut k = Conv::new(c, ep("127.0.0.1:9001"), [10, 20], T0);
    k.handshake(Some(2)).data(0, 1000);
    k.win[1] = 0;
    k.ack(1).wait(0.2);
    let (seq, ack) = (k.next[0].wrapping_sub(1), k.next[1]);
    k.seg(
        0,
        seq,
        ack,
        TcpFlags::ACK,
        0,
        Some(Kind::ZeroWindowProbe),
        Some(W::LinuxZeroWindowProbe),
    );
    k.ack(1).wait(0.4);
    k.seg(
        0,
        seq,
        ack,
        TcpFlags::ACK,
        0,
        Some(Kind::ZeroWindowProbe),
        Some(W::LinuxZeroWindowProbe),
    );
    k.ack(1).wait(0.1);
    k.win[1] = 500;
    k.ack(1).data(0, 500).ack(1);
    out.push(Scenario {
        name: "linux_zero_window_probe",
        frames: k.frames,
    });

    // 1-byte zero-window probes at snd_nxt (other stacks), answered without accepting.
    let mut k = Conv::new(c, ep("127.0.0.1:9002"), [100, 200], T0);
    k.handshake(None).data(0, 10);
    k.win[1] = 0;
    k.ack(1).wait(0.5);
    for _ in 0..2 {
        let (seq, ack) = (k.next[0], k.next[1]);
        k.seg(
            0,
            seq,
            ack,
            TcpFlags::ACK,
            1,
            Some(Kind::ZeroWindowProbe),
            None,
        );
        k.seg(1, k.next[1], seq, TcpFlags::ACK, 0, None, None);
        k.wait(1.0);
    }
    k.win[1] = 300;
    k.ack(1).data(0, 5).ack(1);
    out.push(Scenario {
        name: "zero_window_probe_at_snd_nxt",
        frames: k.frames,
    });

    // Windows-style 1-byte keep-alives.
    let mut k = Conv::new(ep("127.0.0.1:50000"), ep("127.0.0.1:445"), [5, 6], T0);
    k.handshake(Some(8))
        .data(0, 50)
        .data(1, 60)
        .ack(0)
        .wait(7200.0);
    for _ in 0..2 {
        k.keepalive(0, true, None)
            .keepalive_ack(1, None)
            .wait(7200.0);
    }
    out.push(Scenario {
        name: "windows_one_byte_keepalive",
        frames: k.frames,
    });

    // Look-alikes that are never probes.
    let mut k = Conv::new(c, ep("127.0.0.1:9003"), [1_000, 2_000], T0);
    k.handshake(Some(7)).data(0, 1).wait(0.3);
    // Retransmission of the last (1-byte) unacknowledged segment.
    let (seq, ack) = (k.next[0].wrapping_sub(1), k.next[1]);
    k.seg(
        0,
        seq,
        ack,
        TcpFlags::ACK | TcpFlags::PSH,
        1,
        None,
        Some(W::OneByteRetransmission),
    );
    k.ack(1).data(1, 100).data(1, 100);
    // Duplicate ACKs and a window update.
    k.ack(0).ack(0).ack(0);
    k.win[0] = 1000;
    k.ack(0);
    // Overlapping retransmission.
    let (seq, ack) = (k.next[1].wrapping_sub(150), k.next[0]);
    k.seg(1, seq, ack, TcpFlags::ACK, 150, None, None);
    k.ack(0).wait(0.5);
    // A retransmitted FIN and an RST at seq - 1.
    let fin_seq = k.next[0];
    k.fin(0).ack(1).wait(0.2);
    k.seg(
        0,
        fin_seq,
        k.next[1],
        TcpFlags::FIN | TcpFlags::ACK,
        0,
        None,
        None,
    );
    k.seg(
        1,
        k.next[1].wrapping_sub(1),
        k.next[0],
        TcpFlags::RST,
        0,
        None,
        None,
    );
    out.push(Scenario {
        name: "lookalikes_never_probes",
        frames: k.frames,
    });

    // Server-side probes (nginx/haproxy so_keepalive), IPv6.
    let mut k = Conv::new(ep("[::1]:41000"), ep("[::1]:8443"), [42, 4242], T0);
    k.handshake(Some(7))
        .data(0, 300)
        .data(1, 3000)
        .ack(0)
        .wait(30.0);
    k.keepalive(1, false, None)
        .keepalive_ack(0, None)
        .wait(30.0);
    k.keepalive(1, false, None).keepalive_ack(0, None);
    out.push(Scenario {
        name: "server_side_keepalive_ipv6",
        frames: k.frames,
    });
    out
}

/// Wrap a raw IP packet in the link-layer header of `link` (VLAN-tagged twice for
/// Ethernet when `qinq`).
#[must_use]
pub fn frame_for(link: LinkType, ip: &[u8], qinq: bool) -> Vec<u8> {
    let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
    let et: u16 = if v6 { 0x86dd } else { 0x0800 };
    let mut f = Vec::with_capacity(ip.len() + 24);
    match link {
        LinkType::Ethernet => {
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
            if qinq {
                f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a]);
            }
            f.extend_from_slice(&et.to_be_bytes());
        }
        LinkType::LinuxSll => {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            f.extend_from_slice(&et.to_be_bytes());
        }
        LinkType::LinuxSll2 => {
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
        LinkType::Null => {
            let fam: u32 = if v6 { 30 } else { 2 };
            f.extend_from_slice(&fam.to_le_bytes());
        }
        LinkType::Loop => {
            let fam: u32 = if v6 { 24 } else { 2 };
            f.extend_from_slice(&fam.to_be_bytes());
        }
        LinkType::RawIp | LinkType::Ipv4 | LinkType::Ipv6 => {}
    }
    f.extend_from_slice(ip);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::track::{Event, Tracker, TrackerConfig};
    use crate::wire::packet::parse_frame;

    /// Classify a scenario's frames (wrapped in `link`) and return (frame, kind) pairs.
    fn classify(sc: &Scenario, link: LinkType, qinq: bool) -> Vec<(u64, Kind)> {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (i, f) in sc.frames.iter().enumerate() {
            let p = parse_frame(link, &frame_for(link, &f.ip, qinq)).unwrap();
            t.process(i as u64 + 1, f.ts, &p, &mut out);
        }
        t.finish(&mut out);
        let mut v: Vec<(u64, Kind)> = out
            .iter()
            .filter_map(|e| match e {
                Event::Packet(p) => Some((p.frame, p.kind)),
                Event::Flow(_) | Event::IdleLimit(_) => None,
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    fn truth(sc: &Scenario) -> Vec<(u64, Kind)> {
        sc.frames
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.expect.map(|k| (i as u64 + 1, k)))
            .collect()
    }

    #[test]
    fn every_scenario_is_classified_as_labelled() {
        for sc in all() {
            assert_eq!(
                classify(&sc, LinkType::RawIp, false),
                truth(&sc),
                "{}",
                sc.name
            );
        }
    }

    #[test]
    fn every_link_type_gives_the_same_answer() {
        for sc in all() {
            for link in [
                LinkType::Ethernet,
                LinkType::LinuxSll,
                LinkType::LinuxSll2,
                LinkType::Null,
                LinkType::Loop,
            ] {
                assert_eq!(
                    classify(&sc, link, false),
                    truth(&sc),
                    "{} {link:?}",
                    sc.name
                );
            }
            assert_eq!(
                classify(&sc, LinkType::Ethernet, true),
                truth(&sc),
                "{} qinq",
                sc.name
            );
        }
    }
}
