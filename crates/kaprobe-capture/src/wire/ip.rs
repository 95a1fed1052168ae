//! IP views: IPv4 and IPv6 (with the extension headers skipped on the way to TCP).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::be16;
use super::packet::Skip;

/// IP protocol number of TCP.
pub(super) const IP_PROTO_TCP: u8 = 6;

/// IPv4 header fields.
pub(super) mod ipv4_field {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: usize = 6;
    /// More-fragments flag and fragment offset: non-zero in any fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_HEADER_LEN: usize = 20;
    pub const VERSION: u8 = 4;
}

/// The version nibble of an IP header.
pub(super) fn ip_version(first: u8) -> u8 {
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

    /// Time to live as received.
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[ipv4_field::TTL]
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
pub(super) mod ipv6_field {
    pub const VERSION_BYTE: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
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

    /// Hop limit as received.
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[ipv6_field::HOP_LIMIT]
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
