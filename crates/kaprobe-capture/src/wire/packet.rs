//! From a captured frame to a [`TcpRepr`]: [`parse_frame`] walks the frame from its link
//! layer (Ethernet with 802.1Q/QinQ tags, Linux cooked SLL and SLL2, raw IP, BSD loopback)
//! through IPv4 or IPv6 (extension headers skipped) to TCP, using the views of
//! [`link`](super::link), [`ip`](super::ip) and [`tcp`](super::tcp), and returns the fields
//! the flow tracker needs. Frames it cannot use come back as a [`Skip`], never a panic.
//!
//! The views and the repr are re-exported here, where they have always been reachable.

use std::net::IpAddr;

pub use super::ip::{Ipv4Packet, Ipv6Packet};
pub use super::link::{EthernetFrame, LinkType, Sll2Frame, SllFrame};
pub use super::tcp::{TcpFlags, TcpRepr, TcpSegment};

use super::be16;
use super::ip::{ip_version, ipv4_field, ipv6_field, IP_PROTO_TCP};
use super::link::{
    loopback_family, vlan_field, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ,
    ETHERTYPE_QINQ_OLD, ETHERTYPE_VLAN,
};

/// Why a frame was not turned into a [`TcpRepr`]. Counted by readers, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Skip {
    /// The frame is shorter than the header being read.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// A header field holds an impossible value.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    #[error("not IP")]
    NotIp,
    /// IP, but not TCP (UDP, ICMP, ...).
    #[error("not TCP")]
    NotTcp,
    /// An IP fragment: only unfragmented TCP segments are analysed.
    #[error("IP fragment")]
    Fragment,
}

/// Parse one captured frame of link type `link` down to TCP.
///
/// # Errors
/// A [`Skip`] saying why the frame is not an analysable TCP segment.
#[inline]
pub fn parse_frame(link: LinkType, data: &[u8]) -> Result<TcpRepr, Skip> {
    match link {
        LinkType::Ethernet => {
            let eth = EthernetFrame::new_checked(data)?;
            parse_ethertype(eth.ethertype(), eth.payload())
        }
        LinkType::LinuxSll => {
            let sll = SllFrame::new_checked(data)?;
            parse_ethertype(sll.protocol(), sll.payload())
        }
        LinkType::LinuxSll2 => {
            let sll = Sll2Frame::new_checked(data)?;
            parse_ethertype(sll.protocol(), sll.payload())
        }
        LinkType::RawIp => parse_ip(data),
        LinkType::Ipv4 => parse_ipv4(data),
        LinkType::Ipv6 => parse_ipv6(data),
        LinkType::Null | LinkType::Loop => {
            if data.len() < loopback_family::HEADER_LEN {
                return Err(Skip::Truncated("loopback"));
            }
            let raw = [data[0], data[1], data[2], data[3]];
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(raw)
            } else {
                // Written in the capturing host's byte order: the family is small either way.
                let le = u32::from_le_bytes(raw);
                if le > 0xffff {
                    u32::from_be_bytes(raw)
                } else {
                    le
                }
            };
            let rest = &data[loopback_family::HEADER_LEN..];
            match family {
                loopback_family::INET => parse_ipv4(rest),
                loopback_family::INET6_LINUX
                | loopback_family::INET6_OPENBSD
                | loopback_family::INET6_FREEBSD
                | loopback_family::INET6_DARWIN => parse_ipv6(rest),
                _ => Err(Skip::NotIp),
            }
        }
    }
}

/// Where the IP header starts in a frame of link type `link` (after any VLAN tags), or None
/// when the frame is not IP or is cut before its IP header.
#[must_use]
pub fn ip_start(link: LinkType, data: &[u8]) -> Option<usize> {
    let (mut ethertype, mut at) = match link {
        LinkType::Ethernet => {
            let eth = EthernetFrame::new_checked(data).ok()?;
            (eth.ethertype(), data.len() - eth.payload().len())
        }
        LinkType::LinuxSll => {
            let sll = SllFrame::new_checked(data).ok()?;
            (sll.protocol(), data.len() - sll.payload().len())
        }
        LinkType::LinuxSll2 => {
            let sll = Sll2Frame::new_checked(data).ok()?;
            (sll.protocol(), data.len() - sll.payload().len())
        }
        LinkType::RawIp | LinkType::Ipv4 | LinkType::Ipv6 => return Some(0),
        LinkType::Null | LinkType::Loop => {
            return (data.len() > loopback_family::HEADER_LEN)
                .then_some(loopback_family::HEADER_LEN)
        }
    };
    for _ in 0..8 {
        match ethertype {
            ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => return (at < data.len()).then_some(at),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD => {
                let rest = data.get(at..)?;
                if rest.len() < vlan_field::TAG_LEN {
                    return None;
                }
                ethertype = be16(rest, vlan_field::INNER_ETHERTYPE);
                at += vlan_field::TAG_LEN;
            }
            _ => return None,
        }
    }
    None
}

