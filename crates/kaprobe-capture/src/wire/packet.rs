//! Packet views over bytes, in the smoltcp style: each view's checked constructor verifies
//! the lengths its accessors rely on, so no accessor can panic on any input.
//!
//! Naming: a *view* is generic over its buffer and copies nothing ([`EthernetFrame`],
//! [`SllFrame`], [`Sll2Frame`], [`Ipv4Packet`], [`Ipv6Packet`], [`TcpSegment`]); the *repr*
//! ([`TcpRepr`]) is the owned summary of a segment's fields that the tracker keeps. Each
//! header's field offsets are named in its own `*_field` module, next to its view.
//!
//! [`parse_frame`] walks a captured frame from its link layer (Ethernet with 802.1Q/QinQ tags,
//! Linux cooked SLL and SLL2, raw IP, BSD loopback) through IPv4 or IPv6 (extension headers
//! skipped) to TCP, and returns the fields the flow tracker needs as a plain [`TcpRepr`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::seq::SeqNum;

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

/// Link-layer header types kaprobe reads (numbers from the pcap LINKTYPE registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1), with any number of 802.1Q / 802.1ad tags.
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): Linux cooked capture v1.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): Linux cooked capture v2.
    LinuxSll2,
    /// LINKTYPE_RAW (101, also 12 and 14 on some BSDs): starts with the IP header.
    RawIp,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
    /// LINKTYPE_NULL (0): BSD loopback, 4-byte address family in the writer's byte order.
    Null,
    /// LINKTYPE_LOOP (108): OpenBSD loopback, address family in network byte order.
    Loop,
}

impl LinkType {
    /// The link type for a pcap LINKTYPE number, if kaprobe reads it.
    #[must_use]
    pub fn from_linktype(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::RawIp,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }

    /// The pcap LINKTYPE number to write for this link type.
    #[must_use]
    pub fn linktype(self) -> u32 {
        match self {
            Self::Null => 0,
            Self::Ethernet => 1,
            Self::RawIp => 101,
            Self::Loop => 108,
            Self::LinuxSll => 113,
            Self::Ipv4 => 228,
            Self::Ipv6 => 229,
            Self::LinuxSll2 => 276,
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

/// An 802.1Q / 802.1ad tag: TCI, then the inner EtherType.
mod vlan_field {
    pub const INNER_ETHERTYPE: usize = 2;
    pub const TAG_LEN: usize = 4;
}

/// IP protocol number of TCP.
const IP_PROTO_TCP: u8 = 6;

/// Address families in a BSD loopback header (LINKTYPE_NULL / LINKTYPE_LOOP).
mod loopback_family {
    pub const HEADER_LEN: usize = 4;
    pub const INET: u32 = 2;
    /// AF_INET6 differs between systems: Linux, OpenBSD/NetBSD, FreeBSD, macOS.
    pub const INET6_LINUX: u32 = 10;
    pub const INET6_OPENBSD: u32 = 24;
    pub const INET6_FREEBSD: u32 = 28;
    pub const INET6_DARWIN: u32 = 30;
}

/// Ethernet II header fields.
mod eth_field {
    pub const ETHERTYPE: usize = 12;
    pub const HEADER_LEN: usize = 14;
}

/// An Ethernet II frame: 14 header bytes guaranteed.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wrap `buf`, checking it holds a full Ethernet header.
    ///
    /// # Errors
    /// [`Skip::Truncated`] when shorter than 14 bytes.
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        if buf.as_ref().len() < eth_field::HEADER_LEN {
            return Err(Skip::Truncated("Ethernet"));
        }
        Ok(Self { buf })
    }

    /// The EtherType field (or 802.3 length).
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), eth_field::ETHERTYPE)
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[eth_field::HEADER_LEN..]
    }
}

/// Linux cooked (SLL v1) header fields.
mod sll_field {
    pub const PKTTYPE: usize = 0;
    pub const PROTOCOL: usize = 14;
    pub const HEADER_LEN: usize = 16;
}

/// A Linux cooked (SLL v1) header: 16 bytes guaranteed.
#[derive(Debug, Clone, Copy)]
pub struct SllFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> SllFrame<T> {
    /// Wrap `buf`, checking it holds a full SLL header.
    ///
    /// # Errors
    /// [`Skip::Truncated`] when shorter than 16 bytes.
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        if buf.as_ref().len() < sll_field::HEADER_LEN {
            return Err(Skip::Truncated("Linux SLL"));
        }
        Ok(Self { buf })
    }

    /// Packet type (0 to us, 4 outgoing, ...).
    pub fn packet_type(&self) -> u16 {
        be16(self.buf.as_ref(), sll_field::PKTTYPE)
    }

    /// The protocol (an EtherType).
    pub fn protocol(&self) -> u16 {
        be16(self.buf.as_ref(), sll_field::PROTOCOL)
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[sll_field::HEADER_LEN..]
    }
}

