//! Build TCP frames from plain values: used to generate pcap fixtures, fuzz seeds and the
//! benchmark's rewritten copies. Checksums are computed, so tools that verify them agree.
//!
//! Built only with the `testing` feature (and for this crate's own tests).

use std::net::{IpAddr, SocketAddr};

use crate::wire::packet::TcpFlags;

/// One TCP segment to build.
#[derive(Debug, Clone)]
pub struct TcpSpec {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Window-scale option (put on SYN segments).
    pub wscale: Option<u8>,
    /// MSS option (put on SYN segments).
    pub mss: Option<u16>,
    pub payload: Vec<u8>,
}

impl TcpSpec {
    /// A segment with ACK set, window 512, no options and no payload.
    #[must_use]
    pub fn new(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32) -> Self {
        Self {
            src,
            dst,
            seq,
            ack,
            flags: TcpFlags::ACK,
            window: 512,
            wscale: None,
            mss: None,
            payload: Vec::new(),
        }
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn tcp_bytes(spec: &TcpSpec) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some(mss) = spec.mss {
        opts.extend_from_slice(&[2, 4]);
        opts.extend_from_slice(&mss.to_be_bytes());
    }
    if let Some(ws) = spec.wscale {
        opts.extend_from_slice(&[1, 3, 3, ws]);
    }
    while opts.len() % 4 != 0 {
        opts.push(0);
    }
    let hlen = 20 + opts.len();
    let mut t = Vec::with_capacity(hlen + spec.payload.len());
    t.extend_from_slice(&spec.src.port().to_be_bytes());
    t.extend_from_slice(&spec.dst.port().to_be_bytes());
    t.extend_from_slice(&spec.seq.to_be_bytes());
    t.extend_from_slice(&spec.ack.to_be_bytes());
    // hlen is at most 20 + 12 here: it fits the 4-bit word count.
    t.push(((hlen / 4) as u8) << 4);
    t.push(spec.flags);
    t.extend_from_slice(&spec.window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&opts);
    t.extend_from_slice(&spec.payload);
    t
}

/// The segment as a raw IP packet (IPv4 or IPv6 after the addresses), checksums filled in.
#[must_use]
pub fn ip_packet(spec: &TcpSpec) -> Vec<u8> {
    let mut tcp = tcp_bytes(spec);
    let tcp_len = tcp.len();
    match (spec.src.ip(), spec.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + tcp_len;
            let mut p = Vec::with_capacity(total);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = fold(sum16(&p, 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
            let mut acc = sum16(&s.octets(), 0);
            acc = sum16(&d.octets(), acc);
            acc += 6 + tcp_len as u32;
            let c = fold(sum16(&tcp, acc));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&tcp);
            p
        }
        (s, d) => {
            let s = match s {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let d = match d {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let mut p = Vec::with_capacity(40 + tcp_len);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            p.extend_from_slice(&[6, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let mut acc = sum16(&s.octets(), 0);
            acc = sum16(&d.octets(), acc);
            acc += 6 + tcp_len as u32;
            let c = fold(sum16(&tcp, acc));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&tcp);
            p
        }
    }
}

/// The segment in an Ethernet II frame (zero MAC addresses, like Linux `lo`).
#[must_use]
pub fn ethernet_frame(spec: &TcpSpec) -> Vec<u8> {
    let ip = ip_packet(spec);
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&[0; 12]);
    let et: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// Rewrite the IPv4 addresses of an Ethernet or raw-IP frame in place, fixing both
/// checksums incrementally. Returns false when the frame is not plain IPv4/TCP.
pub fn rewrite_ipv4(frame: &mut [u8], ip_offset: usize, src: [u8; 4], dst: [u8; 4]) -> bool {
    let Some(ip) = frame.get_mut(ip_offset..) else {
        return false;
    };
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl + 18 {
        return false;
    }
    let old: [u8; 8] = [
        ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19],
    ];
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let new: [u8; 8] = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    // RFC 1624: HC' = ~(~HC + ~m + m')
    let adjust = |hc: u16| -> u16 {
        let mut acc = u32::from(!hc);
        for w in old.chunks_exact(2) {
            acc += u32::from(!u16::from_be_bytes([w[0], w[1]]));
        }
        acc = sum16(&new, acc);
        fold(acc)
    };
    let ipc = adjust(u16::from_be_bytes([ip[10], ip[11]]));
    ip[10..12].copy_from_slice(&ipc.to_be_bytes());
    let at = ihl + 16;
    let tc = adjust(u16::from_be_bytes([ip[at], ip[at + 1]]));
    ip[at..at + 2].copy_from_slice(&tc.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{parse_frame, LinkType};

    #[test]
    fn built_frames_parse_back() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let mut s = TcpSpec::new(a, b, 100, 200);
        s.flags = TcpFlags::SYN;
        s.wscale = Some(7);
        s.mss = Some(1460);
        s.payload = vec![1, 2, 3];
        let p = parse_frame(LinkType::Ethernet, &ethernet_frame(&s)).unwrap();
        assert_eq!(p.src_port, 4000);
        assert_eq!(p.seq.0, 100);
        assert_eq!(p.payload_len, 3);
        assert_eq!(p.wscale, Some(7));
        let v6: SocketAddr = "[::1]:5".parse().unwrap();
        let s6 = TcpSpec::new(v6, v6, 1, 2);
        let p = parse_frame(LinkType::RawIp, &ip_packet(&s6)).unwrap();
        assert_eq!(p.src, v6.ip());
        assert_eq!(p.payload_len, 0);
    }

    #[test]
    fn rewriting_keeps_checksums_valid() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let mut s = TcpSpec::new(a, b, 100, 200);
        s.payload = b"hello".to_vec();
        let mut f = ethernet_frame(&s);
        assert!(rewrite_ipv4(&mut f, 14, [10, 1, 2, 3], [10, 4, 5, 6]));
        let s2 = TcpSpec {
            src: "10.1.2.3:4000".parse().unwrap(),
            dst: "10.4.5.6:80".parse().unwrap(),
            ..s
        };
        assert_eq!(f, ethernet_frame(&s2));
    }
}

/// A small deterministic generator (xorshift64*) for randomised tests: seeded per run, so
/// a failure names the seed that reproduces it.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `v` (which must not be empty).
    pub fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}