#[inline]
fn parse_ethertype(mut ethertype: u16, mut rest: &[u8]) -> Result<TcpRepr, Skip> {
    for _ in 0..8 {
        match ethertype {
            ETHERTYPE_IPV4 => return parse_ipv4(rest),
            ETHERTYPE_IPV6 => return parse_ipv6(rest),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD => {
                if rest.len() < vlan_field::TAG_LEN {
                    return Err(Skip::Truncated("802.1Q"));
                }
                ethertype = be16(rest, vlan_field::INNER_ETHERTYPE);
                rest = &rest[vlan_field::TAG_LEN..];
            }
            _ => return Err(Skip::NotIp),
        }
    }
    Err(Skip::Malformed("too many VLAN tags"))
}

#[inline]
fn parse_ip(data: &[u8]) -> Result<TcpRepr, Skip> {
    match data.first().map(|b| ip_version(*b)) {
        Some(ipv4_field::VERSION) => parse_ipv4(data),
        Some(ipv6_field::VERSION) => parse_ipv6(data),
        Some(_) => Err(Skip::NotIp),
        None => Err(Skip::Truncated("IP")),
    }
}

#[inline]
fn parse_ipv4(data: &[u8]) -> Result<TcpRepr, Skip> {
    let ip = Ipv4Packet::new_checked(data)?;
    if ip.protocol() != IP_PROTO_TCP {
        return Err(Skip::NotTcp);
    }
    if ip.is_fragment() {
        return Err(Skip::Fragment);
    }
    let seg_len = ip.total_len() - ip.header_len();
    parse_tcp(
        IpAddr::V4(ip.src()),
        IpAddr::V4(ip.dst()),
        ip.ttl(),
        ip.payload(),
        seg_len,
    )
}

#[inline]
fn parse_ipv6(data: &[u8]) -> Result<TcpRepr, Skip> {
    let ip = Ipv6Packet::new_checked(data)?;
    let (proto, rest, consumed) = ip.upper_layer()?;
    if proto != IP_PROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let seg_len = if ip.payload_len() == 0 {
        // Jumbogram or a zeroed field: fall back on what was captured.
        rest.len()
    } else {
        ip.payload_len()
            .checked_sub(consumed)
            .ok_or(Skip::Malformed("IPv6 payload length"))?
    };
    parse_tcp(
        IpAddr::V6(ip.src()),
        IpAddr::V6(ip.dst()),
        ip.hop_limit(),
        rest,
        seg_len,
    )
}