/// Linux cooked (SLL v2) header fields.
mod sll2_field {
    pub const PROTOCOL: usize = 0;
    pub const IFINDEX: usize = 4;
    pub const PKTTYPE: usize = 10;
    pub const HEADER_LEN: usize = 20;
}

/// A Linux cooked (SLL v2) header: 20 bytes guaranteed.
#[derive(Debug, Clone, Copy)]
pub struct Sll2Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Sll2Frame<T> {
    /// Wrap `buf`, checking it holds a full SLL2 header.
    ///
    /// # Errors
    /// [`Skip::Truncated`] when shorter than 20 bytes.
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        if buf.as_ref().len() < sll2_field::HEADER_LEN {
            return Err(Skip::Truncated("Linux SLL2"));
        }
        Ok(Self { buf })
    }

    /// The protocol (an EtherType).
    pub fn protocol(&self) -> u16 {
        be16(self.buf.as_ref(), sll2_field::PROTOCOL)
    }

    /// The interface index the packet was seen on.
    pub fn ifindex(&self) -> u32 {
        be32(self.buf.as_ref(), sll2_field::IFINDEX)
    }

    /// Packet type (0 to us, 4 outgoing, ...).
    pub fn packet_type(&self) -> u8 {
        self.buf.as_ref()[sll2_field::PKTTYPE]
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[sll2_field::HEADER_LEN..]
    }
}

/// IPv4 header fields.
mod ipv4_field {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: usize = 6;
    /// More-fragments flag and fragment offset: non-zero in any fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
    pub const PROTOCOL: usize = 9;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_HEADER_LEN: usize = 20;
    pub const VERSION: u8 = 4;
}

/// The version nibble of an IP header.
fn ip_version(first: u8) -> u8 {
    first >> 4
}

/// An IPv4 header: `header_len()` bytes guaranteed present, total length sane.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wrap `buf`, checking version, header length and total length.
    ///
    /// # Errors
    /// [`Skip::Truncated`] or [`Skip::Malformed`].
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        let b = buf.as_ref();
        if b.len() < ipv4_field::MIN_HEADER_LEN {
            return Err(Skip::Truncated("IPv4"));
        }
        if ip_version(b[ipv4_field::VER_IHL]) != ipv4_field::VERSION {
            return Err(Skip::Malformed("IPv4 version"));
        }
        let ihl = ipv4_header_len(b[ipv4_field::VER_IHL]);
        if ihl < ipv4_field::MIN_HEADER_LEN {
            return Err(Skip::Malformed("IPv4 header length"));
        }
        if b.len() < ihl {
            return Err(Skip::Truncated("IPv4"));
        }
        if usize::from(be16(b, ipv4_field::TOTAL_LEN)) < ihl {
            return Err(Skip::Malformed("IPv4 total length"));
        }
        Ok(Self { buf })
    }

    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        ipv4_header_len(self.buf.as_ref()[ipv4_field::VER_IHL])
    }

    /// Total length field (header + payload, as sent).
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buf.as_ref(), ipv4_field::TOTAL_LEN))
    }

    /// True for any fragment (more-fragments flag or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        be16(self.buf.as_ref(), ipv4_field::FLAGS_FRAG) & ipv4_field::FRAGMENT_MASK != 0
    }

    /// The protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[ipv4_field::PROTOCOL]
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        self.addr(ipv4_field::SRC)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        self.addr(ipv4_field::DST)
    }

    /// The address at `at` (inside the checked minimum header).
    fn addr(&self, at: usize) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
    }

    /// Captured bytes after the header (may be shorter than sent, or carry link padding).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }
}

/// The IPv4 header length in bytes from the version/IHL byte.
fn ipv4_header_len(ver_ihl: u8) -> usize {
    usize::from(ver_ihl & 0x0f) * 4
}

/// IPv6 fixed header fields, and the extension header numbers skipped.
mod ipv6_field {
    pub const VERSION_BYTE: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const ADDR_LEN: usize = 16;
    pub const HEADER_LEN: usize = 40;
    pub const VERSION: u8 = 6;
    /// Most extension headers [`upper_layer`](super::Ipv6Packet::upper_layer) walks.
    pub const MAX_EXTENSIONS: usize = 16;

