//! The TCP view ([`TcpSegment`]) and the parsed summary the tracker keeps ([`TcpRepr`]).

use std::net::IpAddr;

use super::packet::Skip;
use super::seq::SeqNum;
use super::{be16, be32};

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
pub(super) mod tcp_field {
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
    /// The IP TTL (IPv4) or hop limit (IPv6) as received: a RST a middlebox forged arrives
    /// with another one than the peer's own segments.
    pub ttl: u8,
}