#[inline]
fn parse_tcp(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    data: &[u8],
    seg_len: usize,
) -> Result<TcpRepr, Skip> {
    let tcp = TcpSegment::new_checked(data)?;
    let payload = seg_len
        .checked_sub(tcp.header_len())
        .ok_or(Skip::Malformed("TCP header longer than segment"))?;
    let flags = tcp.flags();
    Ok(TcpRepr {
        src,
        dst,
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        seq: tcp.seq(),
        ack: tcp.ack(),
        flags,
        window: tcp.window(),
        payload_len: u32::try_from(payload).map_err(|_| Skip::Malformed("TCP length"))?,
        wscale: if flags.syn() {
            tcp.window_scale()
        } else {
            None
        },
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{ip_packet, TcpSpec};
    use crate::scenario::frame_for;

    fn spec() -> TcpSpec {
        let mut s = TcpSpec::new(
            "192.0.2.1:1234".parse().unwrap(),
            "192.0.2.2:80".parse().unwrap(),
            7,
            9,
        );
        s.payload = vec![0; 10];
        s
    }

    #[test]
    fn vlan_and_qinq_tags_are_skipped() {
        let ip = ip_packet(&spec());
        let p = parse_frame(
            LinkType::Ethernet,
            &frame_for(LinkType::Ethernet, &ip, true),
        )
        .unwrap();
        assert_eq!(p.dst_port, 80);
        assert_eq!(p.payload_len, 10);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut s = spec();
        s.payload.clear();
        let mut f = frame_for(LinkType::Ethernet, &ip_packet(&s), false);
        f.extend_from_slice(&[0; 6]); // 54-byte frame padded to 60
        assert_eq!(parse_frame(LinkType::Ethernet, &f).unwrap().payload_len, 0);
    }

    #[test]
    fn snaplen_cut_payload_still_counts_from_ip_length() {
        let f = frame_for(LinkType::Ethernet, &ip_packet(&spec()), false);
        let cut = &f[..14 + 20 + 20];
        assert_eq!(
            parse_frame(LinkType::Ethernet, cut).unwrap().payload_len,
            10
        );
        assert_eq!(
            parse_frame(LinkType::Ethernet, &f[..14 + 20 + 10]),
            Err(Skip::Truncated("TCP"))
        );
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_and_fragments_refused() {
        let mut s = spec();
        s.src = "[2001:db8::1]:1234".parse().unwrap();
        s.dst = "[2001:db8::2]:80".parse().unwrap();
        let ip = ip_packet(&s);
        // Insert a hop-by-hop (8 bytes) and a destination-options header (16 bytes).
        let mut v = ip[..40].to_vec();
        v[6] = 0;
        let tcp = &ip[40..];
        v.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(tcp);
        let plen = (v.len() - 40) as u16;
        v[4..6].copy_from_slice(&plen.to_be_bytes());
        let p = parse_frame(LinkType::RawIp, &v).unwrap();
        assert_eq!(p.payload_len, 10);
        assert_eq!(p.src_port, 1234);
        // A non-first fragment.
        let mut fr = ip[..40].to_vec();
        fr[6] = 44;
        fr.extend_from_slice(&[6, 0, 0, 8, 0, 0, 0, 1]);
        fr.extend_from_slice(tcp);
        assert_eq!(parse_frame(LinkType::RawIp, &fr), Err(Skip::Fragment));
    }

    #[test]
    fn ipv4_fragments_and_other_protocols_are_skipped() {
        let mut ip = ip_packet(&spec());
        ip[6] = 0x20; // more fragments
        assert_eq!(parse_frame(LinkType::RawIp, &ip), Err(Skip::Fragment));
        let mut udp = ip_packet(&spec());
        udp[9] = 17;
        assert_eq!(parse_frame(LinkType::RawIp, &udp), Err(Skip::NotTcp));
        let mut bad = ip_packet(&spec());
        bad[0] = 0x43;
        assert_eq!(
            parse_frame(LinkType::RawIp, &bad),
            Err(Skip::Malformed("IPv4 header length"))
        );
        let mut arp = frame_for(LinkType::Ethernet, &ip, false);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse_frame(LinkType::Ethernet, &arp), Err(Skip::NotIp));
    }

    #[test]
    fn tcp_header_longer_than_segment_is_malformed() {
        let mut ip = ip_packet(&spec());
        ip[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(
            parse_frame(LinkType::RawIp, &ip),
            Err(Skip::Malformed("TCP header longer than segment"))
        );
    }

    #[test]
    fn window_scale_option_is_read_from_syn() {
        let mut s = spec();
        s.flags = TcpFlags::SYN;
        s.wscale = Some(20);
        s.mss = Some(1460);
        let p = parse_frame(LinkType::RawIp, &ip_packet(&s)).unwrap();
        assert_eq!(p.wscale, Some(14));
    }

    /// A stable-toolchain stand-in for the fuzz target: random and mutated frames of every
    /// link type never panic the parser or the tracker.
    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let links = [
            LinkType::Ethernet,
            LinkType::LinuxSll,
            LinkType::LinuxSll2,
            LinkType::RawIp,
            LinkType::Ipv4,
            LinkType::Ipv6,
            LinkType::Null,
            LinkType::Loop,
        ];
        let seeds: Vec<Vec<u8>> = crate::scenario::all()
            .iter()
            .flat_map(|s| s.frames.iter().map(|f| f.ip.clone()))
            .collect();
        let mut tracker = crate::flow::track::Tracker::new(crate::flow::track::TrackerConfig {
            max_flows: 64,
            ..Default::default()
        });
        let mut out = Vec::new();
        for i in 0..200_000u64 {
            let link = links[(rnd() % links.len() as u64) as usize];
            let mut data = if i % 2 == 0 {
                let seed = &seeds[(rnd() % seeds.len() as u64) as usize];
                let mut f = frame_for(link, seed, rnd() % 2 == 0);
                for _ in 0..(rnd() % 4) {
                    if !f.is_empty() {
                        let at = (rnd() % f.len() as u64) as usize;
                        f[at] = rnd() as u8;
                    }
                }
                f
            } else {
                (0..rnd() % 120).map(|_| rnd() as u8).collect()
            };
            let cut = (rnd() % (data.len() as u64 + 1)) as usize;
            if rnd() % 4 == 0 {
                data.truncate(cut);
            }
            if let Ok(p) = parse_frame(link, &data) {
                tracker.process(i, std::time::Duration::from_millis(i), &p, &mut out);
                out.clear();
            }
        }
        tracker.finish(&mut out);
    }
}