    /// Extension headers and their length fields.
    pub mod ext {
        pub const HOP_BY_HOP: u8 = 0;
        pub const ROUTING: u8 = 43;
        pub const FRAGMENT: u8 = 44;
        pub const AUTH: u8 = 51;
        pub const NO_NEXT: u8 = 59;
        pub const DEST_OPTS: u8 = 60;
        pub const MOBILITY: u8 = 135;
        pub const HIP: u8 = 139;
        pub const SHIM6: u8 = 140;
        /// Every extension header starts with the next header, then (mostly) its length.
        pub const NEXT: usize = 0;
        pub const LEN: usize = 1;
        /// Fragment header: 8 bytes, offset and M flag in the 16 bits at 2; the reserved
        /// bits (mask 0x0006) are ignored.
        pub const FRAGMENT_LEN: usize = 8;
        pub const FRAGMENT_OFFSET_M: usize = 2;
        pub const FRAGMENT_MASK: u16 = 0xfff9;
    }
}

/// An IPv6 fixed header: 40 bytes guaranteed.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wrap `buf`, checking version and the fixed header length.
    ///
    /// # Errors
    /// [`Skip::Truncated`] or [`Skip::Malformed`].
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        let b = buf.as_ref();
        if b.len() < ipv6_field::HEADER_LEN {
            return Err(Skip::Truncated("IPv6"));
        }
        if ip_version(b[ipv6_field::VERSION_BYTE]) != ipv6_field::VERSION {
            return Err(Skip::Malformed("IPv6 version"));
        }
        Ok(Self { buf })
    }

    /// Payload length field (extension headers + upper layer).
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buf.as_ref(), ipv6_field::PAYLOAD_LEN))
    }

    /// The first next-header value.
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[ipv6_field::NEXT_HEADER]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        self.addr(ipv6_field::SRC)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        self.addr(ipv6_field::DST)
    }

    /// The address at `at` (inside the checked fixed header).
    fn addr(&self, at: usize) -> Ipv6Addr {
        let mut a = [0u8; ipv6_field::ADDR_LEN];
        a.copy_from_slice(&self.buf.as_ref()[at..at + ipv6_field::ADDR_LEN]);
        Ipv6Addr::from(a)
    }

    /// Captured bytes after the fixed header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ipv6_field::HEADER_LEN..]
    }

    /// Skip extension headers: the upper-layer protocol, its captured bytes, and the
    /// extension bytes consumed (to subtract from the payload length).
    ///
    /// # Errors
    /// [`Skip::Fragment`] for fragments, [`Skip::NotTcp`] when no upper layer follows,
    /// [`Skip::Truncated`] when an extension header is cut.
    pub fn upper_layer(&self) -> Result<(u8, &[u8], usize), Skip> {
        let mut next = self.next_header();
        let mut rest = self.payload();
        let mut consumed = 0usize;
        for _ in 0..ipv6_field::MAX_EXTENSIONS {
            use ipv6_field::ext;
            let len = match next {
                // Hop-by-hop, routing, destination options, mobility, HIP, shim6:
                // (len + 1) * 8.
                ext::HOP_BY_HOP
                | ext::ROUTING
                | ext::DEST_OPTS
                | ext::MOBILITY
                | ext::HIP
                | ext::SHIM6 => {
                    if rest.len() < ext::LEN + 1 {
                        return Err(Skip::Truncated("IPv6 extension"));
                    }
                    (usize::from(rest[ext::LEN]) + 1) * 8
                }
                ext::FRAGMENT => {
                    if rest.len() < ext::FRAGMENT_LEN {
                        return Err(Skip::Truncated("IPv6 fragment"));
                    }
                    let off_m = be16(rest, ext::FRAGMENT_OFFSET_M);
                    if off_m & ext::FRAGMENT_MASK != 0 {
                        return Err(Skip::Fragment);
                    }
                    ext::FRAGMENT_LEN
                }
                // Authentication header: (len + 2) * 4.
                ext::AUTH => {
                    if rest.len() < ext::LEN + 1 {
                        return Err(Skip::Truncated("IPv6 AH"));
                    }
                    (usize::from(rest[ext::LEN]) + 2) * 4
                }
                ext::NO_NEXT => return Err(Skip::NotTcp),
                proto => return Ok((proto, rest, consumed)),
            };
            if rest.len() < len {
                return Err(Skip::Truncated("IPv6 extension"));
            }
            next = rest[ext::NEXT];
            rest = &rest[len..];
            consumed += len;
        }
        Err(Skip::Malformed("IPv6 extension chain too long"))
    }
}

/// TCP flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    /// True when every bit of `mask` is set.
    #[must_use]
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }

    /// True when any bit of `mask` is set.
    #[must_use]
    pub fn any(self, mask: u8) -> bool {
        self.0 & mask != 0
    }

    pub fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    pub fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    pub fn rst(self) -> bool {
        self.has(Self::RST)
    }
    pub fn ack(self) -> bool {
        self.has(Self::ACK)
    }
}

