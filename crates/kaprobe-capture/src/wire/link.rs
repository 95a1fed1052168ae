//! Link-layer views: Ethernet II (802.1Q/QinQ tags are walked by the parser), Linux cooked
//! capture v1 and v2, the BSD loopback header's address families, and the pcap link types.

use super::packet::Skip;
use super::{be16, be32};

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

pub(super) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(super) const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(super) const ETHERTYPE_VLAN: u16 = 0x8100;
pub(super) const ETHERTYPE_QINQ: u16 = 0x88a8;
pub(super) const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

/// An 802.1Q / 802.1ad tag: TCI, then the inner EtherType.
pub(super) mod vlan_field {
    pub const INNER_ETHERTYPE: usize = 2;
    pub const TAG_LEN: usize = 4;
}

/// Address families in a BSD loopback header (LINKTYPE_NULL / LINKTYPE_LOOP).
pub(super) mod loopback_family {
    pub const HEADER_LEN: usize = 4;
    pub const INET: u32 = 2;
    /// AF_INET6 differs between systems: Linux, OpenBSD/NetBSD, FreeBSD, macOS.
    pub const INET6_LINUX: u32 = 10;
    pub const INET6_OPENBSD: u32 = 24;
    pub const INET6_FREEBSD: u32 = 28;
    pub const INET6_DARWIN: u32 = 30;
}

/// Ethernet II header fields.
pub(super) mod eth_field {
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
pub(super) mod sll_field {
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
pub(super) mod sll2_field {
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