/// TCP header fields and the options read.
mod tcp_field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    /// Where options start: the end of the fixed header.
    pub const OPTIONS: usize = 20;
    pub const MIN_HEADER_LEN: usize = 20;
    /// Smallest data offset (5 words = 20 bytes).
    pub const MIN_DATA_OFF: u8 = 5;

    /// Option kinds, and the window-scale option's shape.
    pub mod opt {
        pub const END: u8 = 0;
        pub const NOP: u8 = 1;
        pub const WINDOW_SCALE: u8 = 3;
        pub const WINDOW_SCALE_LEN: usize = 3;
        /// Offset of the shift inside the window-scale option.
        pub const WINDOW_SCALE_SHIFT: usize = 2;
        /// Largest shift RFC 7323 allows.
        pub const MAX_WINDOW_SCALE: u8 = 14;
        /// Kind and length bytes: the shortest option with a length.
        pub const MIN_LEN: usize = 2;
    }
}

/// A TCP header: the 20 fixed bytes guaranteed; options readable when captured.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wrap `buf`, checking the fixed header is present and the data offset is sane.
    ///
    /// # Errors
    /// [`Skip::Truncated`] or [`Skip::Malformed`].
    pub fn new_checked(buf: T) -> Result<Self, Skip> {
        let b = buf.as_ref();
        if b.len() < tcp_field::MIN_HEADER_LEN {
            return Err(Skip::Truncated("TCP"));
        }
        if (b[tcp_field::DATA_OFF] >> 4) < tcp_field::MIN_DATA_OFF {
            return Err(Skip::Malformed("TCP data offset"));
        }
        Ok(Self { buf })
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), tcp_field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), tcp_field::DST_PORT)
    }
    pub fn seq(&self) -> SeqNum {
        SeqNum(be32(self.buf.as_ref(), tcp_field::SEQ))
    }
    pub fn ack(&self) -> SeqNum {
        SeqNum(be32(self.buf.as_ref(), tcp_field::ACK))
    }
    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[tcp_field::DATA_OFF] >> 4) * 4
    }
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buf.as_ref()[tcp_field::FLAGS])
    }
    /// The raw (unscaled) window field.
    pub fn window(&self) -> u16 {
        be16(self.buf.as_ref(), tcp_field::WINDOW)
    }

    /// The option bytes that were captured (may be fewer than the header announces).
    pub fn options(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let end = self.header_len().min(b.len());
        &b[tcp_field::OPTIONS..end]
    }

    /// The window-scale shift from the options, if present (capped at 14 as RFC 7323 says).
    pub fn window_scale(&self) -> Option<u8> {
        use tcp_field::opt;
        let mut o = self.options();
        while let Some((&kind, rest)) = o.split_first() {
            match kind {
                opt::END => return None,
                opt::NOP => o = rest,
                _ => {
                    let len = usize::from(*rest.first()?);
                    if len < opt::MIN_LEN || o.len() < len {
                        return None;
                    }
                    if kind == opt::WINDOW_SCALE && len == opt::WINDOW_SCALE_LEN {
                        return Some(o[opt::WINDOW_SCALE_SHIFT].min(opt::MAX_WINDOW_SCALE));
                    }
                    o = &o[len..];
                }
            }
        }
        None
    }
}

/// The TCP fields the flow tracker uses, taken from one frame: the parsed, owned *repr* of a
/// [`TcpSegment`] view and the IP header around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: TcpFlags,
    /// Raw window field (not scaled).
    pub window: u16,
    /// Payload bytes as sent (from the IP length, not the captured length).
    pub payload_len: u32,
    /// Window-scale option (SYN segments only carry it).
    pub wscale: Option<u8>,
}

/// Parse one captured frame of link type `link` down to TCP.
///
/// # Errors
/// A [`Skip`] saying why the frame is not an analysable TCP segment.
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

fn parse_ip(data: &[u8]) -> Result<TcpRepr, Skip> {
    match data.first().map(|b| ip_version(*b)) {
        Some(ipv4_field::VERSION) => parse_ipv4(data),
        Some(ipv6_field::VERSION) => parse_ipv6(data),
        Some(_) => Err(Skip::NotIp),
        None => Err(Skip::Truncated("IP")),
    }
}

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
        ip.payload(),
        seg_len,
    )
}

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
    parse_tcp(IpAddr::V6(ip.src()), IpAddr::V6(ip.dst()), rest, seg_len)
}

fn parse_tcp(src: IpAddr, dst: IpAddr, data: &[u8], seg_len: usize) -> Result<TcpRepr, Skip> {
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
